/**
 * One HTTP/2 connection (https://www.rfc-editor.org/rfc/rfc9113) over a unix
 * socket, as much of it as gRPC needs, for either side: the agent's calls
 * (src/http2/client-connection.ts) and kubelet's (src/http2/server-connection.ts).
 * Streams carry one request and one response: header blocks, data and
 * trailers; flow control both ways; SETTINGS, PING, GOAWAY and RST_STREAM.
 *
 * Why not node:http2: memory. The driver keeps one stream open to the SPIRE
 * agent per volume for the volume's whole life, and each of node:http2's
 * streams is a Duplex with its readable and writable states, a header
 * dictionary kept per request, a C++ Http2Stream and nghttp2's own stream:
 * ~8 KiB of RSS each, measured with 500 streams against one server. A stream
 * here is one small object (Http2Stream) in a Map. And a process that never
 * loads node:http2 is ~2.4 MiB smaller (its JavaScript, nghttp2, and the
 * binary's pages they touch; README "Benchmarks").
 *
 * What this side sends: a client its preface; both SETTINGS (no push, our
 * header list limit), a connection window raised to CONNECTION_WINDOW, header
 * blocks as literals (src/http2/hpack.ts), DATA within the peer's windows,
 * WINDOW_UPDATEs as received data is consumed, PING and its answers,
 * RST_STREAM, and GOAWAY when it closes. A frame the peer should not have
 * sent is a connection error (section 5.4.1): GOAWAY with the code, every
 * open stream closed, the socket destroyed; `lostBecause` says what the peer
 * did.
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
  MAX_WINDOW,
  MIN_MAX_FRAME_SIZE,
  rstStreamFrame,
  Setting,
  settingsFrame,
  windowUpdateFrame,
} from './frames.js';
import { type HeaderField, HpackDecoder, HpackError } from './hpack.js';

/** Received header fields by name; a name sent more than once has its values joined with ", ". */
export type ReceivedHeaders = Record<string, string>;

/** What a stream reports, in order: header blocks and data as they come, then close once. */
export interface StreamHandler {
  /**
   * A header block: a client's first is the response (informational 1xx
   * blocks are skipped), a server's first the request; a second one is the
   * trailers. `endStream`: the peer's side ends with it.
   */
  onHeaders(headers: ReceivedHeaders, endStream: boolean): void;
  onData(chunk: Buffer): void;
  /** The peer's side ended (END_STREAM) after data, with no trailers. */
  onEnd?(): void;
  /**
   * The stream is over: NO_ERROR when both sides ended it, else the
   * RST_STREAM code (the peer's, or this side's from reset()), or
   * INTERNAL_ERROR / REFUSED_STREAM when the connection went (check
   * `lostBecause`). `reason` says what the peer did wrong when this side
   * reset the stream for it.
   */
  onClose(code: number, reason?: string): void;
}

export interface Http2ConnectionOptions {
  /** The header list size announced and enforced (SETTINGS_MAX_HEADER_LIST_SIZE). */
  maxHeaderListBytes: number;
  /** "the agent" or "the caller": how `lostBecause` names the peer. */
  peerName: string;
  /** A server's SETTINGS_MAX_CONCURRENT_STREAMS; none is announced without it. */
  maxConcurrentStreams?: number;
  /** A socket error. */
  onError?(err: Error): void;
  /** The peer sent GOAWAY: no new streams; the ones it named may finish. */
  onGoaway?(code: number): void;
  /** Once, when the socket is gone. */
  onClose?(): void;
}

/** The connection window this side grants at once: replies to 500 streams need not wait for WINDOW_UPDATEs. */
const CONNECTION_WINDOW = 4 * 1024 * 1024;
/** A stream's receive window: HTTP/2's default, so SETTINGS need not change it. */
const STREAM_WINDOW = DEFAULT_WINDOW;
/** A header block (compressed, HEADERS plus CONTINUATIONs) may be at most this large, and span at most this many frames. */
const MAX_HEADER_BLOCK_BYTES = 64 * 1024;
const MAX_HEADER_BLOCK_FRAMES = 128;
/**
 * A peer that sends PINGs or SETTINGS and does not read the answers
 * (CVE-2019-9512, -9515): once this much waits unwritten, the next answer
 * ends the connection instead. Data is not checked: the peer's windows bound it.
 */
const MAX_UNWRITTEN_BYTES = 4 * 1024 * 1024;

const EMPTY = Buffer.alloc(0);

/** One stream. The connection owns it; the handler sees only its callbacks. */
export class Http2Stream {
  id = 0;
  /** Header blocks and data queued to send, in order, while flow control (or a client's wait for a stream slot) holds them. */
  private queue: (Buffer | HeaderBlock)[] | undefined;
  /** This side's END_STREAM goes with the last queued item. */
  endQueued = false;
  sendWindow = DEFAULT_WINDOW;
  /** Bytes received and consumed since the last WINDOW_UPDATE for this stream. */
  unacknowledged = 0;
  headerBlocksReceived = 0;
  localEnded = false;
  remoteEnded = false;
  closed = false;

  constructor(public handler: StreamHandler) {}

  /** Queues `item`; END_STREAM with it when `end`. Small Buffers are slices of Node.js's shared 8 KiB pool: none is kept after it is sent. */
  enqueue(item: Buffer | HeaderBlock, end: boolean): void {
    (this.queue ??= []).push(item);
    if (end) this.endQueued = true;
  }

  takeQueue(): (Buffer | HeaderBlock)[] | undefined {
    const queue = this.queue;
    this.queue = undefined;
    return queue;
  }

  requeue(items: (Buffer | HeaderBlock)[]): void {
    this.queue = items.length > 0 ? items : undefined;
  }
}

/** An encoded header block waiting to be sent (distinguished from DATA bytes in a stream's queue). */
export class HeaderBlock {
  constructor(readonly bytes: Buffer) {}
}

export class ConnectionError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

export abstract class Http2Connection {
  protected readonly decoder: HpackDecoder;
  protected readonly streams = new Map<number, Http2Stream>();
  private readonly blocked = new Set<Http2Stream>();
  private outgoing: Buffer[] = [];
  private flushScheduled = false;
  /** Received bytes not yet a whole frame. */
  private inbound: Buffer[] = [];
  private inboundBytes = 0;
  /** A server's bytes of the client preface still to come. */
  private prefaceBytesExpected: number;
  /** A header block in progress: its stream, flags of the HEADERS frame, and fragments. */
  private headerBlock: { streamId: number; endStream: boolean; fragments: Buffer[]; bytes: number; frames: number } | undefined;
  protected peerMaxFrameSize = MIN_MAX_FRAME_SIZE;
  protected peerInitialWindow = DEFAULT_WINDOW;
  protected peerMaxStreams = Infinity;
  private connectionSendWindow = DEFAULT_WINDOW;
  private connectionUnacknowledged = 0;
  private readonly pings = new Map<string, (err?: Error) => void>();
  private pingCounter = 0n;
  /** No new streams: close() was called, the peer sent GOAWAY, or stream ids ran out. */
  protected closing = false;
  /** The socket is ending, its GOAWAY sent. */
  private ending = false;
  private goawaySent = false;
  protected socketGone = false;
  /** Why the connection went, when this side knows better than "closed". */
  lostBecause: string | undefined;

  constructor(
    protected readonly socket: net.Socket,
    private readonly role: 'client' | 'server',
    protected readonly options: Http2ConnectionOptions,
  ) {
    this.decoder = new HpackDecoder({ maxTableSize: 4096, maxHeaderListSize: options.maxHeaderListBytes });
    this.prefaceBytesExpected = role === 'server' ? CLIENT_PREFACE.length : 0;
    if (role === 'client') this.send(CLIENT_PREFACE);
    const settings: [number, number][] = [
      [Setting.ENABLE_PUSH, 0],
      [Setting.MAX_HEADER_LIST_SIZE, options.maxHeaderListBytes],
    ];
    if (options.maxConcurrentStreams !== undefined) settings.push([Setting.MAX_CONCURRENT_STREAMS, options.maxConcurrentStreams]);
    this.send(settingsFrame(settings));
    this.send(windowUpdateFrame(0, CONNECTION_WINDOW - DEFAULT_WINDOW));
    socket.on('data', (chunk: Buffer) => this.onSocketData(chunk));
    socket.on('error', (err: Error) => {
      this.lostBecause ??= `the connection to ${options.peerName} failed: ${err.message}`;
      options.onError?.(err);
    });
    // The peer closed its side: nothing more will arrive.
    socket.on('end', () => {
      this.lostBecause ??= `${options.peerName} closed the connection`;
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

  /** Ends a stream from this side with RST_STREAM `code`; the handler's onClose follows on the next tick. */
  reset(stream: Http2Stream, code: number): void {
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
    this.onClosing();
    // The GOAWAY goes now, so the peer opens no more streams while the open ones finish.
    this.sendGoaway();
    this.closeIfIdle();
  }

  /** Closes the socket now; every open stream ends (onClose with INTERNAL_ERROR). `reason` replaces `lostBecause`. */
  destroy(reason?: string): void {
    if (reason !== undefined && !this.socketGone) this.lostBecause = reason;
    this.socket.destroy();
    this.teardown();
  }

  // ---- what each side does differently

  /** A header block for a stream id that is not open: a server's new request, or an error. */
  protected abstract onUnknownStreamHeaders(streamId: number, headers: ReceivedHeaders, endStream: boolean): void;
  /** Whether a frame for `streamId`, not open, is for a stream that has closed (it is dropped) rather than one never opened (an error). */
  protected abstract isClosedStreamId(streamId: number): boolean;
  /** close() was called: what the side does with streams not yet started. */
  protected onClosing(): void {}
  /** A stream has closed (or, with none, the limits may have changed): a client starts one that waits for a slot. */
  protected onStreamClosed(stream?: Http2Stream): void {
    void stream;
  }
  /** The last stream id this side processed from the peer, for its own GOAWAY. */
  protected lastPeerStreamId(): number {
    return 0;
  }

  // ---- sending

  protected send(bytes: Buffer): void {
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
      if (this.socketGone || chunks.length === 0) return;
      this.socket.write(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks));
    });
  }

  /** An answer to the peer's PING or SETTINGS; refused to a peer that leaves too much unread. */
  private sendAnswer(bytes: Buffer): void {
    if (this.socket.writableLength > MAX_UNWRITTEN_BYTES) {
      throw new ConnectionError(
        ErrorCode.ENHANCE_YOUR_CALM,
        `${this.options.peerName} does not read the answers to its PINGs and SETTINGS (over ${MAX_UNWRITTEN_BYTES} bytes unwritten)`,
      );
    }
    this.send(bytes);
  }

  /**
   * Sends what the windows allow of the stream's queue: header blocks whole
   * (HEADERS, then CONTINUATIONs), data in frames the peer takes, END_STREAM
   * with the last item. When this side has ended and the peer has too, the
   * stream closes; a server that answered before the request ended tells the
   * client to stop with RST_STREAM NO_ERROR (section 8.1).
   */
  protected flushStream(stream: Http2Stream): void {
    const queue = stream.takeQueue();
    if (queue === undefined || stream.closed || stream.id === 0) {
      if (queue !== undefined && !stream.closed) stream.requeue(queue);
      return;
    }
    while (queue.length > 0) {
      const item = queue[0] as Buffer | HeaderBlock;
      const last = queue.length === 1 && stream.endQueued;
      if (item instanceof HeaderBlock) {
        this.sendHeaderBlock(stream.id, item.bytes, last);
        queue.shift();
        continue;
      }
      // A window may be negative: the peer lowered SETTINGS_INITIAL_WINDOW_SIZE after data went (section 6.9.2).
      const room = Math.max(0, Math.min(this.peerMaxFrameSize, stream.sendWindow, this.connectionSendWindow, item.length));
      if (room === 0 && item.length > 0) break;
      const whole = room === item.length;
      this.send(frame(FrameType.DATA, whole && last ? Flag.END_STREAM : 0, stream.id, item.subarray(0, room)));
      stream.sendWindow -= room;
      this.connectionSendWindow -= room;
      if (whole) queue.shift();
      else queue[0] = item.subarray(room);
    }
    stream.requeue(queue);
    if (queue.length > 0) {
      this.blocked.add(stream);
      return;
    }
    this.blocked.delete(stream);
    if (!stream.endQueued) return;
    stream.localEnded = true;
    if (stream.remoteEnded) {
      this.closeStream(stream, ErrorCode.NO_ERROR);
    } else if (this.role === 'server') {
      this.send(rstStreamFrame(stream.id, ErrorCode.NO_ERROR));
      this.closeStream(stream, ErrorCode.NO_ERROR);
    }
  }

  private sendHeaderBlock(streamId: number, block: Buffer, endStream: boolean): void {
    let offset = 0;
    do {
      const end = Math.min(block.length, offset + this.peerMaxFrameSize);
      const type = offset === 0 ? FrameType.HEADERS : FrameType.CONTINUATION;
      const flags = (end === block.length ? Flag.END_HEADERS : 0) | (offset === 0 && endStream ? Flag.END_STREAM : 0);
      this.send(frame(type, flags, streamId, block.subarray(offset, end)));
      offset = end;
    } while (offset < block.length);
  }

  /** Streams with output the windows hold back: the only ones a window's growth concerns. */
  private flushBlockedStreams(): void {
    for (const stream of [...this.blocked]) {
      if (this.connectionSendWindow <= 0) return;
      this.flushStream(stream);
    }
  }

  // ---- receiving

  private onSocketData(chunk: Buffer): void {
    if (this.socketGone) return;
    this.inbound.push(chunk);
    this.inboundBytes += chunk.length;
    try {
      if (this.prefaceBytesExpected > 0) {
        const n = Math.min(this.prefaceBytesExpected, this.inboundBytes);
        const offset = CLIENT_PREFACE.length - this.prefaceBytesExpected;
        if (!this.consume(n).equals(CLIENT_PREFACE.subarray(offset, offset + n))) {
          throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `${this.options.peerName} did not start with the HTTP/2 client preface`);
        }
        this.prefaceBytesExpected -= n;
        if (this.prefaceBytesExpected > 0) return;
      }
      while (this.inboundBytes >= FRAME_HEADER_BYTES && !this.socketGone) {
        const header = this.peek(FRAME_HEADER_BYTES);
        const length = header.readUIntBE(0, 3);
        // This side announced no SETTINGS_MAX_FRAME_SIZE, so the default holds (section 4.2).
        if (length > MIN_MAX_FRAME_SIZE) {
          throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, `${this.options.peerName} sent a ${length}-byte frame, over the 16384 allowed`);
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
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `${this.options.peerName} interrupted a header block with another frame`);
    }
    switch (type) {
      case FrameType.DATA:
        this.onDataFrame(flags, streamId, payload);
        return;
      case FrameType.HEADERS:
        this.onHeadersFrame(flags, streamId, payload);
        return;
      case FrameType.CONTINUATION:
        if (this.headerBlock === undefined)
          throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `${this.options.peerName} sent CONTINUATION without HEADERS`);
        this.addHeaderFragment(flags, payload);
        return;
      case FrameType.PRIORITY:
        if (streamId === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `${this.options.peerName} sent PRIORITY on stream 0`);
        return;
      case FrameType.RST_STREAM:
        this.onRstStream(streamId, payload);
        return;
      case FrameType.SETTINGS:
        this.onSettings(flags, streamId, payload);
        return;
      case FrameType.PUSH_PROMISE:
        throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `${this.options.peerName} sent PUSH_PROMISE, which the driver disabled`);
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
   * frames may still be in flight). Frames for streams never opened are a
   * connection error.
   */
  private streamFor(streamId: number, what: string): Http2Stream | undefined {
    if (streamId === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `${this.options.peerName} sent ${what} on stream 0`);
    const stream = this.streams.get(streamId);
    if (stream !== undefined) return stream;
    if (!this.isClosedStreamId(streamId)) {
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `${this.options.peerName} sent ${what} on stream ${streamId}, which was never opened`);
    }
    return undefined;
  }

  /** The payload without its padding (PADDED flag: a length byte first, that many bytes at the end). */
  private unpadded(flags: number, payload: Buffer, what: string): Buffer {
    if ((flags & Flag.PADDED) === 0) return payload;
    const padLength = payload[0];
    if (padLength === undefined || padLength >= payload.length) {
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `${this.options.peerName} sent ${what} with more padding than payload`);
    }
    return payload.subarray(1, payload.length - padLength);
  }

  private onDataFrame(flags: number, streamId: number, payload: Buffer): void {
    const stream = this.streamFor(streamId, 'DATA');
    // The whole frame counts against the windows, padding included (section
    // 6.9.1). Data is consumed as it arrives (a gRPC call holds at most one
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
    if (stream.headerBlocksReceived === 0) {
      this.streamError(stream, ErrorCode.PROTOCOL_ERROR, `${this.options.peerName} sent DATA before the headers`);
      return;
    }
    if (stream.remoteEnded) {
      this.streamError(stream, ErrorCode.STREAM_CLOSED, `${this.options.peerName} sent DATA after ending the stream`);
      return;
    }
    stream.unacknowledged += payload.length;
    // The end is known before the handler runs: an answer it sends from its callback then closes the stream cleanly.
    const endStream = (flags & Flag.END_STREAM) !== 0;
    if (endStream) stream.remoteEnded = true;
    if (data.length > 0) stream.handler.onData(data);
    if (stream.closed) return;
    if (endStream) {
      this.onRemoteEnd(stream);
      if (!stream.closed) stream.handler.onEnd?.();
    } else if (stream.unacknowledged >= STREAM_WINDOW / 2) {
      this.send(windowUpdateFrame(stream.id, stream.unacknowledged));
      stream.unacknowledged = 0;
    }
  }

  /** The peer ended its side: a client's stream is over (its request went with END_STREAM); a server's waits for its answer. */
  private onRemoteEnd(stream: Http2Stream): void {
    stream.remoteEnded = true;
    if (stream.localEnded) {
      this.closeStream(stream, ErrorCode.NO_ERROR);
    } else if (this.role === 'client') {
      // The answer is complete while the request is still held back by flow
      // control: the rest of it is not wanted, and the server learns so.
      this.send(rstStreamFrame(stream.id, ErrorCode.CANCEL));
      this.closeStream(stream, ErrorCode.NO_ERROR);
    }
  }

  private onHeadersFrame(flags: number, streamId: number, payload: Buffer): void {
    if (streamId === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `${this.options.peerName} sent HEADERS on stream 0`);
    let fragment = this.unpadded(flags, payload, 'HEADERS');
    if ((flags & Flag.PRIORITY) !== 0) {
      if (fragment.length < 5)
        throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, `${this.options.peerName} sent HEADERS too short for its priority`);
      fragment = fragment.subarray(5);
    }
    this.headerBlock = { streamId, endStream: (flags & Flag.END_STREAM) !== 0, fragments: [], bytes: 0, frames: 0 };
    this.addHeaderFragment(flags, fragment);
  }

  private addHeaderFragment(flags: number, fragment: Buffer): void {
    const block = this.headerBlock as NonNullable<typeof this.headerBlock>;
    block.bytes += fragment.length;
    block.frames += 1;
    if (block.bytes > MAX_HEADER_BLOCK_BYTES) {
      throw new ConnectionError(ErrorCode.ENHANCE_YOUR_CALM, `${this.options.peerName} sent a header block over ${MAX_HEADER_BLOCK_BYTES} bytes`);
    }
    if (block.frames > MAX_HEADER_BLOCK_FRAMES) {
      throw new ConnectionError(
        ErrorCode.ENHANCE_YOUR_CALM,
        `${this.options.peerName} sent a header block in over ${MAX_HEADER_BLOCK_FRAMES} frames`,
      );
    }
    if (fragment.length > 0) block.fragments.push(fragment);
    if ((flags & Flag.END_HEADERS) === 0) return;
    this.headerBlock = undefined;
    // Every block is decoded, even one for a closed stream: it may change the
    // dynamic table, which must stay in step with the peer's.
    let fields: HeaderField[];
    try {
      fields = this.decoder.decode(block.fragments.length === 1 ? (block.fragments[0] as Buffer) : Buffer.concat(block.fragments, block.bytes));
    } catch (err) {
      if (!(err instanceof HpackError)) throw err;
      throw new ConnectionError(ErrorCode.COMPRESSION_ERROR, `${this.options.peerName} sent a header block that does not decode: ${err.message}`);
    }
    const headers: ReceivedHeaders = Object.create(null) as ReceivedHeaders;
    for (const [name, value] of fields) headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
    const stream = this.streams.get(block.streamId);
    if (stream === undefined) {
      if (block.streamId === 0 || !this.isClosedStreamId(block.streamId)) {
        this.onUnknownStreamHeaders(block.streamId, headers, block.endStream);
      }
      return;
    }
    if (stream.headerBlocksReceived === 0) {
      const httpStatus = headers[':status'];
      // An informational (1xx) block comes before the response; it carries nothing for gRPC.
      if (httpStatus !== undefined && httpStatus.length === 3 && httpStatus[0] === '1' && !block.endStream) return;
    } else if (!block.endStream || stream.remoteEnded) {
      // Trailers must end the stream (section 8.1), and nothing comes after them.
      this.streamError(stream, ErrorCode.PROTOCOL_ERROR, `${this.options.peerName} sent a second header block that does not end the stream`);
      return;
    }
    stream.headerBlocksReceived += 1;
    if (block.endStream) stream.remoteEnded = true;
    stream.handler.onHeaders(headers, block.endStream);
    if (block.endStream && !stream.closed) this.onRemoteEnd(stream);
  }

  private onRstStream(streamId: number, payload: Buffer): void {
    if (payload.length !== 4) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, `${this.options.peerName} sent RST_STREAM of the wrong size`);
    const stream = this.streamFor(streamId, 'RST_STREAM');
    if (stream !== undefined) this.closeStream(stream, payload.readUInt32BE(0));
  }

  private onSettings(flags: number, streamId: number, payload: Buffer): void {
    const peer = this.options.peerName;
    if (streamId !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `${peer} sent SETTINGS on a stream`);
    if ((flags & Flag.ACK) !== 0) {
      if (payload.length !== 0) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, `${peer} sent a SETTINGS acknowledgement with a payload`);
      return;
    }
    if (payload.length % 6 !== 0) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, `${peer} sent SETTINGS of the wrong size`);
    for (let offset = 0; offset < payload.length; offset += 6) {
      const id = payload.readUInt16BE(offset);
      const value = payload.readUInt32BE(offset + 2);
      switch (id) {
        case Setting.ENABLE_PUSH:
          // Only a client may enable push (section 6.5.2).
          if (value > (this.role === 'server' ? 1 : 0))
            throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `${peer} sent SETTINGS_ENABLE_PUSH ${value}`);
          break;
        case Setting.MAX_CONCURRENT_STREAMS:
          this.peerMaxStreams = value;
          break;
        case Setting.INITIAL_WINDOW_SIZE: {
          if (value > MAX_WINDOW) throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, `${peer} sent SETTINGS_INITIAL_WINDOW_SIZE ${value}`);
          const delta = value - this.peerInitialWindow;
          this.peerInitialWindow = value;
          if (delta === 0) break;
          for (const stream of this.streams.values()) {
            stream.sendWindow += delta;
            if (stream.sendWindow > MAX_WINDOW) throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, 'a stream window grew past 2^31-1');
          }
          break;
        }
        case Setting.MAX_FRAME_SIZE:
          if (value < MIN_MAX_FRAME_SIZE || value > MAX_MAX_FRAME_SIZE) {
            throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `${peer} sent SETTINGS_MAX_FRAME_SIZE ${value}`);
          }
          this.peerMaxFrameSize = value;
          break;
        default:
          // HEADER_TABLE_SIZE: this side never indexes, so any size suits it.
          // MAX_HEADER_LIST_SIZE: requests and answers are a few hundred bytes. Unknown settings are ignored.
          break;
      }
    }
    this.sendAnswer(frame(FrameType.SETTINGS, Flag.ACK, 0));
    this.flushBlockedStreams();
    this.onStreamClosed();
  }

  private onPing(flags: number, streamId: number, payload: Buffer): void {
    if (streamId !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `${this.options.peerName} sent PING on a stream`);
    if (payload.length !== 8) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, `${this.options.peerName} sent PING of the wrong size`);
    if ((flags & Flag.ACK) === 0) {
      this.sendAnswer(frame(FrameType.PING, Flag.ACK, 0, payload));
      return;
    }
    const key = payload.toString('hex');
    const callback = this.pings.get(key);
    this.pings.delete(key);
    callback?.();
  }

  private onGoaway(streamId: number, payload: Buffer): void {
    if (streamId !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `${this.options.peerName} sent GOAWAY on a stream`);
    if (payload.length < 8) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, `${this.options.peerName} sent GOAWAY too short`);
    const lastStreamId = payload.readUInt32BE(0) & 0x7fffffff;
    const code = payload.readUInt32BE(4);
    this.closing = true;
    this.lostBecause ??= `${this.options.peerName} closed the connection (GOAWAY code ${code})`;
    // Streams this side opened past the last one the peer processed never reached it: they end now, and may be retried.
    for (const stream of [...this.streams.values()]) {
      if (this.role === 'client' && stream.id > lastStreamId) this.closeStream(stream, ErrorCode.REFUSED_STREAM);
    }
    this.onClosing();
    this.options.onGoaway?.(code);
    this.closeIfIdle();
  }

  private onWindowUpdate(streamId: number, payload: Buffer): void {
    const peer = this.options.peerName;
    if (payload.length !== 4) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, `${peer} sent WINDOW_UPDATE of the wrong size`);
    const increment = payload.readUInt32BE(0) & 0x7fffffff;
    if (streamId === 0) {
      if (increment === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `${peer} sent a connection WINDOW_UPDATE of 0`);
      this.connectionSendWindow += increment;
      if (this.connectionSendWindow > MAX_WINDOW)
        throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, `${peer} grew the connection window past 2^31-1`);
      this.flushBlockedStreams();
      return;
    }
    const stream = this.streamFor(streamId, 'WINDOW_UPDATE');
    if (stream === undefined) return;
    if (increment === 0) {
      this.streamError(stream, ErrorCode.PROTOCOL_ERROR, `${peer} sent a stream WINDOW_UPDATE of 0`);
      return;
    }
    stream.sendWindow += increment;
    if (stream.sendWindow > MAX_WINDOW) {
      this.streamError(stream, ErrorCode.FLOW_CONTROL_ERROR, `${peer} grew a stream window past 2^31-1`);
      return;
    }
    this.flushStream(stream);
  }

  // ---- endings

  /** A stream error (section 5.4.2): RST_STREAM with `code`, and the stream ends with it and `reason`. */
  protected streamError(stream: Http2Stream, code: number, reason: string): void {
    if (stream.closed) return;
    if (!this.socketGone) this.send(rstStreamFrame(stream.id, code));
    this.closeStream(stream, code, `${reason} (HTTP/2 ${errorCodeName(code)})`);
  }

  protected closeStream(stream: Http2Stream, code: number, reason?: string): void {
    if (stream.closed) return;
    stream.closed = true;
    stream.takeQueue();
    this.blocked.delete(stream);
    if (stream.id !== 0) this.streams.delete(stream.id);
    // As node:http2 does, a stream's close comes after the frame that ended it has been handled.
    process.nextTick(() => stream.handler.onClose(code, reason));
    this.onStreamClosed(stream);
    this.closeIfIdle();
  }

  protected hasWaitingStreams(): boolean {
    return false;
  }

  private closeIfIdle(): void {
    if (!this.closing || this.ending || this.socketGone || this.streams.size > 0 || this.hasWaitingStreams()) return;
    this.ending = true;
    this.sendGoaway();
    process.nextTick(() => {
      if (this.socketGone) return;
      this.socket.end();
      // A peer that never closes its side does not keep the socket.
      setTimeout(() => this.socket.destroy(), 1000).unref();
    });
  }

  private sendGoaway(): void {
    if (this.goawaySent) return;
    this.goawaySent = true;
    this.send(goawayFrame(this.lastPeerStreamId(), ErrorCode.NO_ERROR));
  }

  /**
   * A connection error (section 5.4.1): every stream ends now; the socket
   * goes once the GOAWAY with `code` is written, or after a second if the
   * peer does not read it.
   */
  protected connectionError(code: number, reason: string): void {
    this.lostBecause ??= `${reason} (HTTP/2 ${errorCodeName(code)})`;
    if (this.socketGone) return;
    this.socket.end(goawayFrame(this.lastPeerStreamId(), code));
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.teardown();
  }

  /** Once: no more frames in or out, every stream and ping ends, the owner hears onClose. */
  protected teardown(): void {
    if (this.socketGone) return;
    this.socketGone = true;
    this.closing = true;
    this.lostBecause ??= `the connection to ${this.options.peerName} closed`;
    this.outgoing = [];
    this.inbound = [];
    for (const stream of [...this.streams.values()]) this.closeStream(stream, ErrorCode.INTERNAL_ERROR);
    this.onClosing();
    for (const callback of this.pings.values()) callback(new Error(this.lostBecause));
    this.pings.clear();
    this.options.onClose?.();
  }
}
