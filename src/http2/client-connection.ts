/**
 * The client side of one HTTP/2 connection (https://www.rfc-editor.org/rfc/rfc9113)
 * over a unix socket, as much of it as a gRPC client needs: streams that send
 * one request body and receive headers, data and trailers; flow control both
 * ways; SETTINGS, PING, GOAWAY and RST_STREAM.
 *
 * Why not node:http2's client: memory. The driver keeps one stream open to
 * the SPIRE agent per volume for the volume's whole life, and each of
 * node:http2's streams is a Duplex with its readable and writable states, a
 * header dictionary kept per request, a C++ Http2Stream and nghttp2's own
 * stream: ~8 KiB of RSS each, measured with 500 streams against one server.
 * A stream here is one small object (ClientStream) in a Map. The CSI side is
 * still served by node:http2 (src/csi/h2-grpc-server.ts), whose streams last
 * one call.
 *
 * What this side sends: the preface with SETTINGS (no push; our header list
 * limit), a connection window raised to CONNECTION_WINDOW, each request's
 * HEADERS (literals, src/http2/hpack.ts) and DATA, WINDOW_UPDATEs as received
 * data is consumed, PING and its answers, RST_STREAM to cancel, and GOAWAY
 * when it closes. A frame the server should not have sent is a connection
 * error (section 5.4.1): GOAWAY with the code, the socket destroyed, every
 * open stream closed; `lostBecause` says what the server did.
 */
import net from 'node:net';
import {
  CLIENT_PREFACE,
  DEFAULT_WINDOW,
  ErrorCode,
  errorCodeName,
  Flag,
  frame,
  FRAME_HEADER_BYTES,
  FrameType,
  goawayFrame,
  MAX_MAX_FRAME_SIZE,
  MAX_STREAM_ID,
  MAX_WINDOW,
  MIN_MAX_FRAME_SIZE,
  rstStreamFrame,
  Setting,
  settingsFrame,
  windowUpdateFrame,
} from './frames.js';
import { type HeaderField, HpackDecoder, HpackError, encodeRequestHeaders } from './hpack.js';

/** Received header fields by name; a name sent more than once has its values joined with ", ". */
export type ReceivedHeaders = Record<string, string>;

/** What a stream reports, in order: response headers, data, trailers, then close once. */
export interface StreamHandler {
  /** The first non-informational header block (with END_STREAM too, a trailers-only response). */
  onResponse(headers: ReceivedHeaders): void;
  onData(chunk: Buffer): void;
  /** A second header block, which ends the stream. */
  onTrailers(trailers: ReceivedHeaders): void;
  /**
   * The stream is over: NO_ERROR when the server ended it, else the
   * RST_STREAM code (the server's, or ours from reset()), or REFUSED_STREAM /
   * INTERNAL_ERROR when the connection went (check `lostBecause`). `reason`
   * says what the server did wrong when this side reset the stream for it.
   */
  onClose(code: number, reason?: string): void;
}

export interface ClientConnectionOptions {
  socketPath: string;
  /** The header list size announced and enforced (SETTINGS_MAX_HEADER_LIST_SIZE). */
  maxHeaderListBytes: number;
  onConnect(): void;
  /** A socket error, before or after connecting. */
  onError(err: Error): void;
  /** The server sent GOAWAY: no new streams; the ones it named may finish. */
  onGoaway(code: number): void;
  /** Once, when the socket is gone. */
  onClose(): void;
}

/** The connection window this side grants at once: replies to 500 streams need not wait for WINDOW_UPDATEs. */
const CONNECTION_WINDOW = 4 * 1024 * 1024;
/** A stream's receive window: HTTP/2's default, so SETTINGS need not change it. */
const STREAM_WINDOW = DEFAULT_WINDOW;
/** A header block (compressed, HEADERS plus CONTINUATIONs) may be at most this large. */
const MAX_HEADER_BLOCK_BYTES = 64 * 1024;

const EMPTY = Buffer.alloc(0);

/** One request stream. The connection owns it; the handler sees only its callbacks. */
export class ClientStream {
  id = 0;
  /** The request's remaining bytes, while flow control or the server's stream limit holds them. */
  pendingBody: Buffer | undefined;
  sendWindow: number;
  /** Bytes received and consumed since the last WINDOW_UPDATE for this stream. */
  unacknowledged = 0;
  responded = false;
  closed = false;

  /**
   * The request's encoded headers until they are sent. Neither they nor the
   * body are kept longer: small Buffers are slices of Node.js's shared 8 KiB
   * pool, and one kept for a stream's life would pin a whole pool per stream.
   */
  requestHeaders: Buffer | undefined;

  constructor(
    requestHeaders: Buffer,
    body: Buffer,
    readonly handler: StreamHandler,
    sendWindow: number,
  ) {
    this.requestHeaders = requestHeaders;
    this.pendingBody = body;
    this.sendWindow = sendWindow;
  }
}

class ConnectionError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

export class ClientConnection {
  private readonly socket: net.Socket;
  private readonly decoder: HpackDecoder;
  private readonly streams = new Map<number, ClientStream>();
  /** Streams waiting for the server's concurrent stream limit. */
  private readonly waiting: ClientStream[] = [];
  private nextStreamId = 1;
  private outgoing: Buffer[] = [];
  private flushScheduled = false;
  /** Received bytes not yet a whole frame. */
  private inbound: Buffer[] = [];
  private inboundBytes = 0;
  /** A header block in progress: its stream, flags of the HEADERS frame, and fragments. */
  private headerBlock: { streamId: number; endStream: boolean; fragments: Buffer[]; bytes: number } | undefined;
  private peerMaxFrameSize = MIN_MAX_FRAME_SIZE;
  private peerInitialWindow = DEFAULT_WINDOW;
  private peerMaxStreams = Infinity;
  private connectionSendWindow = DEFAULT_WINDOW;
  private connectionUnacknowledged = 0;
  private readonly pings = new Map<string, (err?: Error) => void>();
  private pingCounter = 0n;
  private connected = false;
  /** No new streams: close() was called, the server sent GOAWAY, or stream ids ran out. */
  private closing = false;
  private socketGone = false;
  /** Why the connection went, when this side knows better than "closed". */
  lostBecause: string | undefined;

  constructor(private readonly options: ClientConnectionOptions) {
    this.decoder = new HpackDecoder({ maxTableSize: 4096, maxHeaderListSize: options.maxHeaderListBytes });
    this.send(CLIENT_PREFACE);
    this.send(
      settingsFrame([
        [Setting.ENABLE_PUSH, 0],
        [Setting.MAX_HEADER_LIST_SIZE, options.maxHeaderListBytes],
      ]),
    );
    this.send(windowUpdateFrame(0, CONNECTION_WINDOW - DEFAULT_WINDOW));
    const socket = net.connect(options.socketPath);
    this.socket = socket;
    socket.once('connect', () => {
      this.connected = true;
      options.onConnect();
    });
    socket.on('data', (chunk: Buffer) => this.onSocketData(chunk));
    socket.on('error', (err: Error) => {
      this.lostBecause ??= this.connected ? `the connection to the agent failed: ${err.message}` : err.message;
      options.onError(err);
    });
    // The server closed its side: nothing more will arrive.
    socket.on('end', () => {
      this.lostBecause ??= 'the agent closed the connection';
      this.destroy();
    });
    socket.on('close', () => this.teardown());
  }

  /** True once the socket is gone, or no new streams may open on it. */
  get gone(): boolean {
    return this.socketGone || this.closing;
  }

  get destroyed(): boolean {
    return this.socketGone;
  }

  /** The event loop need not wait for this connection. */
  unref(): void {
    this.socket.unref();
  }

  /**
   * Opens a stream with `fields` (after :method POST and :scheme http) and
   * sends `body` with END_STREAM. Throws when the connection takes no new
   * streams.
   */
  request(fields: readonly HeaderField[], body: Buffer, handler: StreamHandler): ClientStream {
    if (this.gone) throw new Error(this.lostBecause ?? 'the connection takes no new streams');
    const stream = new ClientStream(encodeRequestHeaders(fields), body, handler, this.peerInitialWindow);
    this.waiting.push(stream);
    this.openWaiting();
    return stream;
  }

  /** Ends a stream from this side with RST_STREAM `code`; the handler's onClose follows on the next tick. */
  reset(stream: ClientStream, code: number): void {
    if (stream.closed) return;
    if (stream.id !== 0 && !this.socketGone) this.send(rstStreamFrame(stream.id, code));
    this.closeStream(stream, code);
  }

  /** Sends a PING; `callback` runs with the answer, or with an error if the connection goes first. */
  ping(callback: (err?: Error) => void): void {
    if (this.socketGone) {
      callback(new Error(this.lostBecause ?? 'the connection is closed'));
      return;
    }
    this.pingCounter += 1n;
    const payload = Buffer.allocUnsafe(8);
    payload.writeBigUInt64BE(this.pingCounter, 0);
    this.pings.set(payload.toString('hex'), callback);
    this.send(frame(FrameType.PING, 0, 0, payload));
  }

  /** No new streams; the socket closes (after a GOAWAY) once the open ones have ended. */
  close(): void {
    this.closing = true;
    for (const stream of this.waiting.splice(0)) this.closeStream(stream, ErrorCode.REFUSED_STREAM);
    this.closeIfIdle();
  }

  /** Closes the socket now; every open stream ends (onClose with INTERNAL_ERROR). `reason` replaces `lostBecause`. */
  destroy(reason?: string): void {
    if (reason !== undefined && !this.socketGone) this.lostBecause = reason;
    this.socket.destroy();
    this.teardown();
  }

  // ---- sending

  private send(bytes: Buffer): void {
    if (this.socketGone) return;
    this.outgoing.push(bytes);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // Everything sent in one turn of the event loop goes in one write: 500
    // streams opening at once are one write, not a thousand.
    process.nextTick(() => {
      this.flushScheduled = false;
      const chunks = this.outgoing;
      this.outgoing = [];
      if (!this.socketGone && chunks.length > 0) this.socket.write(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks));
    });
  }

  private openWaiting(): void {
    while (this.waiting.length > 0 && this.streams.size < this.peerMaxStreams && !this.socketGone) {
      if (this.nextStreamId > MAX_STREAM_ID) {
        // Stream ids are spent: this connection takes no more (the client opens a new one).
        this.closing = true;
        this.lostBecause ??= 'the connection has used all its stream ids';
        for (const stream of this.waiting.splice(0)) this.closeStream(stream, ErrorCode.REFUSED_STREAM);
        return;
      }
      const stream = this.waiting.shift() as ClientStream;
      stream.id = this.nextStreamId;
      this.nextStreamId += 2;
      this.streams.set(stream.id, stream);
      this.sendHeaderBlock(stream);
      this.sendBody(stream);
    }
  }

  private sendHeaderBlock(stream: ClientStream): void {
    const block = stream.requestHeaders as Buffer;
    stream.requestHeaders = undefined;
    let offset = 0;
    do {
      const end = Math.min(block.length, offset + this.peerMaxFrameSize);
      const last = end === block.length;
      const type = offset === 0 ? FrameType.HEADERS : FrameType.CONTINUATION;
      this.send(frame(type, last ? Flag.END_HEADERS : 0, stream.id, block.subarray(offset, end)));
      offset = end;
    } while (offset < block.length);
  }

  /** Sends what the windows allow of a stream's body; END_STREAM with the last of it. */
  private sendBody(stream: ClientStream): void {
    const body = stream.pendingBody;
    if (body === undefined || stream.closed) return;
    let offset = 0;
    do {
      const room = Math.min(this.peerMaxFrameSize, stream.sendWindow, this.connectionSendWindow, body.length - offset);
      if (room <= 0 && body.length > 0) break;
      const end = offset + room;
      const last = end === body.length;
      this.send(frame(FrameType.DATA, last ? Flag.END_STREAM : 0, stream.id, body.subarray(offset, end)));
      stream.sendWindow -= room;
      this.connectionSendWindow -= room;
      offset = end;
    } while (offset < body.length);
    stream.pendingBody = offset === body.length ? undefined : body.subarray(offset);
  }

  private sendPendingBodies(): void {
    for (const stream of this.streams.values()) {
      if (stream.pendingBody !== undefined) this.sendBody(stream);
      if (this.connectionSendWindow <= 0) return;
    }
  }

  // ---- receiving

  private onSocketData(chunk: Buffer): void {
    if (this.socketGone) return;
    this.inbound.push(chunk);
    this.inboundBytes += chunk.length;
    try {
      while (this.inboundBytes >= FRAME_HEADER_BYTES && !this.socketGone) {
        const header = this.peek(FRAME_HEADER_BYTES);
        const length = header.readUIntBE(0, 3);
        // This side announced no SETTINGS_MAX_FRAME_SIZE, so the default holds (section 4.2).
        if (length > MIN_MAX_FRAME_SIZE) {
          throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, `the agent sent a ${length}-byte frame, over the 16384 allowed`);
        }
        if (this.inboundBytes < FRAME_HEADER_BYTES + length) return;
        const type = header[3] as number;
        const flags = header[4] as number;
        const streamId = header.readUInt32BE(5) & 0x7fffffff;
        this.consume(FRAME_HEADER_BYTES);
        const payload = this.consume(length);
        this.onFrame(type, flags, streamId, payload);
      }
    } catch (err) {
      if (!(err instanceof ConnectionError)) throw err;
      this.connectionError(err.code, err.message);
    }
  }

  /** The first `n` received bytes (n <= inboundBytes), as one Buffer: a view, or a copy when they span chunks. */
  private peek(n: number): Buffer {
    if (n === 0) return EMPTY;
    const first = this.inbound[0] as Buffer;
    if (first.length >= n) return first.subarray(0, n);
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    for (const chunk of this.inbound) {
      filled += chunk.copy(out, filled, 0, Math.min(chunk.length, n - filled));
      if (filled === n) break;
    }
    return out;
  }

  /** Removes and returns the first `n` received bytes. */
  private consume(n: number): Buffer {
    const taken = this.peek(n);
    let left = n;
    while (left > 0) {
      const first = this.inbound[0] as Buffer;
      if (first.length <= left) {
        this.inbound.shift();
        left -= first.length;
      } else {
        this.inbound[0] = first.subarray(left);
        left = 0;
      }
    }
    this.inboundBytes -= n;
    return taken;
  }

  private onFrame(type: number, flags: number, streamId: number, payload: Buffer): void {
    if (this.headerBlock !== undefined && (type !== FrameType.CONTINUATION || streamId !== this.headerBlock.streamId)) {
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'the agent interrupted a header block with another frame');
    }
    switch (type) {
      case FrameType.DATA:
        this.onDataFrame(flags, streamId, payload);
        return;
      case FrameType.HEADERS:
        this.onHeadersFrame(flags, streamId, payload);
        return;
      case FrameType.CONTINUATION:
        if (this.headerBlock === undefined) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'the agent sent CONTINUATION without HEADERS');
        this.addHeaderFragment(flags, payload);
        return;
      case FrameType.PRIORITY:
        if (streamId === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'the agent sent PRIORITY on stream 0');
        return;
      case FrameType.RST_STREAM:
        this.onRstStream(streamId, payload);
        return;
      case FrameType.SETTINGS:
        this.onSettings(flags, streamId, payload);
        return;
      case FrameType.PUSH_PROMISE:
        throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'the agent sent PUSH_PROMISE, which the driver disabled');
      case FrameType.PING:
        this.onPing(flags, streamId, payload);
        return;
      case FrameType.GOAWAY:
        this.onGoaway(streamId, payload);
        return;
      case FrameType.WINDOW_UPDATE:
        this.onWindowUpdate(streamId, payload);
        return;
      default:
        // Unknown frame types are ignored (section 4.1).
        return;
    }
  }

  /**
   * The open stream a frame is for, or undefined for one that has closed (its
   * frames may still be in flight). Frames for streams this side never opened
   * are a connection error.
   */
  private streamFor(streamId: number, what: string): ClientStream | undefined {
    if (streamId === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `the agent sent ${what} on stream 0`);
    const stream = this.streams.get(streamId);
    if (stream !== undefined) return stream;
    if (streamId % 2 === 0 || streamId >= this.nextStreamId) {
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `the agent sent ${what} on stream ${streamId}, which the driver never opened`);
    }
    return undefined;
  }

  /** The payload without its padding (PADDED flag: a length byte first, that many bytes at the end). */
  private unpadded(flags: number, payload: Buffer, what: string): Buffer {
    if ((flags & Flag.PADDED) === 0) return payload;
    const padLength = payload[0];
    if (padLength === undefined || padLength >= payload.length) {
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `the agent sent ${what} with more padding than payload`);
    }
    return payload.subarray(1, payload.length - padLength);
  }

  private onDataFrame(flags: number, streamId: number, payload: Buffer): void {
    const stream = this.streamFor(streamId, 'DATA');
    // The whole frame counts against the windows, padding included (section
    // 6.9.1). Data is consumed as it arrives (a call holds at most one
    // message, up to its size limit), so each window is handed back once half
    // of it is used; no frame (16 KiB at most) can then overrun what was
    // granted, and a sender that ignores the windows only sends at the pace
    // this side reads.
    this.connectionUnacknowledged += payload.length;
    if (this.connectionUnacknowledged >= CONNECTION_WINDOW / 2) {
      this.send(windowUpdateFrame(0, this.connectionUnacknowledged));
      this.connectionUnacknowledged = 0;
    }
    const data = this.unpadded(flags, payload, 'DATA');
    if (stream === undefined) return;
    if (!stream.responded) {
      this.streamError(stream, ErrorCode.PROTOCOL_ERROR, 'the agent sent DATA before the response headers');
      return;
    }
    stream.unacknowledged += payload.length;
    if (data.length > 0) stream.handler.onData(data);
    if (stream.closed) return;
    if ((flags & Flag.END_STREAM) !== 0) {
      this.closeStream(stream, ErrorCode.NO_ERROR);
    } else if (stream.unacknowledged >= STREAM_WINDOW / 2) {
      this.send(windowUpdateFrame(stream.id, stream.unacknowledged));
      stream.unacknowledged = 0;
    }
  }

  private onHeadersFrame(flags: number, streamId: number, payload: Buffer): void {
    if (streamId === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'the agent sent HEADERS on stream 0');
    let fragment = this.unpadded(flags, payload, 'HEADERS');
    if ((flags & Flag.PRIORITY) !== 0) {
      if (fragment.length < 5) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'the agent sent HEADERS too short for its priority');
      fragment = fragment.subarray(5);
    }
    this.headerBlock = { streamId, endStream: (flags & Flag.END_STREAM) !== 0, fragments: [], bytes: 0 };
    this.addHeaderFragment(flags, fragment);
  }

  private addHeaderFragment(flags: number, fragment: Buffer): void {
    const block = this.headerBlock as NonNullable<typeof this.headerBlock>;
    block.bytes += fragment.length;
    if (block.bytes > MAX_HEADER_BLOCK_BYTES) {
      throw new ConnectionError(ErrorCode.ENHANCE_YOUR_CALM, `the agent sent a header block over ${MAX_HEADER_BLOCK_BYTES} bytes`);
    }
    block.fragments.push(fragment);
    if ((flags & Flag.END_HEADERS) === 0) return;
    this.headerBlock = undefined;
    // Every block is decoded, even one for a closed stream: it may change the
    // dynamic table, which must stay in step with the server's.
    let fields: HeaderField[];
    try {
      fields = this.decoder.decode(block.fragments.length === 1 ? (block.fragments[0] as Buffer) : Buffer.concat(block.fragments));
    } catch (err) {
      if (!(err instanceof HpackError)) throw err;
      throw new ConnectionError(ErrorCode.COMPRESSION_ERROR, `the agent sent a header block that does not decode: ${err.message}`);
    }
    const stream = this.streamFor(block.streamId, 'HEADERS');
    if (stream === undefined) return;
    const headers: ReceivedHeaders = Object.create(null) as ReceivedHeaders;
    for (const [name, value] of fields) headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
    if (!stream.responded) {
      const httpStatus = headers[':status'];
      // An informational (1xx) block comes before the response; it carries nothing for gRPC.
      if (httpStatus !== undefined && httpStatus.length === 3 && httpStatus[0] === '1' && !block.endStream) return;
      stream.responded = true;
      stream.handler.onResponse(headers);
    } else if (!block.endStream) {
      // Trailers must end the stream (section 8.1).
      this.streamError(stream, ErrorCode.PROTOCOL_ERROR, 'the agent sent a second header block that does not end the stream');
      return;
    } else {
      stream.handler.onTrailers(headers);
    }
    if (block.endStream && !stream.closed) this.closeStream(stream, ErrorCode.NO_ERROR);
  }

  private onRstStream(streamId: number, payload: Buffer): void {
    if (payload.length !== 4) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'the agent sent RST_STREAM of the wrong size');
    const stream = this.streamFor(streamId, 'RST_STREAM');
    if (stream !== undefined) this.closeStream(stream, payload.readUInt32BE(0));
  }

  private onSettings(flags: number, streamId: number, payload: Buffer): void {
    if (streamId !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'the agent sent SETTINGS on a stream');
    if ((flags & Flag.ACK) !== 0) {
      if (payload.length !== 0) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'the agent sent a SETTINGS acknowledgement with a payload');
      return;
    }
    if (payload.length % 6 !== 0) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'the agent sent SETTINGS of the wrong size');
    for (let offset = 0; offset < payload.length; offset += 6) {
      const id = payload.readUInt16BE(offset);
      const value = payload.readUInt32BE(offset + 2);
      switch (id) {
        case Setting.ENABLE_PUSH:
          if (value > 1) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `the agent sent SETTINGS_ENABLE_PUSH ${value}`);
          break;
        case Setting.MAX_CONCURRENT_STREAMS:
          this.peerMaxStreams = value;
          break;
        case Setting.INITIAL_WINDOW_SIZE: {
          if (value > MAX_WINDOW) throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, `the agent sent SETTINGS_INITIAL_WINDOW_SIZE ${value}`);
          const delta = value - this.peerInitialWindow;
          this.peerInitialWindow = value;
          for (const stream of this.streams.values()) {
            stream.sendWindow += delta;
            if (stream.sendWindow > MAX_WINDOW) throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, 'a stream window grew past 2^31-1');
          }
          for (const stream of this.waiting) stream.sendWindow = value;
          break;
        }
        case Setting.MAX_FRAME_SIZE:
          if (value < MIN_MAX_FRAME_SIZE || value > MAX_MAX_FRAME_SIZE) {
            throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `the agent sent SETTINGS_MAX_FRAME_SIZE ${value}`);
          }
          this.peerMaxFrameSize = value;
          break;
        default:
          // HEADER_TABLE_SIZE: this side never indexes, so any size suits it.
          // MAX_HEADER_LIST_SIZE: requests are a few hundred bytes. Unknown settings are ignored.
          break;
      }
    }
    this.send(frame(FrameType.SETTINGS, Flag.ACK, 0));
    this.sendPendingBodies();
    this.openWaiting();
  }

  private onPing(flags: number, streamId: number, payload: Buffer): void {
    if (streamId !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'the agent sent PING on a stream');
    if (payload.length !== 8) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'the agent sent PING of the wrong size');
    if ((flags & Flag.ACK) === 0) {
      this.send(frame(FrameType.PING, Flag.ACK, 0, payload));
      return;
    }
    const key = payload.toString('hex');
    const callback = this.pings.get(key);
    this.pings.delete(key);
    callback?.();
  }

  private onGoaway(streamId: number, payload: Buffer): void {
    if (streamId !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'the agent sent GOAWAY on a stream');
    if (payload.length < 8) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'the agent sent GOAWAY too short');
    const lastStreamId = payload.readUInt32BE(0) & 0x7fffffff;
    const code = payload.readUInt32BE(4);
    this.closing = true;
    this.lostBecause ??= `the agent closed the connection (GOAWAY code ${code})`;
    // Streams past the last one the server processed never reached it: they end now, and may be retried.
    for (const stream of [...this.streams.values()]) if (stream.id > lastStreamId) this.closeStream(stream, ErrorCode.REFUSED_STREAM);
    for (const stream of this.waiting.splice(0)) this.closeStream(stream, ErrorCode.REFUSED_STREAM);
    this.options.onGoaway(code);
    this.closeIfIdle();
  }

  private onWindowUpdate(streamId: number, payload: Buffer): void {
    if (payload.length !== 4) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'the agent sent WINDOW_UPDATE of the wrong size');
    const increment = payload.readUInt32BE(0) & 0x7fffffff;
    if (streamId === 0) {
      if (increment === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'the agent sent a connection WINDOW_UPDATE of 0');
      this.connectionSendWindow += increment;
      if (this.connectionSendWindow > MAX_WINDOW)
        throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, 'the agent grew the connection window past 2^31-1');
      this.sendPendingBodies();
      return;
    }
    const stream = this.streamFor(streamId, 'WINDOW_UPDATE');
    if (stream === undefined) return;
    if (increment === 0) {
      this.streamError(stream, ErrorCode.PROTOCOL_ERROR, 'the agent sent a stream WINDOW_UPDATE of 0');
      return;
    }
    stream.sendWindow += increment;
    if (stream.sendWindow > MAX_WINDOW) {
      this.streamError(stream, ErrorCode.FLOW_CONTROL_ERROR, 'the agent grew a stream window past 2^31-1');
      return;
    }
    this.sendBody(stream);
  }

  // ---- endings

  /** A stream error (section 5.4.2): RST_STREAM with `code`, and the stream ends with it and `reason`. */
  private streamError(stream: ClientStream, code: number, reason: string): void {
    if (stream.closed) return;
    if (!this.socketGone) this.send(rstStreamFrame(stream.id, code));
    this.closeStream(stream, code, `${reason} (HTTP/2 ${errorCodeName(code)})`);
  }

  private closeStream(stream: ClientStream, code: number, reason?: string): void {
    if (stream.closed) return;
    stream.closed = true;
    stream.pendingBody = undefined;
    if (stream.id !== 0) this.streams.delete(stream.id);
    else {
      const index = this.waiting.indexOf(stream);
      if (index >= 0) this.waiting.splice(index, 1);
    }
    // As node:http2 does, a stream's close comes after the frame that ended it has been handled.
    process.nextTick(() => stream.handler.onClose(code, reason));
    this.openWaiting();
    this.closeIfIdle();
  }

  private closeIfIdle(): void {
    if (!this.closing || this.socketGone || this.streams.size > 0 || this.waiting.length > 0) return;
    this.send(goawayFrame(0, ErrorCode.NO_ERROR));
    process.nextTick(() => {
      if (!this.socketGone) this.socket.end();
    });
  }

  /**
   * A connection error (section 5.4.1): every stream ends now; the socket
   * goes once the GOAWAY with `code` is written, or after a second if the
   * server does not read it.
   */
  private connectionError(code: number, reason: string): void {
    this.lostBecause ??= `${reason} (HTTP/2 ${errorCodeName(code)})`;
    if (this.socketGone) return;
    this.socket.end(goawayFrame(0, code));
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.teardown();
  }

  /** Once: no more frames in or out, every stream and ping ends, the owner hears onClose. */
  private teardown(): void {
    if (this.socketGone) return;
    this.socketGone = true;
    this.closing = true;
    this.lostBecause ??= 'the connection to the agent closed';
    this.outgoing = [];
    this.inbound = [];
    for (const stream of [...this.streams.values(), ...this.waiting]) this.closeStream(stream, ErrorCode.INTERNAL_ERROR);
    for (const callback of this.pings.values()) callback(new Error(this.lostBecause));
    this.pings.clear();
    this.options.onClose();
  }
}
