/**
 * A server stream from the SPIRE agent that stays open for as long as its
 * owner wants it: when it fails (agent restarted, socket gone, authorization
 * revoked) it is re-opened after a capped, jittered backoff — or at once when
 * the agent's socket re-appears. No deadline is set on the call: the agent may
 * legitimately stay silent for a long time: its first response waits until the
 * SVIDs are signed (subscribeToWorkloadUpdates in
 * https://github.com/spiffe/spire/blob/v1.15.3/pkg/agent/manager/cache/lru_cache.go).
 */
import { status, statusName } from '../grpc-status.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics-api.js';
import type { AgentStreamCall, AgentStreamConnection, DelegatedIdentityClient } from './agent-connection.js';
import { describeStreamFailure, type StreamFailure } from './agent-errors.js';
import { Backoff } from './backoff.js';
import type { CallError, CallStatus } from './h2-grpc-client.js';

/**
 * Time as the lifecycle sees it: the timers that decide behaviour (stream
 * re-open backoff, publish timeout, write retry) and a monotonic reading for
 * the durations in debug lines. systemClock in production; the unit tests use
 * a manual clock (test/support/fakes/manual-clock.ts) that fires timers only
 * when the test advances it.
 */
export interface Clock {
  /** Milliseconds on a monotonic scale, for durations only. */
  now(): number;
  /** Runs `callback` once after `delayMs`; the returned function cancels it (write-retry.ts's Schedule). */
  schedule(callback: () => void, delayMs: number): () => void;
}

export const systemClock: Clock = {
  now: () => performance.now(),
  schedule: (callback, delayMs) => {
    const timer = setTimeout(callback, delayMs);
    return () => clearTimeout(timer);
  },
};

/** Re-open backoff of an agent stream: 500 ms doubling to 30 s, jittered. */
export const STREAM_BACKOFF_INITIAL_MS = 500;
export const STREAM_BACKOFF_MAX_MS = 30_000;

export interface ResilientStreamOptions<T> {
  kind: 'svid' | 'bundle' | 'jwt_bundle';
  connection: AgentStreamConnection;
  open: (client: DelegatedIdentityClient) => AgentStreamCall<T>;
  onMessage: (message: T) => void;
  /** A response equal to the previous one, which the call dropped unread (GrpcMethod.snapshots). */
  onRepeat?: () => void;
  onFailure?: (failure: StreamFailure) => void;
  logger: Logger;
  metrics: Metrics;
  backoff?: Backoff;
  /** Jitter source of the default backoff. Default: Math.random. */
  random?: () => number;
  /** Default: systemClock (real timers). */
  clock?: Clock;
}

export class ResilientStream<T> {
  private call: AgentStreamCall<T> | undefined;
  private callGeneration = -1;
  /** Cancels the pending re-open; set only while the stream waits out a backoff. */
  private cancelRetry: (() => void) | undefined;
  private closed = false;
  private readonly backoff: Backoff;
  private readonly clock: Clock;
  private readonly onSocketReady = (): void => this.reconnectNow();
  lastFailure: StreamFailure | undefined;

  constructor(private readonly options: ResilientStreamOptions<T>) {
    this.backoff = options.backoff ?? new Backoff({ initialMs: STREAM_BACKOFF_INITIAL_MS, maxMs: STREAM_BACKOFF_MAX_MS, random: options.random });
    this.clock = options.clock ?? systemClock;
  }

  start(): void {
    this.options.connection.on('socket-ready', this.onSocketReady);
    this.open();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.options.connection.off('socket-ready', this.onSocketReady);
    this.cancelRetry?.();
    this.cancelRetry = undefined;
    this.call?.cancel();
    this.call = undefined;
  }

  private open(): void {
    if (this.closed) return;
    this.cancelRetry = undefined;
    const call = this.options.open(this.options.connection.client());
    this.call = call;
    this.callGeneration = this.options.connection.generation;
    call.on('data', (message: T) => {
      if (this.call !== call) return;
      this.backoff.reset();
      this.lastFailure = undefined;
      this.options.onMessage(message);
    });
    call.on('repeat', () => {
      if (this.call === call) this.options.onRepeat?.();
    });
    call.on('error', (err: CallError) => {
      if (this.call !== call) return;
      this.failed({ code: err.code, details: err.details || err.message, socketMissing: !this.options.connection.socketExists() });
    });
    call.on('status', (result: CallStatus) => {
      // A stream the agent ends with OK (it never should) is re-opened too.
      if (this.call !== call || result.code !== status.OK) return;
      this.failed({ code: status.UNAVAILABLE, details: 'the agent ended the stream', socketMissing: false });
    });
  }

  private failed(failure: StreamFailure): void {
    if (this.closed) return;
    this.call = undefined;
    this.lastFailure = failure;
    this.options.metrics.agentStreamErrors.inc({ stream: this.options.kind, code: statusName(failure.code) });
    const delayMs = this.backoff.next();
    this.options.logger.warn(
      { stream: this.options.kind, code: statusName(failure.code), retry_in_ms: delayMs },
      describeStreamFailure(failure, this.options.connection.socketPath),
    );
    this.options.onFailure?.(failure);
    this.cancelRetry = this.clock.schedule(() => this.open(), delayMs);
  }

  /** Re-opens at once if the stream is waiting out a backoff; no-op otherwise. */
  retryNow(): void {
    if (this.closed || this.cancelRetry === undefined) return;
    this.cancelRetry();
    this.backoff.reset();
    this.open();
  }

  private reconnectNow(): void {
    if (this.closed) return;
    if (this.cancelRetry !== undefined) {
      this.cancelRetry();
    } else if (this.call !== undefined && this.callGeneration !== this.options.connection.generation) {
      // The socket came back before this stream noticed the agent was gone:
      // its call belongs to the replaced client, so drop it and start over.
      const stale = this.call;
      this.call = undefined;
      stale.cancel();
    } else {
      return;
    }
    this.backoff.reset();
    this.open();
  }
}
