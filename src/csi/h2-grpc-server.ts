/**
 * The driver's gRPC server for kubelet: gRPC's wire protocol
 * (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md) spoken
 * directly over a node:http2 server, for unary calls only, which is all CSI's
 * Identity and Node services have.
 *
 * Why not grpc-js's server: memory and start-up. grpc-js was the last user of
 * a package whose code (channels, resolvers, load balancers, the client) the
 * driver loaded and kept for the sake of a handful of unary methods; without it
 * an idle driver holds ~1.4 MiB less and compiles less at start (README
 * "Benchmarks"). The agent side already speaks the protocol directly
 * (src/spire/h2-grpc-client.ts).
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
import http2 from 'node:http2';
import { DriverError, errorMessage } from '../errors.js';
import { status } from '../grpc-status.js';

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

interface Method {
  name: string;
  deserialize(bytes: Buffer): unknown;
  serialize(response: unknown): Buffer;
  handler: UnaryMethodHandler;
}

export class H2GrpcServer {
  private readonly server: http2.Http2Server;
  private readonly methods = new Map<string, Method>();
  private readonly sessions = new Set<http2.ServerHttp2Session>();

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
    // Node's limit on a session's buffers (10 MB by default) refuses new
    // streams with ENHANCE_YOUR_CALM once exceeded, which would fail kubelet's
    // calls for the whole connection; grpc-js's server lifts it entirely. Each
    // call is bounded by MAX_REQUEST_BYTES, and the socket is root's alone.
    this.server = http2.createServer({ maxSessionMemory: 1024 });
    this.server.on('session', (session) => {
      this.sessions.add(session);
      session.on('close', () => this.sessions.delete(session));
      // A broken connection fails only its calls; their signals abort via 'close'.
      session.on('error', () => undefined);
    });
    this.server.on('stream', (stream, headers) => this.onStream(stream, headers));
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
   * session gets a GOAWAY) for up to 5 s, then cuts what is left.
   */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const session of this.sessions) session.close();
    const force = setTimeout(() => {
      for (const session of this.sessions) session.destroy();
    }, SHUTDOWN_GRACE_MS);
    await closed;
    clearTimeout(force);
  }

  private onStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    // A caller's reset or a lost connection; the call's signal learns of it from 'close'.
    stream.on('error', () => undefined);
    if (headers[':method'] !== 'POST') return respondHttpStatus(stream, 405);
    const contentType = headers['content-type'];
    if (typeof contentType !== 'string' || !/^application\/grpc(?:$|[+;])/.test(contentType)) return respondHttpStatus(stream, 415);
    const path = headers[':path'] ?? '';
    const method = this.methods.get(path);
    if (method === undefined) return sendStatus(stream, status.UNIMPLEMENTED, `the driver does not serve the method ${path}`);
    let deadlineMs: number | undefined;
    if (headers['grpc-timeout'] !== undefined) {
      deadlineMs = parseGrpcTimeout(String(headers['grpc-timeout']));
      if (deadlineMs === undefined) return sendStatus(stream, status.INTERNAL, `malformed grpc-timeout "${String(headers['grpc-timeout'])}"`);
      if (deadlineMs > MAX_TIMER_MS) deadlineMs = undefined;
    }

    const controller = new AbortController();
    let answered = false;
    const answer = (send: () => void): void => {
      if (answered) return;
      answered = true;
      clearTimeout(deadline);
      send();
    };
    const deadline =
      deadlineMs === undefined
        ? undefined
        : setTimeout(() => {
            controller.abort();
            answer(() => sendStatus(stream, status.DEADLINE_EXCEEDED, `the call's deadline of ${deadlineMs} ms passed`));
          }, deadlineMs);
    stream.on('close', () => {
      clearTimeout(deadline);
      // Closed before an answer: the caller went away (reset, cancel, lost connection).
      if (!answered) {
        answered = true;
        controller.abort();
      }
    });

    const chunks: Buffer[] = [];
    let received = 0;
    let headerChecked = false;
    const refuseTooLarge = (): void => {
      chunks.length = 0;
      answer(() => sendStatus(stream, status.RESOURCE_EXHAUSTED, `the request is larger than ${MAX_REQUEST_BYTES} bytes`));
    };
    stream.on('data', (chunk: Buffer) => {
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
    });
    stream.on('end', () => {
      if (answered) return;
      const body = Buffer.concat(chunks, received);
      chunks.length = 0;
      const message = singleMessage(body);
      if (typeof message === 'string')
        return answer(() => sendStatus(stream, message === COMPRESSED ? status.UNIMPLEMENTED : status.INTERNAL, message));
      let request: unknown;
      try {
        request = method.deserialize(message);
      } catch (err) {
        return answer(() => sendStatus(stream, status.INTERNAL, `the ${method.name} request does not decode: ${errorMessage(err)}`));
      }
      // Through a promise, so a handler that throws before its first await fails only its call.
      Promise.resolve()
        .then(() => method.handler(request, controller.signal))
        .then(
          (response) => {
            let payload: Buffer;
            try {
              payload = method.serialize(response);
            } catch (err) {
              return answer(() =>
                sendStatus(stream, status.INTERNAL, `internal error in ${method.name}: the response does not encode: ${errorMessage(err)}`),
              );
            }
            answer(() => sendMessage(stream, payload));
          },
          (err: unknown) => {
            const failure =
              err instanceof DriverError ? err : new DriverError(status.INTERNAL, `internal error in ${method.name}: ${errorMessage(err)}`);
            answer(() => sendStatus(stream, failure.code, failure.message));
          },
        );
    });
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

function respondHttpStatus(stream: http2.ServerHttp2Stream, httpStatus: number): void {
  if (stream.destroyed || stream.headersSent) return;
  stream.respond({ ':status': httpStatus }, { endStream: true });
}

function sendMessage(stream: http2.ServerHttp2Stream, payload: Buffer): void {
  if (stream.destroyed || stream.headersSent) return;
  const framed = Buffer.allocUnsafe(GRPC_HEADER_BYTES + payload.length);
  framed[0] = 0;
  framed.writeUInt32BE(payload.length, 1);
  payload.copy(framed, GRPC_HEADER_BYTES);
  stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-accept-encoding': 'identity' }, { waitForTrailers: true });
  stream.once('wantTrailers', () => stream.sendTrailers({ 'grpc-status': String(status.OK) }));
  stream.end(framed);
}

/** A trailers-only response: the status in the one header block, no message. */
function sendStatus(stream: http2.ServerHttp2Stream, code: status, message: string): void {
  if (stream.destroyed || stream.headersSent) return;
  stream.respond(
    {
      ':status': 200,
      'content-type': 'application/grpc',
      'grpc-accept-encoding': 'identity',
      'grpc-status': String(code),
      'grpc-message': encodeGrpcMessage(message),
    },
    { endStream: true },
  );
}

/** grpc-message is percent-encoded UTF-8: every byte outside 0x20-0x7E, and "%" itself. */
export function encodeGrpcMessage(message: string): string {
  let encoded = '';
  for (const byte of Buffer.from(message, 'utf8')) {
    encoded += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return encoded;
}
