/**
 * A server stream from the SPIRE agent that stays open for as long as its
 * owner wants it: when it fails (agent restarted, socket gone, authorization
 * revoked) it is re-opened after a capped, jittered backoff — or at once when
 * the agent's socket re-appears. No deadline is set on the call: the agent may
 * legitimately stay silent for a long time: its first response waits until the
 * SVIDs are signed (subscribeToWorkloadUpdates in
 * https://github.com/spiffe/spire/blob/v1.15.3/pkg/agent/manager/cache/lru_cache.go).
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../observability/logger.js';
import type { DriverMetrics } from '../observability/metrics.js';
import type { AgentConnection, DelegatedIdentityClient } from './agent-connection.js';
import { describeStreamFailure, type StreamFailure } from './agent-errors.js';
import { Backoff } from './backoff.js';

export interface ResilientStreamOptions<T> {
  kind: 'svid' | 'bundle';
  connection: AgentConnection;
  open: (client: DelegatedIdentityClient) => grpc.ClientReadableStream<T>;
  onMessage: (message: T) => void;
  onFailure?: (failure: StreamFailure) => void;
  logger: Logger;
  metrics: DriverMetrics;
  backoff?: Backoff;
}

export class ResilientStream<T> {
  private call: grpc.ClientReadableStream<T> | undefined;
  private callGeneration = -1;
  private retryTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly backoff: Backoff;
  private readonly onSocketReady = (): void => this.reconnectNow();
  lastFailure: StreamFailure | undefined;

  constructor(private readonly options: ResilientStreamOptions<T>) {
    this.backoff = options.backoff ?? new Backoff({ initialMs: 500, maxMs: 30_000 });
  }

  start(): void {
    this.options.connection.on('socket-ready', this.onSocketReady);
    this.open();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.options.connection.off('socket-ready', this.onSocketReady);
    clearTimeout(this.retryTimer);
    this.call?.cancel();
    this.call = undefined;
  }

  private open(): void {
    if (this.closed) return;
    this.retryTimer = undefined;
    const call = this.options.open(this.options.connection.client());
    this.call = call;
    this.callGeneration = this.options.connection.generation;
    call.on('data', (message: T) => {
      if (this.call !== call) return;
      this.backoff.reset();
      this.lastFailure = undefined;
      this.options.onMessage(message);
    });
    call.on('error', (err: grpc.ServiceError) => {
      if (this.call !== call) return;
      this.failed({ code: err.code, details: err.details || err.message, socketMissing: !this.options.connection.socketExists() });
    });
    call.on('status', (result: grpc.StatusObject) => {
      // A stream the agent ends with OK (it never should) is re-opened too.
      if (this.call !== call || result.code !== grpc.status.OK) return;
      this.failed({ code: grpc.status.UNAVAILABLE, details: 'the agent ended the stream', socketMissing: false });
    });
  }

  private failed(failure: StreamFailure): void {
    if (this.closed) return;
    this.call = undefined;
    this.lastFailure = failure;
    this.options.metrics.agentStreamErrors.inc({ stream: this.options.kind, code: grpc.status[failure.code] ?? String(failure.code) });
    const delayMs = this.backoff.next();
    this.options.logger.warn(
      { stream: this.options.kind, code: grpc.status[failure.code], retry_in_ms: delayMs },
      describeStreamFailure(failure, this.options.connection.socketPath),
    );
    this.options.onFailure?.(failure);
    this.retryTimer = setTimeout(() => this.open(), delayMs);
  }

  /** Re-opens at once if the stream is waiting out a backoff; no-op otherwise. */
  retryNow(): void {
    if (this.closed || this.retryTimer === undefined) return;
    clearTimeout(this.retryTimer);
    this.backoff.reset();
    this.open();
  }

  private reconnectNow(): void {
    if (this.closed) return;
    if (this.retryTimer !== undefined) {
      clearTimeout(this.retryTimer);
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
