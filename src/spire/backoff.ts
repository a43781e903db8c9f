/**
 * Capped exponential backoff with jitter, for re-opening SPIRE agent streams.
 * Half of each delay is fixed and half random ("equal jitter"), so hundreds of
 * volume streams that lost the agent at the same moment do not all come back
 * in the same millisecond, yet none waits much less than the schedule says.
 */
export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  factor?: number;
  random?: () => number;
}

export class Backoff {
  private attempt = 0;
  private readonly factor: number;
  private readonly random: () => number;

  constructor(private readonly options: BackoffOptions) {
    this.factor = options.factor ?? 2;
    this.random = options.random ?? Math.random;
  }

  next(): number {
    const ceiling = Math.min(this.options.maxMs, this.options.initialMs * this.factor ** this.attempt);
    this.attempt += 1;
    return Math.round(ceiling / 2 + (this.random() * ceiling) / 2);
  }

  reset(): void {
    this.attempt = 0;
  }
}
