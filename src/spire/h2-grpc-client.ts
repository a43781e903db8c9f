/**
 * The driver's gRPC client for the SPIRE agent's admin socket: gRPC's wire
 * protocol (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md)
 * spoken over one HTTP/2 connection of the driver's own
 * (src/http2/client-connection.ts) on the unix socket, for the four calls of
 * the Delegated Identity API.
 *
 * Why not grpc-js's client: memory. Every volume holds one SubscribeToX509SVIDs
 * stream for its whole life, and grpc-js builds six call objects per stream
 * (resolving, retrying, load-balancing, subchannel, the stream wrapper and a
 * filter stack), each with its listener closures, a captured caller stack and
 * the serialized request; its decoder keeps a one-byte slice of the socket read
 * that delivered the last message, which pins that whole read buffer. Measured
 * with 500 open streams against one server: ~15-16 KiB of RSS per stream with
 * grpc-js, ~5-7 KiB on node:http2's client, whose own stream objects were most
 * of that (README "Benchmarks"). The CSI socket is served by the driver's own
 * unary server on the same HTTP/2 code (src/csi/h2-grpc-server.ts).
 *
 * What it does, as grpc-js did for these calls:
 * - One connection, opened on first use and again after it is lost; while a
 *   connect has just failed, calls fail at once (UNAVAILABLE, with the connect
 *   error) for a backoff of 0.5 s doubling to 5 s, instead of each of 500
 *   volume streams dialling the socket. AgentConnection replaces the whole
 *   client when the socket file re-appears, which skips that backoff.
 * - Keepalive: a PING every 5 min 10 s while calls are open (SPIRE's grpc-go
 *   server sends GOAWAY too_many_pings to clients that ping more often than
 *   every 5 min; after one, the interval doubles), and the connection is
 *   dropped if the answer takes over 20 s, so a hung agent fails the streams
 *   and their re-open takes over.
 * - A GOAWAY lets open calls finish on the old connection, for at most one
 *   keepalive period; new calls open a new one.
 * - Status: grpc-status/grpc-message from the trailers (or a trailers-only
 *   response); otherwise from the HTTP status or the RST_STREAM code, mapped as
 *   https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md
 *   says; a lost connection is UNAVAILABLE.
 * - Messages over --max-message-size fail the call with RESOURCE_EXHAUSTED;
 *   compressed ones (never asked for: no grpc-accept-encoding is sent) with
 *   INTERNAL.
 * - Each message is copied out of the socket's buffers before it is decoded,
 *   so the Buffers a decoded message holds (the key, the certificates) pin
 *   nothing else.
 */
import { hash } from 'node:crypto';
import { status, statusName } from '../grpc-status.js';
import { ClientConnection, type Http2Stream, type ReceivedHeaders, type StreamHandler } from '../http2/client-connection.js';
import { ErrorCode } from '../http2/frames.js';
import type { HeaderField } from '../http2/hpack.js';

/** The outcome of a call, as gRPC reports it. */
export interface CallStatus {
  code: status;
  details: string;
}

/** A call that did not end OK; `message` reads like grpc-js's ("14 UNAVAILABLE: ..."). */
export interface CallError extends Error {
  code: status;
  details: string;
}

/** One method: its HTTP/2 path and its message codecs (protobuf/codec.ts). */
export interface GrpcMethod<Request, Response> {
  path: string;
  serialize(request: Request): Buffer;
  deserialize(bytes: Buffer): Response;
  /**
   * Every response is a full snapshot of the state, never a delta, as in the
   * agent's Subscribe calls (docs/design.md F6): a response byte for byte the
   * same as the previous one on the same call says nothing new and is dropped
   * before it is decoded. The agent re-sends every subscriber its unchanged
   * SVIDs on each change of its cache, so a bundle change on a node with 500
   * volumes brings 500 such repeats.
   */
  snapshots?: boolean;
}

/**
 * One server-streaming call. 'data' per message; when it ends, 'error' (a
 * CallError, unless it ended OK) and then 'status', as grpc-js's
 * ClientReadableStream reports them.
 */
export interface ServerStreamCall<Response> {
  on(event: 'data', listener: (message: Response) => void): unknown;
  on(event: 'error', listener: (err: CallError) => void): unknown;
  on(event: 'status', listener: (result: CallStatus) => void): unknown;
  /** A snapshots method's response equal to the previous one, dropped unread (GrpcMethod.snapshots). */
  on(event: 'repeat', listener: () => void): unknown;
  cancel(): void;
}

export interface H2GrpcClientOptions {
  socketPath: string;
  /** Largest message accepted; a larger one fails the call with RESOURCE_EXHAUSTED. */
  maxReceiveMessageBytes: number;
  /** Sent as user-agent. */
  userAgent: string;
  /** Default 5 minutes. */
  keepaliveIntervalMs?: number;
  /** Default 20 s. */
  keepaliveTimeoutMs?: number;
  /** Default 500 ms, doubling to reconnectBackoffMaxMs. */
  reconnectBackoffInitialMs?: number;
  /** Default 5 s. */
  reconnectBackoffMaxMs?: number;
}

export function callError(code: status, details: string): CallError {
  return Object.assign(new Error(`${code} ${statusName(code)}: ${details}`), { code, details });
}

const GRPC_HEADER_BYTES = 5;

/** https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md */
function codeForHttpStatus(httpStatus: number): status {
  switch (httpStatus) {
    case 400:
      return status.INTERNAL;
    case 401:
      return status.UNAUTHENTICATED;
    case 403:
      return status.PERMISSION_DENIED;
    case 404:
      return status.UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
      return status.UNAVAILABLE;
    default:
      return status.UNKNOWN;
  }
}

/** The status an RST_STREAM without gRPC trailers means (the same table). */
function statusForReset(rstCode: number): CallStatus {
  switch (rstCode) {
    case ErrorCode.REFUSED_STREAM:
      return { code: status.UNAVAILABLE, details: 'the agent refused the stream' };
    case ErrorCode.CANCEL:
      return { code: status.CANCELLED, details: 'the agent cancelled the call' };
    case ErrorCode.ENHANCE_YOUR_CALM:
      return { code: status.RESOURCE_EXHAUSTED, details: 'the agent reset the stream: ENHANCE_YOUR_CALM' };
    case ErrorCode.INADEQUATE_SECURITY:
      return { code: status.PERMISSION_DENIED, details: 'the agent reset the stream: INADEQUATE_SECURITY' };
    default:
      return { code: status.INTERNAL, details: `the call ended without a gRPC status (RST_STREAM code ${rstCode})` };
  }
}

/** The grpc-timeout header: at most 8 digits, in milliseconds while they fit, else seconds. */
function grpcTimeout(ms: number): string {
  const whole = Math.max(1, Math.ceil(ms));
  return whole < 1e8 ? `${whole}m` : `${Math.min(99_999_999, Math.ceil(whole / 1000))}S`;
}

function decodeGrpcMessage(raw: string | undefined): string {
  const value = raw ?? '';
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

/** grpc-status and grpc-message of a header block, or undefined when it carries none. */
function statusFromHeaders(headers: ReceivedHeaders): CallStatus | undefined {
  const raw = headers['grpc-status'];
  if (raw === undefined) return undefined;
  const code = /^\d{1,2}$/.test(raw) ? Number(raw) : NaN;
  const details = decodeGrpcMessage(headers['grpc-message']);
  if (!Number.isInteger(code) || code < 0 || code > 16) {
    return { code: status.UNKNOWN, details: `the agent sent an invalid grpc-status "${raw}"${details ? `: ${details}` : ''}` };
  }
  return { code: code as status, details };
}

type Listener = (value: never) => void;

/**
 * Runs every listener of `group` with `value`, whatever one of them throws
 * (the status listeners settle promises and clear the deadline); a throw is
 * re-raised on the next tick, outside the connection's socket handler, which
 * reads for every call on the connection.
 */
function emit(group: Listener[] | undefined, value: unknown): void {
  for (const listener of group ?? []) {
    try {
      (listener as (v: unknown) => void)(value);
    } catch (err) {
      process.nextTick(() => {
        throw err;
      });
    }
  }
}

/**
 * `list` with `listener` added; the first makes an array of exactly one. A
 * call lives as long as its volume, and a push onto an empty array would
 * reserve room for 17 (~150 bytes per list, four lists per call).
 */
function withListener(list: Listener[] | undefined, listener: Listener): Listener[] {
  if (list === undefined) return [listener];
  list.push(listener);
  return list;
}

class Call<Response> implements ServerStreamCall<Response>, StreamHandler {
  private dataListeners: Listener[] | undefined;
  private repeatListeners: Listener[] | undefined;
  private errorListeners: Listener[] | undefined;
  private statusListeners: Listener[] | undefined;
  /** Received bytes not yet making a whole message. */
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** The status to report: from the agent's trailers, or decided here (cancel, a bad message). */
  private finalStatus: CallStatus | undefined;
  /** For a snapshots method: SHA-256 of the last response delivered on this call. */
  private lastSnapshot: string | undefined;
  /** Set by cancel() and failNow(): data after it is not delivered. */
  private rejected = false;
  private ended = false;

  constructor(
    private readonly method: GrpcMethod<never, Response>,
    private readonly maxMessageBytes: number,
    private readonly connection: Connection | undefined,
  ) {}

  /** Set once the call has a stream on the connection. */
  stream: Http2Stream | undefined;
  private responded = false;

  on(event: 'data' | 'error' | 'status' | 'repeat', listener: (value: never) => void): this {
    if (event === 'data') this.dataListeners = withListener(this.dataListeners, listener);
    else if (event === 'repeat') this.repeatListeners = withListener(this.repeatListeners, listener);
    else if (event === 'error') this.errorListeners = withListener(this.errorListeners, listener);
    else this.statusListeners = withListener(this.statusListeners, listener);
    return this;
  }

  cancel(): void {
    if (this.ended) return;
    this.rejected = true;
    // A status the agent already sent stands; either way the stream goes now,
    // even if the agent has not ended it (a non-200 answer left open).
    this.finalStatus ??= { code: status.CANCELLED, details: 'Cancelled on client' };
    this.closeStream();
  }

  /** Fails the call before or without a stream (no connection, a request that cannot be sent). */
  failNow(result: CallStatus): void {
    this.rejected = true;
    this.finalStatus ??= result;
    if (this.stream === undefined) queueMicrotask(() => this.finish());
    else this.closeStream();
  }

  onHeaders(headers: ReceivedHeaders): void {
    if (this.responded) {
      this.onTrailers(headers);
    } else {
      this.responded = true;
      this.onResponse(headers);
    }
  }

  private onResponse(headers: ReceivedHeaders): void {
    // A trailers-only response (the agent failed the call at once) carries its
    // status here; it counts over the HTTP status, as the mapping doc says.
    const trailersOnly = statusFromHeaders(headers);
    if (trailersOnly !== undefined) {
      this.finalStatus ??= trailersOnly;
      return;
    }
    const httpStatus = Number(headers[':status']);
    if (httpStatus !== 200) {
      this.finalStatus ??= { code: codeForHttpStatus(httpStatus), details: `the agent answered HTTP status ${httpStatus}` };
      return;
    }
    const contentType = headers['content-type'] ?? '';
    if (!contentType.startsWith('application/grpc')) {
      this.failNow({ code: status.UNKNOWN, details: `the agent answered with content-type "${contentType}", not application/grpc` });
    }
  }

  private onTrailers(trailers: ReceivedHeaders): void {
    const result = statusFromHeaders(trailers) ?? { code: status.UNKNOWN, details: 'the agent ended the call without a grpc-status' };
    if (result.code === status.OK && this.pendingBytes > 0) {
      this.finalStatus ??= {
        code: status.INTERNAL,
        details: `the agent ended the call in the middle of a message (${this.pendingBytes} bytes left over)`,
      };
      return;
    }
    this.finalStatus ??= result;
  }

  onData(chunk: Buffer): void {
    if (this.rejected) return;
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    while (this.pendingBytes >= GRPC_HEADER_BYTES && !this.rejected) {
      const header = this.peekHeader();
      const compressed = header[0] !== 0;
      const length = header.readUInt32BE(1);
      if (length > this.maxMessageBytes) {
        this.failNow({
          code: status.RESOURCE_EXHAUSTED,
          details: `the agent sent a ${length}-byte message, over the ${this.maxMessageBytes}-byte limit (--max-message-size)`,
        });
        return;
      }
      if (compressed) {
        this.failNow({ code: status.INTERNAL, details: 'the agent sent a compressed message, which the driver never asked for' });
        return;
      }
      if (this.pendingBytes < GRPC_HEADER_BYTES + length) return;
      const bytes = this.take(length);
      if (this.method.snapshots === true) {
        const digest = hash('sha256', bytes, 'base64');
        if (digest === this.lastSnapshot) {
          emit(this.repeatListeners, undefined);
          continue;
        }
        this.lastSnapshot = digest;
      }
      let message: Response;
      try {
        message = this.method.deserialize(bytes);
      } catch (err) {
        this.failNow({ code: status.INTERNAL, details: `the agent sent a message that does not decode: ${(err as Error).message}` });
        return;
      }
      emit(this.dataListeners, message);
    }
  }

  onClose(rstCode: number, reason?: string): void {
    this.stream = undefined;
    this.finish(rstCode, reason);
  }

  private finish(rstCode?: number, reason?: string): void {
    if (this.ended) return;
    this.ended = true;
    this.connection?.callEnded();
    this.pending = [];
    const result = this.finalStatus ?? this.lostStatus(rstCode, reason);
    const listeners: [Listener[] | undefined, unknown][] = [[this.statusListeners, result]];
    if (result.code !== status.OK) listeners.unshift([this.errorListeners, callError(result.code, result.details)]);
    this.dataListeners = this.repeatListeners = this.errorListeners = this.statusListeners = undefined;
    for (const [group, value] of listeners) emit(group, value);
  }

  /** A stream that closed without a status: the connection went, or the agent reset it. */
  private lostStatus(rstCode: number | undefined, reason: string | undefined): CallStatus {
    // The driver reset the stream for something the agent sent.
    if (reason !== undefined) return { code: status.INTERNAL, details: reason };
    if (this.connection?.gone()) {
      return { code: status.UNAVAILABLE, details: this.connection.lostBecause ?? 'the connection to the agent closed' };
    }
    if (rstCode !== undefined && rstCode !== ErrorCode.NO_ERROR) return statusForReset(rstCode);
    return { code: status.INTERNAL, details: 'the agent ended the call without a gRPC status' };
  }

  /** Resets the stream with CANCEL, even if the agent has not ended it (a non-200 answer left open). */
  private closeStream(): void {
    if (this.stream !== undefined) this.connection?.h2.reset(this.stream, ErrorCode.CANCEL);
  }

  /** The 5-byte gRPC message header at the front of the pending bytes. */
  private peekHeader(): Buffer {
    const first = this.pending[0] as Buffer;
    if (first.length >= GRPC_HEADER_BYTES) return first;
    this.pending = [Buffer.concat(this.pending, this.pendingBytes)];
    return this.pending[0] as Buffer;
  }

  /** Removes one framed message from the pending bytes and returns its payload, copied into its own memory. */
  private take(length: number): Buffer {
    const message = Buffer.allocUnsafeSlow(length);
    let offset = 0; // bytes of the framed message (header included) consumed so far
    let remaining = GRPC_HEADER_BYTES + length;
    while (remaining > 0) {
      const chunk = this.pending[0] as Buffer;
      const n = Math.min(chunk.length, remaining);
      const payloadFrom = Math.max(0, GRPC_HEADER_BYTES - offset);
      if (payloadFrom < n) chunk.copy(message, offset + payloadFrom - GRPC_HEADER_BYTES, payloadFrom, n);
      offset += n;
      remaining -= n;
      if (n === chunk.length) this.pending.shift();
      else this.pending[0] = chunk.subarray(n); // the start of the next message
    }
    this.pendingBytes -= GRPC_HEADER_BYTES + length;
    return message;
  }
}

/** The header list size this client accepts from the agent: gRPC's headers and trailers, and an error message. */
const MAX_HEADER_LIST_BYTES = 64 * 1024;

/** One HTTP/2 connection to the agent and its keepalive. */
class Connection {
  readonly h2: ClientConnection;
  private openCalls = 0;
  private goingAway = false;
  private keepaliveTimer: NodeJS.Timeout | undefined;
  /** While calls drain from a connection that takes no new ones: the most they may wait. */
  private drainTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly options: Required<H2GrpcClientOptions>,
    private readonly onConnectFailure: (reason: string) => void,
    private readonly onConnected: () => void,
    private readonly onTooManyPings: () => void,
  ) {
    let connected = false;
    this.h2 = new ClientConnection({
      socketPath: options.socketPath,
      maxHeaderListBytes: MAX_HEADER_LIST_BYTES,
      peerName: 'the agent',
      onConnect: () => {
        connected = true;
        this.onConnected();
      },
      onError: (err) => {
        if (!connected) this.onConnectFailure(err.message);
      },
      onGoaway: (errorCode) => {
        this.goingAway = true;
        // grpc-go's answer to pings it finds too frequent ("too_many_pings").
        if (errorCode === ErrorCode.ENHANCE_YOUR_CALM) this.onTooManyPings();
        this.drain();
      },
      onClose: () => {
        this.stopKeepalive();
        clearTimeout(this.drainTimer);
      },
    });
    // The driver's own servers keep the process alive; this connection should not.
    this.h2.unref();
  }

  /** Why the connection went, when known: calls that end without a status on it report this. */
  get lostBecause(): string | undefined {
    return this.h2.lostBecause;
  }

  /** True while new calls may go on this connection. */
  usable(): boolean {
    return !this.gone() && this.h2.lostBecause === undefined;
  }

  /** True once the connection is closed, destroyed or told to go away. */
  gone(): boolean {
    return this.h2.gone || this.goingAway;
  }

  callStarted(): void {
    this.openCalls += 1;
    if (this.keepaliveTimer === undefined && this.usable()) {
      this.keepaliveTimer = setInterval(() => this.ping(), this.options.keepaliveIntervalMs);
      this.keepaliveTimer.unref();
    }
  }

  callEnded(): void {
    this.openCalls -= 1;
    if (this.openCalls === 0) {
      this.stopKeepalive();
      clearTimeout(this.drainTimer);
    }
  }

  /** No new calls; the open ones may finish (the connection closes when they have). */
  close(): void {
    this.h2.close();
    this.drain();
  }

  /**
   * A connection that takes no new calls is not pinged any more, so its open
   * calls get one keepalive period to end; a stream of a hung agent that
   * never does is failed then, and its owner re-opens it on a new connection.
   */
  private drain(): void {
    this.stopKeepalive();
    if (this.openCalls === 0 || this.drainTimer !== undefined || this.h2.destroyed) return;
    this.drainTimer = setTimeout(() => {
      const why = this.h2.lostBecause ?? 'the connection takes no new calls';
      this.h2.destroy(`${why}, and the calls still open on it did not end within one keepalive period`);
    }, this.options.keepaliveIntervalMs + this.options.keepaliveTimeoutMs);
    this.drainTimer.unref();
  }

  private ping(): void {
    if (!this.usable()) return;
    const timeout = setTimeout(() => {
      this.h2.destroy(`the agent did not answer a keepalive ping within ${this.options.keepaliveTimeoutMs} ms`);
    }, this.options.keepaliveTimeoutMs);
    timeout.unref();
    this.h2.ping(() => clearTimeout(timeout));
  }

  private stopKeepalive(): void {
    clearInterval(this.keepaliveTimer);
    this.keepaliveTimer = undefined;
  }
}

export class H2GrpcClient {
  private readonly options: Required<H2GrpcClientOptions>;
  private connection: Connection | undefined;
  /** After a failed connect: calls fail at once until this time (performance.now()), with `connectFailure`. */
  private failFastUntil = 0;
  private connectFailure = '';
  private backoffMs: number;
  private closed = false;

  constructor(options: H2GrpcClientOptions) {
    this.options = {
      // grpc-go's default minimum (5 min) plus a margin, so a ping is never early.
      keepaliveIntervalMs: 5 * 60 * 1000 + 10_000,
      keepaliveTimeoutMs: 20 * 1000,
      reconnectBackoffInitialMs: 500,
      reconnectBackoffMaxMs: 5000,
      ...options,
    };
    this.backoffMs = this.options.reconnectBackoffInitialMs;
  }

  serverStream<Request, Response>(method: GrpcMethod<Request, Response>, request: Request, deadlineMs?: number): ServerStreamCall<Response> {
    const typed = method as unknown as GrpcMethod<never, Response>;
    if (this.closed) return this.failed(typed, { code: status.UNAVAILABLE, details: 'the agent client is closed' });
    if (performance.now() < this.failFastUntil) {
      return this.failed(typed, { code: status.UNAVAILABLE, details: `cannot reach the agent: ${this.connectFailure}` });
    }
    const connection = this.usableConnection();
    let body: Buffer;
    try {
      const payload = method.serialize(request);
      body = Buffer.allocUnsafe(GRPC_HEADER_BYTES + payload.length);
      body[0] = 0;
      body.writeUInt32BE(payload.length, 1);
      payload.copy(body, GRPC_HEADER_BYTES);
    } catch (err) {
      return this.failed(typed, { code: status.INTERNAL, details: `the request does not serialize: ${(err as Error).message}` });
    }
    const fields: HeaderField[] = [
      [':path', method.path],
      [':authority', 'localhost'],
      ['content-type', 'application/grpc'],
      ['te', 'trailers'],
      ['user-agent', this.options.userAgent],
    ];
    if (deadlineMs !== undefined) fields.push(['grpc-timeout', grpcTimeout(deadlineMs)]);
    const call = new Call<Response>(typed, this.options.maxReceiveMessageBytes, connection);
    try {
      call.stream = connection.h2.request(fields, body, call);
    } catch (err) {
      return this.failed(typed, { code: status.UNAVAILABLE, details: `cannot open a call to the agent: ${(err as Error).message}` });
    }
    connection.callStarted();
    if (deadlineMs !== undefined) {
      const timer = setTimeout(
        () => call.failNow({ code: status.DEADLINE_EXCEEDED, details: `no answer from the agent within ${deadlineMs} ms` }),
        deadlineMs,
      );
      timer.unref();
      call.on('status', () => clearTimeout(timer));
    }
    return call;
  }

  /** A unary call: resolves with the one response, or rejects with a CallError. */
  unary<Request, Response>(method: GrpcMethod<Request, Response>, request: Request, deadlineMs: number): Promise<Response> {
    return new Promise((resolve, reject) => {
      let response: Response | undefined;
      let responses = 0;
      const call = this.serverStream(method, request, deadlineMs);
      call.on('data', (message) => {
        response = message;
        responses += 1;
      });
      call.on('status', (result) => {
        if (result.code !== status.OK) reject(callError(result.code, result.details));
        else if (response === undefined) reject(callError(status.INTERNAL, 'the agent ended the call without a response'));
        else if (responses > 1) reject(callError(status.INTERNAL, `the agent sent ${responses} responses to a unary call`));
        else resolve(response);
      });
    });
  }

  /** New calls fail; the open ones finish on the current connection. */
  close(): void {
    this.closed = true;
    this.connection?.close();
    this.connection = undefined;
  }

  private usableConnection(): Connection {
    if (this.connection?.usable()) return this.connection;
    this.connection?.close();
    const connection = new Connection(
      this.options,
      (reason) => {
        this.connectFailure = reason;
        this.failFastUntil = performance.now() + this.backoffMs;
        this.backoffMs = Math.min(this.backoffMs * 2, this.options.reconnectBackoffMaxMs);
      },
      () => {
        this.backoffMs = this.options.reconnectBackoffInitialMs;
        this.failFastUntil = 0;
      },
      () => {
        // As grpc-js does: the next connections ping half as often.
        this.options.keepaliveIntervalMs *= 2;
      },
    );
    this.connection = connection;
    return connection;
  }

  private failed<Response>(method: GrpcMethod<never, Response>, result: CallStatus): ServerStreamCall<Response> {
    const call = new Call<Response>(method, this.options.maxReceiveMessageBytes, undefined);
    call.failNow(result);
    return call;
  }
}
