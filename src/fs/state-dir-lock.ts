/**
 * One driver per state directory: an exclusive flock(2) on
 * `<stateDir>/driver.lock`, held from before the driver reads its state until
 * it has stopped.
 *
 * Two instances on one node (a rollout where the new pod starts while the old
 * one is still stopping, a second DaemonSet, a driver started by hand) would
 * both resume the same volumes, write the same files and fight over the CSI
 * socket. flock(2) rather than a PID file: the kernel drops the lock when the
 * holder's last descriptor closes, so a driver killed with SIGKILL or OOM
 * leaves no stale lock behind, and the lock works between containers of
 * different PID namespaces that share the hostPath state directory (a PID
 * file's pid means nothing in another namespace).
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { LogFields, Logger } from '../observability/logger.js';
import { errnoName, LOCK_EX, LOCK_NB, loadLibc as defaultLoadLibc, type Libc } from './libc.js';

export const LOCK_FILE_NAME = 'driver.lock';
const DEFAULT_POLL_INTERVAL_MS = 300;
const DEFAULT_REMINDER_INTERVAL_MS = 30_000;
/** The holder's record is a few dozen bytes; anything longer is not ours and only shown truncated. */
const MAX_RECORD_BYTES = 4096;

export interface StateDirLock {
  /** The lock file. */
  readonly path: string;
  /**
   * True when this process holds the lock; false when locking is unavailable
   * here (koffi or flock(2) missing) and the driver runs without the
   * protection, which was logged as a warning.
   */
  readonly held: boolean;
  /** Releases the lock (closes its descriptor). Idempotent. */
  release(): Promise<void>;
}

export interface AcquireStateDirLockOptions {
  logger: Logger;
  /** Stops waiting for another holder: acquire rejects with the signal's reason. */
  signal?: AbortSignal;
  /** How often to try again while another process holds the lock. */
  pollIntervalMs?: number;
  /** How often to repeat the "waiting" log line. */
  reminderIntervalMs?: number;
  /** For tests: the C library binding (default: koffi's). */
  loadLibc?: () => Promise<Libc>;
}

/** What the holder wrote into the lock file, for a waiter's log line. */
export interface LockHolder {
  pid?: number;
  hostname?: string;
  startedAt?: string;
  /** The file's content when it is not a driver's record (another tool holds it, or a holder that has not written yet). */
  raw?: string;
}

/**
 * Takes the state directory's lock, waiting for as long as another process
 * holds it: a rollout can briefly overlap the old driver's shutdown with the
 * new one's start, and the new one must not touch the state before the old one
 * is gone. Logs a warning when it starts waiting and again every 30 s.
 */
export async function acquireStateDirLock(stateDir: string, options: AcquireStateDirLockOptions): Promise<StateDirLock> {
  const { logger, signal } = options;
  const pollIntervalMs = options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS;
  const reminderIntervalMs = options.reminderIntervalMs ?? DEFAULT_REMINDER_INTERVAL_MS;
  const lockPath = path.join(stateDir, LOCK_FILE_NAME);

  let libc: Libc;
  try {
    libc = await (options.loadLibc ?? defaultLoadLibc)();
  } catch (err) {
    return unprotected(lockPath, logger, err instanceof Error ? err.message : String(err));
  }

  await fs.mkdir(stateDir, { recursive: true, mode: 0o700 });
  const opened = await openLockFile(lockPath);
  if (opened === undefined) {
    return unprotected(lockPath, logger, `${lockPath} does not exist and the state directory is not writable`);
  }
  const { handle, writable } = opened;

  const startedWaiting = Date.now();
  let lastLogAt: number | undefined;
  try {
    for (;;) {
      signal?.throwIfAborted();
      const errno = libc.flock(handle.fd, LOCK_EX | LOCK_NB);
      if (errno === 0) break;
      if (errno === os.constants.errno.EINTR) continue;
      if (errno !== os.constants.errno.EWOULDBLOCK && errno !== os.constants.errno.EAGAIN) {
        // ENOLCK, EOPNOTSUPP...: the filesystem cannot lock. Refusing to start
        // would take down a driver that ran fine before the lock existed.
        await handle.close();
        return unprotected(
          lockPath,
          logger,
          `flock(2) on ${lockPath} failed with ${errnoName(errno)}; the state directory's filesystem does not support it`,
        );
      }
      const now = Date.now();
      if (lastLogAt === undefined || now - lastLogAt >= reminderIntervalMs) {
        logWaiting(logger, lockPath, await readHolder(handle), lastLogAt === undefined ? undefined : now - startedWaiting);
        lastLogAt = now;
      }
      await sleep(pollIntervalMs, undefined, signal ? { signal } : undefined);
    }
  } catch (err) {
    await handle.close().catch(() => undefined);
    // timers/promises rejects with an AbortError of its own; the caller wants its reason.
    throw signal?.aborted ? (signal.reason as unknown) : err;
  }

  // Held. Leave our record for the next waiter's log line, written through the
  // locked descriptor (no second open, so no window where the file is ours but
  // unlocked), truncated first so that no byte of a longer old record remains.
  // The lock itself is what matters; the record only feeds log lines.
  if (!writable) {
    logger.warn(
      { lock_path: lockPath },
      'the state directory is read-only: holding its lock without recording this process in the lock file; ' +
        'make --state-dir writable, the driver needs it to record new volumes',
    );
  } else {
    try {
      await handle.truncate(0);
      const record = { pid: process.pid, hostname: os.hostname(), started_at: new Date().toISOString() };
      await handle.write(`${JSON.stringify(record)}\n`, 0);
    } catch (err) {
      logger.warn(
        { lock_path: lockPath, err: (err as Error).message },
        'could not record this process in the state directory lock file; holding the lock anyway',
      );
    }
  }
  if (lastLogAt !== undefined) {
    logger.info({ lock_path: lockPath, waited_ms: Date.now() - startedWaiting }, 'the other instance released the state directory lock; starting');
  } else {
    logger.debug({ lock_path: lockPath }, 'state directory lock acquired');
  }

  let released = false;
  return {
    path: lockPath,
    held: true,
    release: async () => {
      if (released) return;
      released = true;
      // Closing the only descriptor releases the flock. The file stays: deleting
      // it would let a waiter that already opened the old file lock that orphan
      // while a third process creates and locks a new file under the same name.
      await handle.close();
    },
  };
}

/**
 * Opens the lock file, creating it: read-write without O_TRUNC, since the
 * current holder's record must survive a waiter's open. In a read-only state
 * directory an existing file is opened read-only (flock needs no write
 * access; only the record is then not written); undefined when there is none.
 * Node opens with O_CLOEXEC, so the mount(8) and umount(8) children never
 * inherit (and so never prolong) the lock.
 */
async function openLockFile(lockPath: string): Promise<{ handle: fs.FileHandle; writable: boolean } | undefined> {
  const { O_RDWR, O_RDONLY, O_CREAT, O_NOFOLLOW } = fs.constants;
  try {
    return { handle: await fs.open(lockPath, O_RDWR | O_CREAT | O_NOFOLLOW, 0o600), writable: true };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EROFS' || code === 'EACCES' || code === 'EPERM') {
      try {
        return { handle: await fs.open(lockPath, O_RDONLY | O_NOFOLLOW), writable: false };
      } catch (readErr) {
        if ((readErr as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      }
    }
    throw new Error(
      `cannot open the state directory lock file ${lockPath}: ${(err as Error).message}; ` +
        'the state directory (--state-dir) must be a writable directory and the lock file a regular file (not a symbolic link)',
      { cause: err },
    );
  }
}

/** Reads the record the holder wrote; never throws (the record only feeds a log line). */
export async function readHolder(handle: fs.FileHandle): Promise<LockHolder> {
  try {
    const buffer = Buffer.alloc(MAX_RECORD_BYTES);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
    return parseHolder(buffer.subarray(0, bytesRead).toString('utf8'));
  } catch {
    return {};
  }
}

export function parseHolder(text: string): LockHolder {
  const trimmed = text.trim();
  try {
    const value: unknown = JSON.parse(trimmed);
    if (typeof value === 'object' && value !== null) {
      const record = value as Record<string, unknown>;
      const holder: LockHolder = {};
      if (typeof record['pid'] === 'number') holder.pid = record['pid'];
      if (typeof record['hostname'] === 'string') holder.hostname = record['hostname'];
      if (typeof record['started_at'] === 'string') holder.startedAt = record['started_at'];
      if (holder.pid !== undefined) return holder;
    }
  } catch {
    // Not a driver's record; shown raw below.
  }
  return trimmed === '' ? {} : { raw: trimmed.slice(0, 200) };
}

export function describeHolder(holder: LockHolder): string {
  if (holder.pid !== undefined) {
    return `pid ${holder.pid}${holder.hostname ? ` on host ${holder.hostname}` : ''}${holder.startedAt ? `, started ${holder.startedAt}` : ''}`;
  }
  if (holder.raw !== undefined) return `holder unknown, the lock file holds ${JSON.stringify(holder.raw)}, not a driver's record`;
  return 'holder unknown: the lock file is empty, so the holder is not a spire-csi-driver or has only just taken the lock';
}

function logWaiting(logger: Logger, lockPath: string, holder: LockHolder, waitedMs: number | undefined): void {
  const fields: LogFields = {
    lock_path: lockPath,
    holder_pid: holder.pid,
    holder_hostname: holder.hostname,
    holder_started_at: holder.startedAt,
    ...(waitedMs === undefined ? {} : { waited_s: Math.round(waitedMs / 1000) }),
  };
  const what =
    waitedMs === undefined
      ? `another spire-csi-driver instance holds the state directory lock ${lockPath} (${describeHolder(holder)})`
      : `still waiting after ${Math.round(waitedMs / 1000)} s: another spire-csi-driver instance holds the state directory lock ${lockPath} (${describeHolder(holder)})`;
  logger.warn(
    fields,
    `${what}; waiting for it to exit — two instances must never manage one state directory. ` +
      'A rollout overlaps for a few seconds; if this lasts, find and stop the other instance ' +
      '(a second driver pod on this node — the host name is its pod name — or the process that `fuser -v <lock file>` shows on the node).',
  );
}

function unprotected(lockPath: string, logger: Logger, reason: string): StateDirLock {
  logger.warn(
    { lock_path: lockPath, reason },
    `the state directory lock is unavailable (${reason}); continuing without it, so nothing stops a second spire-csi-driver ` +
      'instance from managing the same state directory: make sure only one runs per node (one DaemonSet pod, rollingUpdate.maxSurge 0)',
  );
  return { path: lockPath, held: false, release: async () => undefined };
}
