/**
 * The client side of an HTTP/2 connection (src/http2/connection.ts) on a unix
 * socket: streams that send one request (headers and a body) and receive the
 * answer. Streams beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS wait
 * for a slot; stream ids are odd and rise, and once they run out the
 * connection takes no new streams (its owner opens another).
 */
import net from 'node:net';
import { Http2Connection, Http2Stream, HeaderBlock, ConnectionError, type StreamHandler } from './connection.js';
import { ErrorCode, MAX_STREAM_ID } from './frames.js';
import { encodeRequestHeaders, type HeaderField } from './hpack.js';

export type { ReceivedHeaders, StreamHandler } from './connection.js';
export { Http2Stream } from './connection.js';

export interface ClientConnectionOptions {
  socketPath: string;
  /** The header list size announced and enforced (SETTINGS_MAX_HEADER_LIST_SIZE). */
  maxHeaderListBytes: number;
  /** How reasons name the server. Default "the server". */
  peerName?: string;
  onConnect(): void;
  /** A socket error, before or after connecting. */
  onError(err: Error): void;
  /** The server sent GOAWAY: no new streams; the ones it named may finish. */
  onGoaway(code: number): void;
  /** Once, when the socket is gone. */
  onClose(): void;
}

export class ClientConnection extends Http2Connection {
  private nextStreamId = 1;
  /** Streams waiting for the server's concurrent stream limit. */
  private readonly waiting: Http2Stream[] = [];

  constructor(options: ClientConnectionOptions) {
    const socket = net.connect(options.socketPath);
    super(socket, 'client', {
      maxHeaderListBytes: options.maxHeaderListBytes,
      peerName: options.peerName ?? 'the server',
      onError: (err) => options.onError(err),
      onGoaway: (code) => options.onGoaway(code),
      onClose: () => options.onClose(),
    });
    socket.once('connect', () => options.onConnect());
  }

  /**
   * Opens a stream with `fields` (after :method POST and :scheme http) and
   * sends `body` with END_STREAM. Throws when the connection takes no new
   * streams.
   */
  request(fields: readonly HeaderField[], body: Buffer, handler: StreamHandler): Http2Stream {
    if (this.gone) throw new Error(this.lostBecause ?? 'the connection takes no new streams');
    const stream = new Http2Stream(handler);
    stream.enqueue(new HeaderBlock(encodeRequestHeaders(fields)), false);
    stream.enqueue(body, true);
    this.waiting.push(stream);
    this.openWaiting();
    return stream;
  }

  protected override onUnknownStreamHeaders(streamId: number): void {
    throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `${this.options.peerName} sent HEADERS on stream ${streamId}, which was never opened`);
  }

  protected override isClosedStreamId(streamId: number): boolean {
    return streamId % 2 === 1 && streamId < this.nextStreamId;
  }

  protected override onClosing(): void {
    for (const stream of this.waiting.splice(0)) this.closeStream(stream, ErrorCode.REFUSED_STREAM);
  }

  protected override onStreamClosed(stream?: Http2Stream): void {
    // A stream cancelled while it waited for a slot leaves the queue now.
    if (stream?.id === 0) {
      const index = this.waiting.indexOf(stream);
      if (index >= 0) this.waiting.splice(index, 1);
    }
    this.openWaiting();
  }

  protected override hasWaitingStreams(): boolean {
    return this.waiting.length > 0;
  }

  private openWaiting(): void {
    while (this.waiting.length > 0 && this.streams.size < this.peerMaxStreams && !this.socketGone && !this.closing) {
      if (this.nextStreamId > MAX_STREAM_ID) {
        // Stream ids are spent: this connection takes no more (the client opens a new one).
        this.lostBecause ??= 'the connection has used all its stream ids';
        this.close();
        return;
      }
      const stream = this.waiting.shift() as Http2Stream;
      if (stream.closed) continue;
      stream.id = this.nextStreamId;
      this.nextStreamId += 2;
      stream.sendWindow = this.peerInitialWindow;
      this.streams.set(stream.id, stream);
      this.flushStream(stream);
    }
  }
}
