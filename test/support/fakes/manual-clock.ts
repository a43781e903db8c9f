/**
 * A clock that stands still until the test moves it (like the fake clock of
 * cert-manager csi-lib's manager tests). `advance(ms)` fires every timer that
 * falls due on the way, in the order of their due times (ties: the order they
 * were scheduled), setting `now()` to each one's due time and letting the
 * promises it started run before the next fires, as the event loop would.
 */
import type { Clock } from '../../../src/spire/resilient-stream.js';

interface ManualTimer {
  readonly id: number;
  readonly dueAt: number;
  readonly delayMs: number;
  readonly callback: () => void;
}

export interface ScheduledTimer {
  /** When it was scheduled, on this clock. */
  at: number;
  delayMs: number;
  /** cancelled, fired, or still pending. */
  state: 'pending' | 'fired' | 'cancelled';
}

/**
 * Lets every promise chain that is already running finish: microtasks all run
 * before the event loop's next check phase. No time passes on any clock.
 */
export async function settle(): Promise<void> {
  for (let round = 0; round < 3; round++) await new Promise<void>((resolve) => setImmediate(resolve));
}

export class ManualClock implements Clock {
  private current = 0;
  private nextId = 0;
  private readonly timers = new Map<number, ManualTimer>();
  /** Every timer ever scheduled, in order, with what became of it. */
  readonly history: ScheduledTimer[] = [];

  now(): number {
    return this.current;
  }

  /** An arrow property, so it can be passed around unbound like setTimeout. */
  readonly schedule = (callback: () => void, delayMs: number): (() => void) => {
    const id = this.nextId++;
    const entry: ScheduledTimer = { at: this.current, delayMs, state: 'pending' };
    this.history.push(entry);
    this.timers.set(id, {
      id,
      dueAt: this.current + Math.max(0, delayMs),
      delayMs,
      callback: () => {
        entry.state = 'fired';
        callback();
      },
    });
    return () => {
      if (this.timers.delete(id)) entry.state = 'cancelled';
    };
  };

  /** The delays of the timers still pending, earliest due first. */
  pendingDelays(): number[] {
    return this.pending().map((timer) => timer.delayMs);
  }

  /** How long until the earliest pending timer fires, or undefined when none is pending. */
  nextDueIn(): number | undefined {
    const [first] = this.pending();
    return first === undefined ? undefined : first.dueAt - this.current;
  }

  /**
   * Moves time forward by `ms` at once, without yielding: for a fake step that
   * "takes" that long (a hook inside a write). Nothing may fall due meanwhile.
   */
  tick(ms: number): void {
    const due = this.nextDueIn();
    if (due !== undefined && due <= ms) throw new Error(`tick(${ms}) would pass a timer due in ${due} ms; use advance()`);
    this.current += ms;
  }

  /** Moves time forward by `ms`, firing what falls due on the way; then lets the work they started finish. */
  async advance(ms: number): Promise<void> {
    const target = this.current + ms;
    for (;;) {
      const next = this.pending()[0];
      if (next === undefined || next.dueAt > target) break;
      this.timers.delete(next.id);
      this.current = next.dueAt;
      next.callback();
      await settle();
    }
    this.current = target;
    await settle();
  }

  private pending(): ManualTimer[] {
    return [...this.timers.values()].sort((a, b) => a.dueAt - b.dueAt || a.id - b.id);
  }
}
