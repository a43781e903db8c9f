/**
 * The development agent's rotation timers (option `autoRotate`): each signed
 * SVID is signed again at half its lifetime, as the agent's `ShouldRotateX509`
 * does, without its ±10 % jitter.
 */
import type { EntryRecord } from './types.js';

const MIN_ROTATION_DELAY_MS = 100;

export interface RotationOptions {
  autoRotate: boolean;
  /** Whether the record is still registered; a removed entry is not rotated. */
  isLive: (record: EntryRecord) => boolean;
  isClosed: () => boolean;
  /** Signs the entry again (and schedules its next rotation through {@link RotationTimers.schedule}). */
  reissue: (record: EntryRecord) => Promise<void>;
}

export class RotationTimers {
  private readonly timers = new Map<EntryRecord, NodeJS.Timeout>();

  constructor(private readonly options: RotationOptions) {}

  /**
   * ShouldRotateX509 rotates at half the lifetime. Measured from issuance, not
   * from the backdated NotBefore: with a few-second test TTL the 10 s backdate
   * would put the half-life in the past and rotate in a tight loop.
   */
  schedule(record: EntryRecord, issuedAtMs: number): void {
    this.cancel(record);
    if (!this.options.autoRotate || !record.svid) return;
    const delay = Math.max(MIN_ROTATION_DELAY_MS, (record.svid.notAfter.getTime() - issuedAtMs) / 2);
    const timer = setTimeout(() => {
      this.timers.delete(record);
      if (this.options.isClosed() || !this.options.isLive(record)) return;
      this.options.reissue(record).catch((err: unknown) => {
        if (!this.options.isClosed()) process.emitWarning(`DevAgent auto-rotation of ${record.entry.id} failed: ${String(err)}`);
      });
    }, delay);
    timer.unref();
    this.timers.set(record, timer);
  }

  /** No rotation for this entry until the next {@link schedule} (removed, or its SVID injected). */
  cancel(record: EntryRecord): void {
    clearTimeout(this.timers.get(record));
    this.timers.delete(record);
  }

  cancelAll(): void {
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
  }
}
