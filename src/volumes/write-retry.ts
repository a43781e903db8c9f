/**
 * Retrying a volume's failed write. A write fails on a full tmpfs or node disk
 * (ENOSPC, EDQUOT), an I/O error, or file descriptor exhaustion (EMFILE,
 * ENFILE); the agent sends nothing new until the next rotation, by which time
 * the files on disk may have expired. So the volume retries its newest
 * material on its own, on one timer per failing volume and none otherwise.
 */
import { Backoff } from '../spire/backoff.js';

/**
 * First delay 1 s, cap 30 s (each delay jittered between half and all of its
 * step). Most causes clear within seconds (an fd spike, a log file rotated
 * away), so the first retries come quickly. The cap bounds how stale the files
 * get once the cause is fixed — 30 s against the half of an SVID's lifetime
 * (30 min by default) left at rotation — while keeping a node whose disk stays
 * full for hours at one cheap, failing write per volume every 15–30 s. The
 * jitter spreads the volumes that a bundle rotation made fail all at once.
 */
export const WRITE_RETRY_INITIAL_MS = 1000;
export const WRITE_RETRY_MAX_MS = 30_000;

/** Codes that get their own value of the `reason` label; everything else is `other`, so the label stays bounded. */
const REASON_CODES: ReadonlySet<string> = new Set(['ENOSPC', 'EIO', 'EMFILE', 'ENFILE', 'EROFS', 'EACCES', 'EPERM', 'EDQUOT', 'ENOENT']);
/** How far down a chain of `cause`s to look; AtomicWriter wraps once. */
const MAX_CAUSE_DEPTH = 5;

/**
 * The errno code (ENOSPC, ...) behind a failure. AtomicWriter wraps the
 * file-system error to say which step failed, so the chain of causes is searched.
 */
export function errnoCodeOf(err: unknown): string | undefined {
  let current = err;
  for (let depth = 0; depth < MAX_CAUSE_DEPTH && typeof current === 'object' && current !== null; depth++) {
    if ('code' in current && typeof current.code === 'string' && /^E[A-Z0-9]+$/.test(current.code)) return current.code;
    current = 'cause' in current ? current.cause : undefined;
  }
  return undefined;
}

/** The `reason` label of spire_csi_volume_write_failures_total for an errno code. */
export function writeFailureReason(code: string | undefined): string {
  return code !== undefined && REASON_CODES.has(code) ? code : 'other';
}

/** Runs `callback` once after `delayMs`; the returned function cancels it. */
export type Schedule = (callback: () => void, delayMs: number) => () => void;

export const scheduleWithTimer: Schedule = (callback, delayMs) => {
  const timer = setTimeout(callback, delayMs);
  return () => clearTimeout(timer);
};

/** Knobs for tests: a fixed random source and a hand-driven schedule make the delays deterministic. */
export interface WriteRetryOptions {
  initialMs?: number;
  maxMs?: number;
  random?: () => number;
  schedule?: Schedule;
}

/** The retry state of one volume: how many writes in a row failed, and the one pending retry. */
export class WriteRetry {
  private readonly backoff: Backoff;
  private readonly schedule: Schedule;
  private cancelPending: (() => void) | undefined;
  private failures = 0;

  constructor(options: WriteRetryOptions = {}) {
    this.backoff = new Backoff({
      initialMs: options.initialMs ?? WRITE_RETRY_INITIAL_MS,
      maxMs: options.maxMs ?? WRITE_RETRY_MAX_MS,
      random: options.random,
    });
    this.schedule = options.schedule ?? scheduleWithTimer;
  }

  /** Writes that failed in a row since the last success; 0 when the volume is not failing. */
  get failedAttempts(): number {
    return this.failures;
  }

  /**
   * Counts one more failed write and runs `retry` after the next backoff
   * delay. A retry still pending is replaced, so a volume never has two.
   */
  failed(retry: () => void): { attempt: number; delayMs: number } {
    this.supersede();
    this.failures += 1;
    const delayMs = this.backoff.next();
    this.cancelPending = this.schedule(() => {
      this.cancelPending = undefined;
      retry();
    }, delayMs);
    return { attempt: this.failures, delayMs };
  }

  /** Drops the pending retry and keeps the count: a newer attempt is about to run and reschedules if it fails too. */
  supersede(): void {
    this.cancelPending?.();
    this.cancelPending = undefined;
  }

  /** Ends a run of failures (success, nothing left to write, or close). Returns how many writes had failed. */
  reset(): number {
    this.supersede();
    this.backoff.reset();
    const failures = this.failures;
    this.failures = 0;
    return failures;
  }
}
