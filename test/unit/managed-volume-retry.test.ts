/**
 * ManagedVolume retries a failed write on its own: with the newest material,
 * on one timer whose delays grow and stop at the cap, until it lands; and
 * never after close(). The agent is the development agent on a Unix socket (so
 * the material is real and passes every check); the writer and the timers are
 * fakes the test drives.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { status } from '@grpc/grpc-js';
import { DriverError } from '../../src/errors.js';
import type { FileSpec, WriteResult } from '../../src/fs/atomic-writer.js';
import { createLogger } from '../../src/observability/logger.js';
import { DriverMetrics } from '../../src/observability/metrics.js';
import { AgentConnection } from '../../src/spire/agent-connection.js';
import { BundleWatcher } from '../../src/spire/bundle-watcher.js';
import { ManagedVolume, type VolumeWriter } from '../../src/volumes/managed-volume.js';
import type { VolumeRecord } from '../../src/volumes/metadata-store.js';
import { errnoCodeOf, writeFailureReason, type Schedule, type WriteRetryOptions } from '../../src/volumes/write-retry.js';
import { DevAgent } from '../support/dev-agent/dev-agent.js';
import { LogCapture, eventually, sleep } from '../support/driver-harness.js';
import { makeScratchDir, removeScratchDir } from '../support/scratch.js';

/** An error shaped like AtomicWriter's: the fs error, with its errno code, as the cause. */
function writeError(code: string): Error {
  const cause = Object.assign(new Error(`${code}: simulated failure, write`), { code, syscall: 'write' });
  return new Error(`atomic writer for /volume: writing files into ..v failed: ${cause.message}`, { cause });
}

/** Fails the next `failures` writes (forever with Infinity), then succeeds. */
class FlakyWriter implements VolumeWriter {
  readonly attempts: FileSpec[][] = [];
  readonly written: FileSpec[][] = [];
  /** When set, the next write waits for it before failing or succeeding. */
  gate: Promise<void> | undefined;

  constructor(
    public failures: number,
    private readonly code = 'ENOSPC',
  ) {}

  async write(files: readonly FileSpec[]): Promise<WriteResult> {
    this.attempts.push([...files]);
    await this.gate;
    if (this.failures > 0) {
      this.failures -= 1;
      throw writeError(this.code);
    }
    this.written.push([...files]);
    return { changed: true, version: `..v${this.written.length}` };
  }
}

interface ManualTimer {
  callback: () => void;
  delayMs: number;
  cancelled: boolean;
  fired: boolean;
}

/** A schedule the test runs by hand, so every delay is seen and nothing depends on the clock. */
class ManualTimers {
  readonly all: ManualTimer[] = [];

  readonly schedule: Schedule = (callback, delayMs) => {
    const timer: ManualTimer = { callback, delayMs, cancelled: false, fired: false };
    this.all.push(timer);
    return () => {
      timer.cancelled = true;
    };
  };

  pending(): ManualTimer[] {
    return this.all.filter((t) => !t.cancelled && !t.fired);
  }

  /** Fires the one pending timer; there must be exactly one. */
  fire(): void {
    const pending = this.pending();
    assert.equal(pending.length, 1, `exactly one pending retry, found ${pending.length}`);
    const [timer] = pending;
    if (!timer) return;
    timer.fired = true;
    timer.callback();
  }
}

function serialOf(files: FileSpec[] | undefined): string {
  const cert = files?.find((f) => f.name === 'svid.pem');
  assert.ok(cert, 'a certificate file');
  return new X509Certificate(cert.data).serialNumber.toLowerCase();
}

async function failureCount(metrics: DriverMetrics, reason: string): Promise<number> {
  return (await metrics.volumeWriteFailures.get()).values.find((v) => v.labels['reason'] === reason)?.value ?? 0;
}

async function failingVolumes(metrics: DriverMetrics): Promise<number | undefined> {
  return (await metrics.volumesWriteFailing.get()).values[0]?.value;
}

let agent: DevAgent;
let connection: AgentConnection;
let bundles: BundleWatcher;
let scratch: string;
let podNumber = 0;

before(async () => {
  scratch = await makeScratchDir('retry');
  agent = await DevAgent.start({ socketPath: path.join(scratch, 'admin.sock') });
  const logger = createLogger({ level: 'silent' });
  connection = new AgentConnection({ socketPath: agent.socketPath, maxReceiveMessageBytes: 4 * 1024 * 1024, logger });
  bundles = new BundleWatcher({ connection, logger, metrics: new DriverMetrics() });
});

after(async () => {
  bundles.close();
  await connection.close();
  await agent.close();
  await removeScratchDir(scratch);
});

interface Fixture {
  volume: ManagedVolume;
  entryId: string;
  metrics: DriverMetrics;
  logs: LogCapture;
}

/** A started volume for a new pod with its own entry, writing through `writer`. */
async function startVolume(writer: VolumeWriter, writeRetry: WriteRetryOptions, metrics = new DriverMetrics()): Promise<Fixture> {
  podNumber += 1;
  const uid = `retry-pod-${podNumber}`;
  const entryId = await agent.addEntry({ spiffeId: `spiffe://example.org/retry-${podNumber}`, selectors: [`k8s:pod-uid:${uid}`] });
  const record: VolumeRecord = {
    version: 1,
    volumeId: `csi-${String(podNumber).padStart(64, '0')}`,
    targetPath: `/volumes/${uid}`,
    volumeName: 'svid',
    pod: { uid, name: uid, namespace: 'default', serviceAccount: 'app' },
    files: { cert: 'svid.pem', key: 'svid_key.pem', bundle: 'svid_bundle.pem' },
    fsGroup: null,
    spiffeId: null,
    hint: null,
    tmpfs: false,
    createdAt: new Date().toISOString(),
  };
  const logs = new LogCapture();
  const logger = createLogger({ level: 'debug', destination: logs });
  const deps = { connection, bundles, logger, metrics, createWriter: () => writer, writeRetry };
  const volume = new ManagedVolume(record, [{ type: 'k8s', value: `pod-uid:${uid}` }], deps, { filesPresent: false });
  volume.start();
  return { volume, entryId, metrics, logs };
}

describe('write retry', () => {
  it('retries the newest material without new agent messages, on growing, capped delays, until it lands', async () => {
    const writer = new FlakyWriter(7);
    const timers = new ManualTimers();
    // random 1: every delay is the top of its jitter range, the full step.
    const { volume, entryId, metrics, logs } = await startVolume(writer, { random: () => 1, schedule: timers.schedule });
    const published = volume.waitUntilWritten(60_000, new AbortController().signal);
    try {
      await eventually('the first attempt', () => writer.attempts.length === 1);
      const firstSerial = serialOf(writer.attempts[0]);
      assert.deepEqual(
        timers.pending().map((t) => t.delayMs),
        [1000],
      );
      assert.equal(await failureCount(metrics, 'ENOSPC'), 1);
      assert.equal(await failingVolumes(metrics), 1);
      // What kubelet's event would say if the publish timed out now.
      await assert.rejects(volume.waitUntilWritten(1, new AbortController().signal), (err: unknown) => {
        assert.ok(err instanceof DriverError);
        assert.equal(err.code, status.DEADLINE_EXCEEDED);
        assert.match(
          err.message,
          /writing the SVID files into \/volumes\/retry-pod-\d+ is failing \(1 failed attempt, last: .*ENOSPC.*\); the driver keeps retrying with backoff/,
        );
        return true;
      });

      // New material is tried at once; its failure replaces the pending retry instead of adding one.
      await agent.rotateSvids(entryId);
      await eventually('the attempt with the rotated SVID', () => writer.attempts.length === 2);
      const newestSerial = agent.currentSvid(entryId).serialHex;
      assert.notEqual(newestSerial, firstSerial);
      assert.equal(serialOf(writer.attempts[1]), newestSerial);
      assert.equal(timers.all[0]?.cancelled, true, 'the first retry was superseded');
      assert.deepEqual(
        timers.pending().map((t) => t.delayMs),
        [2000],
      );

      // From here on only the timers drive the attempts.
      for (let attempt = 3; attempt <= 8; attempt++) {
        timers.fire();
        await eventually(`attempt ${attempt}`, () => writer.attempts.length === attempt);
      }
      await published;
      assert.deepEqual(
        timers.all.map((t) => t.delayMs),
        [1000, 2000, 4000, 8000, 16000, 30000, 30000],
        'doubling from 1 s, capped at 30 s',
      );
      assert.equal(timers.pending().length, 0, 'no timer once the files are written');
      assert.equal(writer.written.length, 1);
      assert.equal(serialOf(writer.written[0]), newestSerial, 'the newest material landed');
      assert.ok(
        writer.attempts.slice(1).every((files) => serialOf(files) === newestSerial),
        'every retry used the newest material',
      );
      assert.equal(await failureCount(metrics, 'ENOSPC'), 7);
      assert.equal(await failingVolumes(metrics), 0);

      const entries = logs.entries().filter((e) => String(e['msg']).startsWith('writing the SVID files failed'));
      assert.deepEqual(
        entries.map((e) => [e['level'], e['attempt'], e['code'], e['retry_in_ms']]),
        [
          ['error', 1, 'ENOSPC', 1000],
          ['warn', 2, 'ENOSPC', 2000],
          ['warn', 3, 'ENOSPC', 4000],
          ['warn', 4, 'ENOSPC', 8000],
          ['warn', 5, 'ENOSPC', 16000],
          ['warn', 6, 'ENOSPC', 30000],
          ['warn', 7, 'ENOSPC', 30000],
        ],
      );
      assert.match(String(entries[0]?.['err']), /ENOSPC: simulated failure/);
      const recovered = logs.entries().find((e) => e['msg'] === 'SVID files written after failed attempts; no longer retrying');
      assert.equal(recovered?.['level'], 'info');
      assert.equal(recovered?.['failed_attempts'], 7);
    } finally {
      await volume.close();
    }
  });

  it('draws the jitter from the injected random source and starts over after a success', async () => {
    const writer = new FlakyWriter(2, 'EIO');
    const timers = new ManualTimers();
    const { volume, entryId, metrics } = await startVolume(writer, { random: () => 0, schedule: timers.schedule });
    try {
      await eventually('the first attempt', () => writer.attempts.length === 1);
      timers.fire();
      await eventually('the second attempt', () => writer.attempts.length === 2);
      timers.fire();
      await eventually('the files', () => writer.written.length === 1);
      assert.deepEqual(
        timers.all.map((t) => t.delayMs),
        [500, 1000],
        'the bottom of the jitter range: half of each step',
      );
      assert.equal(await failureCount(metrics, 'EIO'), 2);

      // A later run of failures starts from the first step again.
      writer.failures = 1;
      await agent.rotateSvids(entryId);
      await eventually('the failed write of the rotation', () => writer.attempts.length === 4);
      assert.deepEqual(
        timers.pending().map((t) => t.delayMs),
        [500],
      );
    } finally {
      await volume.close();
    }
  });

  it('close() cancels the pending retry, clears the gauge, and no retry runs afterwards', async () => {
    const metrics = new DriverMetrics();
    const failing = new FlakyWriter(Infinity, 'EMFILE');
    const timers = new ManualTimers();
    const healthy = new FlakyWriter(0);
    const first = await startVolume(failing, { schedule: timers.schedule }, metrics);
    const second = await startVolume(healthy, { schedule: timers.schedule }, metrics);
    try {
      await eventually('the failed write', () => failing.attempts.length === 1);
      await eventually('the healthy write', () => healthy.written.length === 1);
      assert.equal(await failingVolumes(metrics), 1, 'only the failing volume counts');
      const [timer] = timers.pending();
      assert.ok(timer);
      await first.volume.close();
      assert.equal(timer.cancelled, true);
      assert.equal(await failingVolumes(metrics), 0, 'a closed volume is not counted');
      // Even a timer that fires regardless (it raced with close) starts nothing.
      timer.callback();
      await sleep(50);
      assert.equal(failing.attempts.length, 1);
      assert.equal(await failureCount(metrics, 'EMFILE'), 1);
    } finally {
      await first.volume.close();
      await second.volume.close();
    }
  });

  it('with real timers: retries on its own, and a write failing during close() schedules nothing', async () => {
    const writer = new FlakyWriter(Infinity, 'ENFILE');
    const metrics = new DriverMetrics();
    const { volume } = await startVolume(writer, { initialMs: 20, maxMs: 40 }, metrics);
    try {
      await eventually('three attempts, two of them retries', () => writer.attempts.length >= 3, 5000);
      let release: () => void = () => undefined;
      writer.gate = new Promise((resolve) => {
        release = resolve;
      });
      const attempts = writer.attempts.length;
      await eventually('a write in progress', () => writer.attempts.length > attempts, 5000);
      const closing = volume.close();
      release();
      await closing;
      const afterClose = writer.attempts.length;
      await sleep(200);
      assert.equal(writer.attempts.length, afterClose, 'no attempt after close');
      assert.equal(await failingVolumes(metrics), 0);
    } finally {
      await volume.close();
    }
  });

  it('stops retrying when the newest material has nothing to write (entry deleted): the previous files stay', async () => {
    const writer = new FlakyWriter(Infinity, 'EROFS');
    const timers = new ManualTimers();
    const { volume, entryId, metrics, logs } = await startVolume(writer, { schedule: timers.schedule });
    try {
      await eventually('the failed write', () => writer.attempts.length === 1);
      assert.equal(await failingVolumes(metrics), 1);
      agent.removeEntry(entryId);
      await eventually('the retry to stop', () => timers.pending().length === 0);
      assert.equal(await failingVolumes(metrics), 0);
      assert.equal(writer.attempts.length, 1);
      const stopped = logs.entries().find((e) => String(e['msg']).startsWith('no longer retrying the failed write'));
      assert.equal(stopped?.['failed_attempts'], 1);
    } finally {
      await volume.close();
    }
  });

  it('a volume whose writes succeed has no timer', async () => {
    const writer = new FlakyWriter(0);
    const timers = new ManualTimers();
    const { volume, entryId } = await startVolume(writer, { schedule: timers.schedule });
    try {
      await eventually('the files', () => writer.written.length === 1);
      await agent.rotateSvids(entryId);
      await eventually('the rotation', () => writer.written.length === 2);
      assert.equal(timers.all.length, 0);
    } finally {
      await volume.close();
    }
  });
});

describe('failure reasons', () => {
  it('finds the errno code through the causes AtomicWriter adds', () => {
    assert.equal(errnoCodeOf(writeError('ENOSPC')), 'ENOSPC');
    assert.equal(errnoCodeOf(new Error('outer', { cause: writeError('EIO') })), 'EIO');
    assert.equal(errnoCodeOf(new Error('no code')), undefined);
    assert.equal(errnoCodeOf(Object.assign(new Error('node, not errno'), { code: 'ERR_INVALID_ARG_TYPE' })), undefined);
    assert.equal(errnoCodeOf('a string'), undefined);
  });

  it('maps known codes to themselves and everything else to other, so the label stays bounded', () => {
    for (const code of ['ENOSPC', 'EIO', 'EMFILE', 'ENFILE', 'EROFS', 'EACCES', 'EPERM', 'EDQUOT', 'ENOENT'])
      assert.equal(writeFailureReason(code), code);
    assert.equal(writeFailureReason('EBUSY'), 'other');
    assert.equal(writeFailureReason(undefined), 'other');
  });
});
