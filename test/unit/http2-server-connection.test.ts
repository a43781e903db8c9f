/**
 * The driver's HTTP/2 server connection (src/http2/server-connection.ts)
 * against a raw client that writes exactly the frames each test scripts: the
 * preface, requests and answers, an early answer, closing, and what a broken
 * or hostile client may send. Well-formed gRPC clients (grpc-js, nghttp2) are
 * in test/unit/h2-grpc-server.test.ts.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import path from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { ErrorCode, Flag, frame, FrameType, Setting, settingsFrame, windowUpdateFrame } from '../../src/http2/frames.js';
import { encodeRequestHeaders } from '../../src/http2/hpack.js';
import { ServerConnection, type ReceivedHeaders } from '../../src/http2/server-connection.js';
import { FrameReader } from '../support/http2-frames.js';
import { makeScratchDir, removeScratchDir } from '../support/scratch.js';

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

/** The client side: the frames the server sent, and a way to write more. */
class RawClient extends FrameReader {
  ended = false;
  closed = false;

  constructor(readonly socket: net.Socket) {
    super();
    socket.on('data', (chunk: Buffer) => this.push(chunk));
    socket.on('end', () => (this.ended = true));
    socket.on('close', () => (this.closed = true));
    socket.on('error', () => undefined);
  }

  write(...bytes: Buffer[]): void {
    this.socket.write(Buffer.concat(bytes));
  }
}

async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 3000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const request = (streamId: number, endStream = false): Buffer =>
  frame(
    FrameType.HEADERS,
    Flag.END_HEADERS | (endStream ? Flag.END_STREAM : 0),
    streamId,
    encodeRequestHeaders([
      [':path', '/test.v1.Svc/Call'],
      [':authority', 'localhost'],
    ]),
  );

let dir: string;
let server: net.Server;
let connections: ServerConnection[];
let requests: { streamId: number; headers: ReceivedHeaders; body: Buffer[]; ended: boolean; closeCode?: number }[];

beforeEach(async () => {
  dir = await makeScratchDir('h2server');
  connections = [];
  requests = [];
  server = net.createServer((socket) => {
    const connection: ServerConnection = new ServerConnection(socket, {
      maxHeaderListBytes: 16 * 1024,
      maxConcurrentStreams: 4,
      onStream: (stream, headers, endStream) => {
        const seen = { streamId: stream.id, headers, body: [] as Buffer[], ended: endStream };
        requests.push(seen);
        // Answers at once with the path echoed, a body and trailers, whatever the request still sends.
        if (headers[':path'] === '/test.v1.Svc/Early' || endStream) {
          connection.respond(stream, [[':status', '200']], Buffer.from('early'), [['grpc-status', '0']]);
        }
        return {
          onHeaders: () => undefined,
          onData: (chunk) => seen.body.push(Buffer.from(chunk)),
          onEnd: () => {
            seen.ended = true;
            connection.respond(stream, [[':status', '200']], Buffer.concat(seen.body), [['grpc-status', '0']]);
          },
          onClose: (code) => Object.assign(seen, { closeCode: code }),
        };
      },
      onClose: () => undefined,
    });
    connections.push(connection);
  });
  server.listen(path.join(dir, 'server.sock'));
  await once(server, 'listening');
});

afterEach(async () => {
  for (const connection of connections) connection.destroy();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await removeScratchDir(dir);
});

async function connect(preface = true): Promise<RawClient> {
  const socket = net.connect(path.join(dir, 'server.sock'));
  await once(socket, 'connect');
  const client = new RawClient(socket);
  if (preface) client.write(PREFACE, settingsFrame([]));
  return client;
}

describe('HTTP/2 server connection', () => {
  test('SETTINGS first; a request with a body is answered with headers, data and trailers ending the stream', async () => {
    const client = await connect();
    const settings = await client.frame((f) => f.type === FrameType.SETTINGS && f.flags === 0);
    assert.equal(settings.streamId, 0);
    await client.frame((f) => f.type === FrameType.SETTINGS && f.flags === Flag.ACK);
    client.write(request(1), frame(FrameType.DATA, 0, 1, Buffer.from('hel')), frame(FrameType.DATA, Flag.END_STREAM, 1, Buffer.from('lo')));
    const data = await client.frame((f) => f.type === FrameType.DATA && f.streamId === 1);
    assert.equal(data.payload.toString(), 'hello');
    const trailers = await client.frame((f) => f.type === FrameType.HEADERS && (f.flags & Flag.END_STREAM) !== 0);
    assert.equal(trailers.streamId, 1);
    assert.equal(requests[0]?.headers[':method'], 'POST');
    assert.equal(requests[0]?.headers[':path'], '/test.v1.Svc/Call');
  });

  test('an answer before the request ended: RST_STREAM NO_ERROR tells the client to stop sending', async () => {
    const client = await connect();
    client.write(
      frame(
        FrameType.HEADERS,
        Flag.END_HEADERS,
        1,
        encodeRequestHeaders([
          [':path', '/test.v1.Svc/Early'],
          [':authority', 'localhost'],
        ]),
      ),
    );
    await client.frame((f) => f.type === FrameType.HEADERS && (f.flags & Flag.END_STREAM) !== 0);
    const reset = await client.frame((f) => f.type === FrameType.RST_STREAM && f.streamId === 1);
    assert.equal(reset.payload.readUInt32BE(0), ErrorCode.NO_ERROR);
    // Data the client had in flight is dropped, not an error.
    client.write(frame(FrameType.DATA, Flag.END_STREAM, 1, Buffer.from('late')));
    client.write(request(3, true));
    await client.frame((f) => f.type === FrameType.HEADERS && f.streamId === 3 && (f.flags & Flag.END_STREAM) !== 0);
    assert.ok(!client.closed);
  });

  test('SETTINGS_MAX_CONCURRENT_STREAMS is announced, and a stream past it is refused', async () => {
    const client = await connect();
    const settings = await client.frame((f) => f.type === FrameType.SETTINGS && f.flags === 0);
    const announced = new Map<number, number>();
    for (let i = 0; i < settings.payload.length; i += 6) announced.set(settings.payload.readUInt16BE(i), settings.payload.readUInt32BE(i + 2));
    assert.equal(announced.get(Setting.MAX_CONCURRENT_STREAMS), 4);
    client.write(request(1), request(3), request(5), request(7), request(9));
    const refused = await client.frame((f) => f.type === FrameType.RST_STREAM);
    assert.equal(refused.streamId, 9);
    assert.equal(refused.payload.readUInt32BE(0), ErrorCode.REFUSED_STREAM);
    assert.deepEqual(
      requests.map((r) => r.streamId),
      [1, 3, 5, 7],
    );
  });

  test("an answer waits for the caller's window: headers go, data and trailers follow its WINDOW_UPDATE; PINGs are answered", async () => {
    const client = await connect(false);
    client.write(
      PREFACE,
      settingsFrame([[Setting.INITIAL_WINDOW_SIZE, 0]]),
      request(1),
      frame(FrameType.DATA, Flag.END_STREAM, 1, Buffer.from('hello')),
    );
    await client.frame((f) => f.type === FrameType.HEADERS && f.streamId === 1);
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.ok(!client.frames.some((f) => f.type === FrameType.DATA), 'no DATA while the window is 0');
    client.write(frame(FrameType.PING, 0, 0, Buffer.from('pingpong')));
    const pong = await client.frame((f) => f.type === FrameType.PING && f.flags === Flag.ACK);
    assert.equal(pong.payload.toString(), 'pingpong');
    client.write(windowUpdateFrame(1, 3));
    await client.frame((f) => f.type === FrameType.DATA);
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(
      client.frames.filter((f) => f.type === FrameType.DATA).map((f) => f.payload.toString()),
      ['hel'],
    );
    assert.ok(!client.frames.some((f) => f.streamId === 1 && (f.flags & Flag.END_STREAM) !== 0), 'the trailers wait behind the data');
    client.write(windowUpdateFrame(1, 100));
    const trailers = await client.frame((f) => f.type === FrameType.HEADERS && (f.flags & Flag.END_STREAM) !== 0);
    assert.equal(trailers.streamId, 1);
    assert.deepEqual(
      client.frames.filter((f) => f.type === FrameType.DATA).map((f) => f.payload.toString()),
      ['hel', 'lo'],
    );
  });

  test('a caller that floods PINGs and never reads the answers: the connection ends once 4 MiB wait unwritten', async () => {
    const client = await connect();
    client.socket.pause();
    const ping = frame(FrameType.PING, 0, 0, Buffer.alloc(8));
    const burst = Buffer.concat(Array.from({ length: 10_000 }, () => ping));
    for (let i = 0; i < 40 && !(connections[0] as ServerConnection).destroyed; i += 1) {
      client.socket.write(burst);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    await until(() => (connections[0] as ServerConnection).destroyed, 'the server to end the connection');
    assert.match((connections[0] as ServerConnection).lostBecause ?? '', /does not read the answers to its PINGs/);
  });

  test('a client reset closes the stream with its code', async () => {
    const client = await connect();
    client.write(request(1));
    const reset = Buffer.alloc(4);
    reset.writeUInt32BE(ErrorCode.CANCEL, 0);
    client.write(frame(FrameType.RST_STREAM, 0, 1, reset));
    for (let i = 0; i < 100 && requests[0]?.closeCode === undefined; i += 1) await new Promise((resolve) => setTimeout(resolve, 10));
    assert.equal(requests[0]?.closeCode, ErrorCode.CANCEL);
  });

  test('close(): GOAWAY naming the last stream; the open call finishes; a new stream is refused; then the socket ends', async () => {
    const client = await connect();
    client.write(request(1));
    await new Promise((resolve) => setTimeout(resolve, 50));
    (connections[0] as ServerConnection).close();
    const goaway = await client.frame((f) => f.type === FrameType.GOAWAY);
    assert.equal(goaway.payload.readUInt32BE(0), 1);
    assert.equal(goaway.payload.readUInt32BE(4), ErrorCode.NO_ERROR);
    client.write(request(3, true));
    const refused = await client.frame((f) => f.type === FrameType.RST_STREAM && f.streamId === 3);
    assert.equal(refused.payload.readUInt32BE(0), ErrorCode.REFUSED_STREAM);
    client.write(frame(FrameType.DATA, Flag.END_STREAM, 1, Buffer.from('done')));
    await client.frame((f) => f.type === FrameType.HEADERS && f.streamId === 1 && (f.flags & Flag.END_STREAM) !== 0);
    await until(() => client.ended, 'the server to end the socket');
  });

  test('a stream id below one already opened counts as a closed stream: its headers are dropped, the connection goes on', async () => {
    const client = await connect();
    client.write(request(5, true), request(3, true));
    await client.frame((f) => f.type === FrameType.HEADERS && f.streamId === 5 && (f.flags & Flag.END_STREAM) !== 0);
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(
      requests.map((r) => r.streamId),
      [5],
    );
    assert.ok(!client.frames.some((f) => f.type === FrameType.GOAWAY || f.streamId === 3));
  });

  const hostile: { name: string; bytes: () => Buffer[]; code: number; reason: RegExp }[] = [
    {
      name: 'no client preface (an HTTP/1.1 request)',
      bytes: () => [Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')],
      code: ErrorCode.PROTOCOL_ERROR,
      reason: /did not start with the HTTP\/2 client preface/,
    },
    { name: 'a stream with an even id', bytes: () => [PREFACE, request(2)], code: ErrorCode.PROTOCOL_ERROR, reason: /opened stream 2, an even id/ },
    {
      name: 'DATA on a stream never opened',
      bytes: () => [PREFACE, frame(FrameType.DATA, 0, 9, Buffer.from('x'))],
      code: ErrorCode.PROTOCOL_ERROR,
      reason: /never opened/,
    },
    {
      name: 'a frame over 16384 bytes',
      bytes: () => [PREFACE, request(1), frame(FrameType.DATA, 0, 1, Buffer.alloc(20_000))],
      code: ErrorCode.FRAME_SIZE_ERROR,
      reason: /20000-byte frame/,
    },
  ];
  for (const { name, bytes, code, reason } of hostile) {
    test(`${name}: GOAWAY ${code} and the connection ends`, async () => {
      const client = await connect(false);
      client.write(...bytes());
      const goaway = await client.frame((f) => f.type === FrameType.GOAWAY);
      assert.equal(goaway.payload.readUInt32BE(4), code);
      await until(() => client.closed, 'the socket to close');
      assert.match((connections[0] as ServerConnection).lostBecause ?? '', reason);
      assert.ok((connections[0] as ServerConnection).destroyed);
    });
  }
});
