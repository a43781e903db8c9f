import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { LibcUnavailableError } from '../../src/fs/libc.js';
import { LOCK_FILE_NAME, acquireStateDirLock, describeHolder, parseHolder, type StateDirLock } from '../../src/fs/state-dir-lock.js';
import { createLogger, type Logger } from '../../src/observability/logger.js';
import { eventually, sleep } from '../support/driver-harness.js';
import { makeScratchDir, removeScratchDir } from '../support/scratch.js';

const FAST = { pollIntervalMs: 20, reminderIntervalMs: 150 };
const LOCK_MODULE = new URL('../../src/fs/state-dir-lock.js', import.meta.url).href;
const LOGGER_MODULE = new URL('../../src/observability/logger.js', import.meta.url).href;

let dir: string;
let stateDir: string;
let lines: Record<string, unknown>[];
let logger: Logger;
const cleanups: (() => Promise<void> | void)[] = [];

beforeEach(async () => {
  dir = await makeScratchDir('lock');
  stateDir = path.join(dir, 'state');
  lines = [];
  logger = createLogger({ level: 'debug', destination: { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) } });
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  await removeScratchDir(dir);
});

function track(lock: StateDirLock): StateDirLock {
  cleanups.push(() => lock.release());
  return lock;
}

function waitingLines(): Record<string, unknown>[] {
  return lines.filter((l) => typeof l['msg'] === 'string' && l['msg'].includes('holds the state directory lock'));
}

/** Resolves to true if the promise settles within `ms`. */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let settled = false;
  promise.then(
    () => (settled = true),
    () => (settled = true),
  );
  await sleep(ms);
  return settled;
}

/** A `node -e` child that takes the lock through this module, says "locked" and then sleeps. */
async function childHoldingLock(): Promise<ChildProcess> {
  const script = `
    const { acquireStateDirLock } = await import(${JSON.stringify(LOCK_MODULE)});
    const { createLogger } = await import(${JSON.stringify(LOGGER_MODULE)});
    const logger = createLogger({ level: 'warn', destination: { write: (line) => process.stderr.write(line) } });
    await acquireStateDirLock(process.argv[1], { logger });
    process.stdout.write('locked\\n');
    setInterval(() => {}, 60_000);
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script, stateDir], { stdio: ['ignore', 'pipe', 'pipe'] });
  cleanups.push(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let output = '';
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (chunk: Buffer) => {
      if (chunk.toString().includes('locked')) resolve();
    });
    child.once('exit', (code, signal) => reject(new Error(`the lock-holding child exited (${code ?? signal}) before taking the lock: ${output}`)));
  });
  return child;
}

async function killed(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  await exited;
}

describe('state directory lock', () => {
  it('creates the state directory and the lock file, and records pid, host name and start time in it', async () => {
    const lock = track(await acquireStateDirLock(stateDir, { logger, ...FAST }));
    assert.equal(lock.held, true);
    assert.equal(lock.path, path.join(stateDir, LOCK_FILE_NAME));
    const record = JSON.parse(await fs.readFile(lock.path, 'utf8')) as Record<string, unknown>;
    assert.equal(record['pid'], process.pid);
    assert.equal(record['hostname'], os.hostname());
    assert.ok(Math.abs(Date.parse(String(record['started_at'])) - Date.now()) < 10_000);
    assert.equal((await fs.stat(lock.path)).mode & 0o777, 0o600);
    assert.deepEqual(waitingLines(), [], 'no waiting line when the lock was free');
  });

  it('a second acquisition in the same process (another open file description) waits until the first releases', async () => {
    const first = track(await acquireStateDirLock(stateDir, { logger, ...FAST }));
    const second = acquireStateDirLock(stateDir, { logger, ...FAST });
    second.then(track, () => undefined);

    assert.equal(await settlesWithin(second, 400), false, 'flock conflicts between two descriptors of one process');
    const [waiting, ...reminders] = waitingLines();
    assert.ok(waiting, 'logged that it waits');
    assert.equal(waiting['level'], 'warn');
    assert.equal(waiting['holder_pid'], process.pid);
    assert.equal(waiting['holder_hostname'], os.hostname());
    assert.equal(waiting['lock_path'], first.path);
    assert.match(
      String(waiting['msg']),
      new RegExp(
        `^another spire-csi-driver instance holds the state directory lock ${first.path} \\(pid ${process.pid} on host .*, started .*\\); ` +
          'waiting for it to exit — two instances must never manage one state directory',
      ),
    );
    assert.ok(reminders.length >= 1, 'the line is repeated while it waits');
    assert.match(String(reminders[0]?.['msg']), /^still waiting after \d+ s: another spire-csi-driver instance holds/);

    await first.release();
    const acquired = await second;
    assert.equal(acquired.held, true);
    assert.ok(lines.some((l) => l['msg'] === 'the other instance released the state directory lock; starting'));
    const record = JSON.parse(await fs.readFile(acquired.path, 'utf8')) as Record<string, unknown>;
    assert.equal(record['pid'], process.pid, 'the new holder rewrote the record (truncated, one JSON line)');
  });

  it('release is idempotent and lets the next acquisition through at once', async () => {
    const first = await acquireStateDirLock(stateDir, { logger, ...FAST });
    await first.release();
    await first.release();
    track(await acquireStateDirLock(stateDir, { logger, ...FAST }));
    assert.deepEqual(waitingLines(), []);
  });

  it('an aborted wait rejects with the signal reason and leaves no lock behind', async () => {
    const first = track(await acquireStateDirLock(stateDir, { logger, ...FAST }));
    const controller = new AbortController();
    const waiting = acquireStateDirLock(stateDir, { logger, ...FAST, signal: controller.signal });
    await eventually('the waiting line', () => waitingLines().length > 0);
    const reason = new Error('test gave up');
    controller.abort(reason);
    await assert.rejects(waiting, (err) => err === reason);
    await first.release();
    track(await acquireStateDirLock(stateDir, { logger, ...FAST }));
  });

  it('a holder killed with SIGKILL leaves no stale lock: the waiter names its pid, then gets the lock', async () => {
    const child = await childHoldingLock();
    const waiting = acquireStateDirLock(stateDir, { logger, ...FAST });
    waiting.then(track, () => undefined);
    await eventually('the waiting line', () => waitingLines().length > 0);
    assert.equal(waitingLines()[0]?.['holder_pid'], child.pid, 'the waiting line names the holder process');
    assert.equal(await settlesWithin(waiting, 200), false);

    await killed(child, 'SIGKILL');
    const lock = await waiting;
    assert.equal(lock.held, true);
  });

  it('a lock held by flock(1) (not a driver: no record) is waited for too, with the holder unknown', async (t) => {
    try {
      execFileSync('sh', ['-c', 'command -v flock']);
    } catch {
      t.skip('flock(1) from util-linux is not installed');
      return;
    }
    await fs.mkdir(stateDir, { recursive: true });
    const lockPath = path.join(stateDir, LOCK_FILE_NAME);
    // The shell opens the file as fd 9, flock(1) locks that open file description and exits, and the shell
    // becomes sleep: the one process that holds the lock is the child, which SIGKILL then ends.
    const child = spawn('sh', ['-c', 'exec 9<>"$1" && flock --exclusive 9 && echo locked && exec sleep 600', 'sh', lockPath], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    cleanups.push(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));

    const waiting = acquireStateDirLock(stateDir, { logger, ...FAST });
    waiting.then(track, () => undefined);
    await eventually('the waiting line', () => waitingLines().length > 0);
    assert.equal(waitingLines()[0]?.['holder_pid'], undefined);
    assert.match(String(waitingLines()[0]?.['msg']), /holder unknown: the lock file is empty/);
    await killed(child, 'SIGKILL');
    assert.equal((await waiting).held, true);
  });

  it('in a read-only state directory: locks an existing lock file read-only, and goes on unprotected without one', async (t) => {
    if (process.getuid?.() !== 0) return t.skip('a read-only bind mount needs root');
    await (await acquireStateDirLock(stateDir, { logger, ...FAST })).release();
    const bare = path.join(dir, 'bare');
    await fs.mkdir(bare);
    for (const target of [stateDir, bare]) {
      // Root ignores file modes: a read-only bind mount of the directory onto itself.
      execFileSync('mount', ['--bind', target, target]);
      cleanups.push(() => void execFileSync('umount', [target]));
      execFileSync('mount', ['-o', 'remount,bind,ro', target]);
    }

    const first = track(await acquireStateDirLock(stateDir, { logger, ...FAST }));
    assert.equal(first.held, true, 'flock needs no write access');
    assert.ok(lines.some((l) => String(l['msg']).startsWith('the state directory is read-only: holding its lock without recording this process')));
    const second = acquireStateDirLock(stateDir, { logger, ...FAST });
    second.then(track, () => undefined);
    await eventually('the waiting line', () => waitingLines().length > 0);
    await first.release();
    assert.equal((await second).held, true);

    const unprotected = await acquireStateDirLock(bare, { logger, ...FAST });
    assert.equal(unprotected.held, false);
    assert.ok(
      lines.some((l) =>
        String(l['msg']).startsWith(
          `the state directory lock is unavailable (${path.join(bare, LOCK_FILE_NAME)} does not exist and the state directory is not writable)`,
        ),
      ),
    );
  });

  it('without koffi it warns that the lock is unavailable, says why, and goes on unprotected', async () => {
    const first = track(await acquireStateDirLock(stateDir, { logger, ...FAST }));
    const lock = await acquireStateDirLock(stateDir, {
      logger,
      ...FAST,
      loadLibc: () => Promise.reject(new LibcUnavailableError('cannot load koffi, the C FFI module, on test-platform: no binary')),
    });
    assert.equal(lock.held, false);
    await lock.release();
    const warning = lines.find((l) => typeof l['msg'] === 'string' && l['msg'].startsWith('the state directory lock is unavailable'));
    assert.ok(warning, 'warned');
    assert.equal(warning['level'], 'warn');
    assert.match(String(warning['msg']), /cannot load koffi, the C FFI module, on test-platform: no binary/);
    assert.match(String(warning['msg']), /make sure only one runs per node/);
    assert.equal(first.held, true);
  });

  it('describes holders for the log line', () => {
    assert.equal(
      describeHolder(parseHolder('{"pid":42,"hostname":"spire-csi-driver-x7k2p","started_at":"2026-01-01T00:00:00.000Z"}\n')),
      'pid 42 on host spire-csi-driver-x7k2p, started 2026-01-01T00:00:00.000Z',
    );
    assert.equal(describeHolder(parseHolder('{"pid":42}')), 'pid 42');
    assert.match(describeHolder(parseHolder('')), /holder unknown: the lock file is empty/);
    assert.match(describeHolder(parseHolder('12345\n')), /holder unknown, the lock file holds "12345", not a driver's record/);
  });
});
