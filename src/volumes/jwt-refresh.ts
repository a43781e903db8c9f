/**
 * Keeps a volume's JWT-SVIDs fresh. FetchJWTSVIDs is unary (no stream tells
 * us when a token is due), so this is the one place the driver schedules work
 * of its own (docs/design.md invariant 9): ONE timer per volume, for all its
 * tokens, set to fetch again when half of the shortest remaining lifetime has
 * passed (plus up to a tenth more, so volumes published together spread
 * out), as spiffe-helper refreshes at half of the remaining lifetime
 * (https://github.com/spiffe/spiffe-helper). The jitter is later, never
 * earlier: the agent serves a cached token until it is half-way through its
 * life (FetchJWTSVID in
 * https://github.com/spiffe/spire/blob/v1.15.3/pkg/agent/manager/manager.go),
 * so a fetch before that point would bring back the same token. Half of the
 * *remaining* lifetime, not of the whole: after a cached token the next fetch
 * still lands past its half-life, and a token always has at least 40 % of its
 * life left when it is replaced. A failed fetch is retried on the same timer
 * with a capped, jittered backoff; close() cancels it.
 */
import { Backoff } from '../spire/backoff.js';
import type { JwtSvidMessage } from '../spire/messages.js';
import type { JwtSvidRequest } from './jwt-attributes.js';
import type { Schedule } from './write-retry.js';

/** Retry after a failed fetch: 1 s doubling to 60 s, as spiffe-helper's JWT retry. */
export const JWT_RETRY_INITIAL_MS = 1000;
export const JWT_RETRY_MAX_MS = 60_000;
/** Never sooner: a token the agent says is (nearly) expired must not make a tight loop. */
export const JWT_MIN_REFRESH_MS = 1000;
/** setTimeout's longest delay (2^31 - 1 ms, about 24.8 days); a longer one would fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** The share of the remaining lifetime to wait: 50 % to 60 %, by the jitter. */
const REFRESH_SHARE = 0.5;
const JITTER_SHARE = 0.1;

export interface JwtRefreshOptions {
  requests: readonly JwtSvidRequest[];
  /** One FetchJWTSVIDs call for these audiences with the pod's selectors. */
  fetch: (audiences: readonly string[]) => Promise<JwtSvidMessage[]>;
  schedule: Schedule;
  /** Wall-clock milliseconds: token lifetimes are wall-clock seconds. */
  wallClock: () => number;
  random?: () => number;
  /** New tokens for every request are held. */
  onTokens: () => void;
  /** A fetch failed; the refresher retries by itself after `retryInMs`. */
  onFailure: (err: unknown, attempt: number, retryInMs: number) => void;
}

/** The JWT-SVIDs of one volume, fetched and kept fresh on one timer. */
export class JwtRefresher {
  /** Per request (by file name): every JWT-SVID of the last successful fetch. */
  private readonly held = new Map<string, JwtSvidMessage[]>();
  private readonly backoff: Backoff;
  private readonly random: () => number;
  private cancelTimer: (() => void) | undefined;
  private failures = 0;
  private fetching = false;
  private closed = false;

  constructor(private readonly options: JwtRefreshOptions) {
    this.random = options.random ?? Math.random;
    this.backoff = new Backoff({ initialMs: JWT_RETRY_INITIAL_MS, maxMs: JWT_RETRY_MAX_MS, random: this.random });
  }

  /** The tokens of the last successful fetch for `request`, or undefined before one. */
  svidsFor(request: JwtSvidRequest): readonly JwtSvidMessage[] | undefined {
    return this.held.get(request.file);
  }

  /** Fetches failed in a row; 0 after a success. */
  get failedAttempts(): number {
    return this.failures;
  }

  /** True while a timer is pending (for tests that prove there is at most one). */
  get scheduled(): boolean {
    return this.cancelTimer !== undefined;
  }

  /** The first fetch, at once. */
  start(): void {
    void this.refresh();
  }

  /**
   * Fetches now instead of at the scheduled time (e.g. when the agent's socket
   * re-appears, or a fix was made while retrying). A fetch in flight is not doubled.
   */
  refreshNow(): void {
    if (this.closed || this.fetching) return;
    this.cancel();
    void this.refresh();
  }

  close(): void {
    this.closed = true;
    this.cancel();
  }

  private cancel(): void {
    this.cancelTimer?.();
    this.cancelTimer = undefined;
  }

  private async refresh(): Promise<void> {
    this.cancelTimer = undefined;
    this.fetching = true;
    let fetched: Map<string, JwtSvidMessage[]>;
    try {
      const results = await Promise.all(this.options.requests.map((request) => this.options.fetch(request.audiences)));
      fetched = new Map(this.options.requests.map((request, i) => [request.file, results[i] ?? []]));
    } catch (err) {
      this.fetching = false;
      if (this.closed) return;
      this.failures += 1;
      const delayMs = this.backoff.next();
      this.arm(delayMs);
      this.options.onFailure(err, this.failures, delayMs);
      return;
    }
    this.fetching = false;
    if (this.closed) return;
    this.failures = 0;
    this.backoff.reset();
    for (const [file, svids] of fetched) this.held.set(file, svids);
    this.arm(this.nextRefreshDelay([...fetched.values()].flat()));
    this.options.onTokens();
  }

  private arm(delayMs: number): void {
    this.cancel();
    this.cancelTimer = this.options.schedule(() => void this.refresh(), delayMs);
  }

  /** Half of the shortest remaining lifetime, jittered up by up to a tenth of it. */
  nextRefreshDelay(svids: readonly JwtSvidMessage[]): number {
    if (svids.length === 0) return JWT_RETRY_MAX_MS;
    const now = this.options.wallClock();
    const remainingMs = Math.min(...svids.map((svid) => svid.expires_at * 1000 - now));
    const share = REFRESH_SHARE + JITTER_SHARE * this.random();
    return Math.min(MAX_TIMER_MS, Math.max(JWT_MIN_REFRESH_MS, Math.round(remainingMs * share)));
  }
}
