/**
 * The driver's gRPC server for kubelet: gRPC's wire protocol
 * (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md) spoken
 * directly over the driver's own HTTP/2 server connections
 * (src/http2/server-connection.ts) on the unix socket, for unary calls only,
 * which is all CSI's Identity and Node services have.
 *
 * Why not grpc-js's server: memory and start-up. grpc-js was the last user of
 * a package whose code (channels, resolvers, load balancers, the client) the
 * driver loaded and kept for the sake of a handful of unary methods; without it
 * an idle driver holds ~1.4 MiB less and compiles less at start (README
 * "Benchmarks"). Why not node:http2's server: with the agent's calls on the
 * driver's own HTTP/2 client (src/spire/h2-grpc-client.ts), this server was
 * the last user of node:http2, whose JavaScript and nghttp2 cost ~2.4 MiB of
 * RSS in a process that loads them.
 *
 * What a call gets, as from grpc-js's server:
 * - POST with content-type application/grpc (or +proto), else HTTP 405 / 415
 *   as the protocol says; a path no service has: UNIMPLEMENTED.
 * - Exactly one uncompressed message of at most MAX_REQUEST_BYTES (4 MiB,
 *   grpc-js's default): a longer one RESOURCE_EXHAUSTED as soon as its
 *   header or its bytes say so, a compressed message
 *   UNIMPLEMENTED (this server announces identity encoding only), no message,
 *   two messages, a torn one, or bytes that do not decode: INTERNAL.
 * - A grpc-timeout becomes a deadline: the call's signal aborts and the
 *   caller gets DEADLINE_EXCEEDED (one beyond a timer's reach, ~24.8 days, is
 *   no deadline). A caller that resets the stream aborts the signal too.
 * - The handler's result as the response; a thrown DriverError as its status
 *   and message (percent-encoded as the protocol says); anything else INTERNAL.
 */
import net from 'node:net';
import { DriverError, errorMessage } from '../errors.js';
import { status } from '../grpc-status.js';
import type { HeaderField } from '../http2/hpack.js';
import { IGNORE_STREAM, ServerConnection, type Http2Stream, type ReceivedHeaders, type StreamHandler } from '../http2/server-connection.js';

/** One unary method: takes the decoded request, resolves with the response or throws a DriverError. */
export type UnaryMethodHandler = (request: unknown, signal: AbortSignal) => Promise<unknown>;

/** One unary method on the wire: its HTTP/2 path and its message codecs. */
export interface UnaryCodec {
  path: string;
  decodeRequest(bytes: Buffer): unknown;
  encodeResponse(response: object): Buffer;
}

export interface GrpcService {
  /** By method name ("NodePublishVolume"). */
  methods: Readonly<Record<string, UnaryCodec>>;
  /** By method name; a method without one is UNIMPLEMENTED. */
  handlers: Record<string, UnaryMethodHandler>;
}

/** grpc-js's default limit for a received message. */
export const MAX_REQUEST_BYTES = 4 * 1024 * 1024;
const GRPC_HEADER_BYTES = 5;
/** The longest delay setTimeout takes; a longer one would fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** How long close() lets calls in progress finish before it cuts the connections. */
const SHUTDOWN_GRACE_MS = 5000;
/** The header list a caller may send (SETTINGS_MAX_HEADER_LIST_SIZE): kubelet's are a few hundred bytes. */
const MAX_HEADER_LIST_BYTES = 64 * 1024;
/**
 * Calls open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS):
 * kubelet's gRPC client queues beyond it. A node runs at most a few hundred
 * pods (110 by default), each with a call or two in flight at worst.
 */
const MAX_CONCURRENT_CALLS = 1000;

interface Method {
  name: string;
  deserialize(bytes: Buffer): unknown;
  serialize(response: unknown): Buffer;
  handler: UnaryMethodHandler;
}

export class H2GrpcServer {
  private readonly server: net.Server;
  private readonly methods = new Map<string, Method>();
  private readonly connections = new Set<ServerConnection>();

  constructor(services: readonly GrpcService[]) {
    for (const { methods, handlers } of services) {
      for (const [name, codec] of Object.entries(methods)) {
        const handler = handlers[name];
        if (handler === undefined) continue;
        this.methods.set(codec.path, {
          name,
          deserialize: (bytes) => codec.decodeRequest(bytes),
          serialize: (response) => {
            if (typeof response !== 'object' || response === null) throw new Error('the handler returned no message');
            return codec.encodeResponse(response);
          },
          handler,
        });
      }
    }
    this.server = net.createServer((socket) => {
      // A broken connection fails only its calls; their signals abort as their streams close.
      const connection: ServerConnection = new ServerConnection(socket, {
        maxHeaderListBytes: MAX_HEADER_LIST_BYTES,
        maxConcurrentStreams: MAX_CONCURRENT_CALLS,
        onStream: (stream, headers, endStream) => this.onStream(connection, stream, headers, endStream),
        onClose: () => this.connections.delete(connection),
      });
      this.connections.add(connection);
    });
  }

  /** Listens on a Unix socket at `socketPath`. */
  async listen(socketPath: string): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.server.once('error', onError);
      this.server.listen(socketPath, () => {
        this.server.off('error', onError);
        resolve();
      });
    });
  }

  /**
   * Stops accepting connections, lets the calls in progress finish (each
   * connection gets a GOAWAY) for up to 5 s, then cuts what is left.
   */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const connection of this.connections) connection.close();
    const force = setTimeout(() => {
      for (const connection of this.connections) connection.destroy();
    }, SHUTDOWN_GRACE_MS);
    await closed;
    clearTimeout(force);
  }

  private onStream(connection: ServerConnection, stream: Http2Stream, headers: ReceivedHeaders, endStream: boolean): StreamHandler {
    const reply = (fields: HeaderField[], body?: Buffer, trailers?: HeaderField[]): void => connection.respond(stream, fields, body, trailers);
    if (headers[':method'] !== 'POST') {
      reply([[':status', '405']]);
      return IGNORE_STREAM;
    }
    const contentType = headers['content-type'];
    if (contentType === undefined || !/^application\/grpc(?:$|[+;])/.test(contentType)) {
      reply([[':status', '415']]);
      return IGNORE_STREAM;
    }
    const path = headers[':path'] ?? '';
    const method = this.methods.get(path);
    if (method === undefined) {
      reply(statusHeaders(status.UNIMPLEMENTED, `the driver does not serve the method ${path}`));
      return IGNORE_STREAM;
    }
    let deadlineMs: number | undefined;
    const timeoutHeader = headers['grpc-timeout'];
    if (timeoutHeader !== undefined) {
      deadlineMs = parseGrpcTimeout(timeoutHeader);
      if (deadlineMs === undefined) {
        reply(statusHeaders(status.INTERNAL, `malformed grpc-timeout "${timeoutHeader}"`));
        return IGNORE_STREAM;
      }
      if (deadlineMs > MAX_TIMER_MS) deadlineMs = undefined;
    }

    const controller = new AbortController();
    let answered = false;
    const answer = (fields: HeaderField[], body?: Buffer, trailers?: HeaderField[]): void => {
      if (answered) return;
      answered = true;
      clearTimeout(deadline);
      reply(fields, body, trailers);
    };
    const deadline =
      deadlineMs === undefined
        ? undefined
        : setTimeout(() => {
            controller.abort();
            answer(statusHeaders(status.DEADLINE_EXCEEDED, `the call's deadline of ${deadlineMs} ms passed`));
          }, deadlineMs);

    const chunks: Buffer[] = [];
    let received = 0;
    let headerChecked = false;
    let ended = false;
    const refuseTooLarge = (): void => {
      chunks.length = 0;
      answer(statusHeaders(status.RESOURCE_EXHAUSTED, `the request is larger than ${MAX_REQUEST_BYTES} bytes`));
    };
    const onEnd = (): void => {
      if (answered || ended) return;
      ended = true;
      const body = Buffer.concat(chunks, received);
      chunks.length = 0;
      const message = singleMessage(body);
      if (typeof message === 'string') return answer(statusHeaders(message === COMPRESSED ? status.UNIMPLEMENTED : status.INTERNAL, message));
      let request: unknown;
      try {
        request = method.deserialize(message);
      } catch (err) {
        return answer(statusHeaders(status.INTERNAL, `the ${method.name} request does not decode: ${errorMessage(err)}`));
      }
      // Through a promise, so a handler that throws before its first await fails only its call.
      // A caller that reset the stream in the same read (a "rapid reset") gets no handler run.
      Promise.resolve()
        .then(() => (answered ? undefined : method.handler(request, controller.signal)))
        .then(
          (response) => {
            let payload: Buffer;
            try {
              payload = method.serialize(response);
            } catch (err) {
              return answer(statusHeaders(status.INTERNAL, `internal error in ${method.name}: the response does not encode: ${errorMessage(err)}`));
            }
            answer(RESPONSE_HEADERS, framed(payload), [['grpc-status', String(status.OK)]]);
          },
          (err: unknown) => {
            const failure =
              err instanceof DriverError ? err : new DriverError(status.INTERNAL, `internal error in ${method.name}: ${errorMessage(err)}`);
            answer(statusHeaders(failure.code, failure.message));
          },
        );
    };
    if (endStream) onEnd();
    return {
      onHeaders: (_trailers, end) => {
        if (end) onEnd();
      },
      onData: (chunk) => {
        if (answered) return;
        received += chunk.length;
        chunks.push(chunk);
        // The message header declares the length: a request that cannot fit is refused before it is read.
        if (!headerChecked && received >= GRPC_HEADER_BYTES) {
          headerChecked = true;
          const header = chunks.length === 1 ? chunk : Buffer.concat(chunks, received);
          if (header.readUInt32BE(1) > MAX_REQUEST_BYTES) return refuseTooLarge();
        }
        if (received > GRPC_HEADER_BYTES + MAX_REQUEST_BYTES) refuseTooLarge();
      },
      onEnd,
      onClose: () => {
        clearTimeout(deadline);
        // Closed before an answer: the caller went away (reset, cancel, lost connection).
        if (!answered) {
          answered = true;
          controller.abort();
        }
      },
    };
  }
}

const COMPRESSED = 'the request is compressed, and this server takes identity encoding only (grpc-accept-encoding)';

/** The one message of a unary request's body, or why there is not exactly one. */
function singleMessage(body: Buffer): Buffer | string {
  if (body.length < GRPC_HEADER_BYTES) return body.length === 0 ? 'the request carries no message' : 'the request ends inside a message header';
  if (body[0] !== 0) return COMPRESSED;
  const length = body.readUInt32BE(1);
  if (body.length < GRPC_HEADER_BYTES + length) return 'the request ends inside its message';
  if (body.length > GRPC_HEADER_BYTES + length) return 'the request carries more than one message; these methods are unary';
  return body.subarray(GRPC_HEADER_BYTES);
}

const TIMEOUT_UNIT_MS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 };

/** grpc-timeout: at most 8 digits and a unit (PROTOCOL-HTTP2.md), in whole milliseconds. */
function parseGrpcTimeout(value: string): number | undefined {
  const match = /^(\d{1,8})([HMSmun])$/.exec(value);
  if (match === null) return undefined;
  return Math.ceil(Number(match[1]) * (TIMEOUT_UNIT_MS[match[2] as string] as number));
}

const RESPONSE_HEADERS: HeaderField[] = [
  [':status', '200'],
  ['content-type', 'application/grpc'],
  ['grpc-accept-encoding', 'identity'],
];

/** A trailers-only response: the status in the one header block, no message. */
function statusHeaders(code: status, message: string): HeaderField[] {
  return [...RESPONSE_HEADERS, ['grpc-status', String(code)], ['grpc-message', encodeGrpcMessage(message)]];
}

/** The message with gRPC's 5-byte prefix: uncompressed, and its length. */
function framed(payload: Buffer): Buffer {
  const bytes = Buffer.allocUnsafe(GRPC_HEADER_BYTES + payload.length);
  bytes[0] = 0;
  bytes.writeUInt32BE(payload.length, 1);
  payload.copy(bytes, GRPC_HEADER_BYTES);
  return bytes;
}

/** grpc-message is percent-encoded UTF-8: every byte outside 0x20-0x7E, and "%" itself. */
export function encodeGrpcMessage(message: string): string {
  let encoded = '';
  for (const byte of Buffer.from(message, 'utf8')) {
    encoded += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return encoded;
}
