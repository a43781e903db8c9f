/**
 * The server side of an HTTP/2 connection (src/http2/connection.ts) on an
 * accepted socket: the client's preface first, then each new stream is a
 * request, handed to `onStream`, and answered with respond(). New streams
 * after close() are refused (REFUSED_STREAM), as the GOAWAY sent then says.
 */
import type net from 'node:net';
import { ConnectionError, HeaderBlock, Http2Connection, Http2Stream, type ReceivedHeaders, type StreamHandler } from './connection.js';
import { ErrorCode, rstStreamFrame } from './frames.js';
import { encodeHeaderBlock, type HeaderField } from './hpack.js';

export type { ReceivedHeaders, StreamHandler } from './connection.js';
export { Http2Stream } from './connection.js';

export interface ServerConnectionOptions {
  /** The header list size announced and enforced (SETTINGS_MAX_HEADER_LIST_SIZE). */
  maxHeaderListBytes: number;
  /**
   * Streams open at once (SETTINGS_MAX_CONCURRENT_STREAMS): a client queues
   * beyond it, and a stream past it is refused (REFUSED_STREAM). Each open
   * stream may hold its request until the request ends.
   */
  maxConcurrentStreams: number;
  /**
   * A new request: its headers, and whether its stream ended with them (no
   * body). Returns the handler for the rest of the stream.
   */
  onStream(stream: Http2Stream, headers: ReceivedHeaders, endStream: boolean): StreamHandler;
  /** Once, when the socket is gone. */
  onClose(): void;
}

/** A handler that ignores what a stream brings: a stream's before onStream returns one, or one answered at once. */
export const IGNORE_STREAM: StreamHandler = {
  onHeaders: () => undefined,
  onData: () => undefined,
  onClose: () => undefined,
};

export class ServerConnection extends Http2Connection {
  /** The highest stream id the client has opened. */
  private lastStreamId = 0;
  constructor(
    socket: net.Socket,
    private readonly serverOptions: ServerConnectionOptions,
  ) {
    super(socket, 'server', {
      maxHeaderListBytes: serverOptions.maxHeaderListBytes,
      maxConcurrentStreams: serverOptions.maxConcurrentStreams,
      peerName: 'the caller',
      onClose: () => serverOptions.onClose(),
    });
  }

  /**
   * Answers a request: `headers`, then `body` and `trailers` if given (none of
   * them: a headers-only answer that ends the stream). Once per stream; a
   * closed stream is left alone.
   */
  respond(stream: Http2Stream, headers: readonly HeaderField[], body?: Buffer, trailers?: readonly HeaderField[]): void {
    if (stream.closed || stream.endQueued) return;
    stream.enqueue(new HeaderBlock(encodeHeaderBlock(headers)), body === undefined && trailers === undefined);
    if (body !== undefined) stream.enqueue(body, trailers === undefined);
    if (trailers !== undefined) stream.enqueue(new HeaderBlock(encodeHeaderBlock(trailers)), true);
    this.flushStream(stream);
  }

  protected override onUnknownStreamHeaders(streamId: number, headers: ReceivedHeaders, endStream: boolean): void {
    // (An odd id at or below the last one is a closed stream's, dropped before this.)
    if (streamId % 2 === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `${this.options.peerName} opened stream ${streamId}, an even id`);
    this.lastStreamId = streamId;
    if (this.closing || this.streams.size >= this.serverOptions.maxConcurrentStreams) {
      this.send(rstStreamFrame(streamId, ErrorCode.REFUSED_STREAM));
      return;
    }
    const stream = new Http2Stream(IGNORE_STREAM);
    stream.id = streamId;
    stream.sendWindow = this.peerInitialWindow;
    stream.headerBlocksReceived = 1;
    stream.remoteEnded = endStream;
    this.streams.set(streamId, stream);
    stream.handler = this.serverOptions.onStream(stream, headers, endStream);
  }

  protected override isClosedStreamId(streamId: number): boolean {
    return streamId % 2 === 1 && streamId <= this.lastStreamId;
  }

  protected override lastPeerStreamId(): number {
    return this.lastStreamId;
  }
}
