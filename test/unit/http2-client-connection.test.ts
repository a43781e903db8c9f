/**
 * The driver's HTTP/2 client connection (src/http2/client-connection.ts)
 * against a raw server that writes exactly the frames each test scripts:
 * flow control both ways, the server's stream limit, PING, GOAWAY, and the
 * frames a hostile or broken server may send, each of which must end the
 * connection (or the stream) with the right code and a reason, never throw.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import http2 from 'node:http2';
import net from 'node:net';
import path from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { ClientConnection, type ReceivedHeaders, type StreamHandler } from '../../src/http2/client-connection.js';
import { ErrorCode, Flag, frame, FrameType, Setting, settingsFrame, windowUpdateFrame } from '../../src/http2/frames.js';
import { FrameReader, type ReceivedFrame } from '../support/http2-frames.js';
import { makeScratchDir, removeScratchDir } from '../support/scratch.js';

/** One server-side connection: the frames the client sent, and a way to answer. */
class RawPeer extends FrameReader {
  private prefaceSeen = false;
  private early = Buffer.alloc(0);

  constructor(readonly socket: net.Socket) {
    super();
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => undefined);
  }

  write(...frames: Buffer[]): void {
    if (!this.socket.destroyed) this.socket.write(Buffer.concat(frames));
  }

  private onData(chunk: Buffer): void {
    if (this.prefaceSeen) return this.push(chunk);
    this.early = Buffer.concat([this.early, chunk]);
    if (this.early.length < 24) return;
    assert.equal(this.early.subarray(0, 24).toString('latin1'), 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
    this.prefaceSeen = true;
    this.push(this.early.subarray(24));
  }
}

/** A literal header field without indexing, new name, no Huffman. */
function literal(name: string, value: string): Buffer {
  const field = (text: string): Buffer => {
    const bytes = Buffer.from(text, 'latin1');
    assert.ok(bytes.length < 127);
    return Buffer.concat([Buffer.from([bytes.length]), bytes]);
  };
  return Buffer.concat([Buffer.from([0]), field(name), field(value)]);
}

const RESPONSE_HEADERS = Buffer.concat([Buffer.from([0x88]), literal('content-type', 'application/grpc')]);
const OK_TRAILERS = literal('grpc-status', '0');

interface Recorded {
  events: string[];
  headers: ReceivedHeaders[];
  data: Buffer[];
  closed: Promise<{ code: number; reason: string | undefined }>;
}

function recorder(): StreamHandler & Recorded {
  let close!: (value: { code: number; reason: string | undefined }) => void;
  const recorded: Recorded = { events: [], headers: [], data: [], closed: new Promise((resolve) => (close = resolve)) };
  return {
    ...recorded,
    onHeaders(headers) {
      recorded.events.push(recorded.headers.length === 0 ? 'response' : 'trailers');
      recorded.headers.push(headers);
    },
    onData(chunk) {
      recorded.events.push('data');
      recorded.data.push(Buffer.from(chunk));
    },
    onClose(code, reason) {
      recorded.events.push('close');
      close({ code, reason });
    },
  };
}

let dir: string;
let socketPath: string;
let server: net.Server;
let peers: RawPeer[];
let connections: ClientConnection[];

beforeEach(async () => {
  dir = await makeScratchDir('h2conn');
  socketPath = path.join(dir, 'server.sock');
  peers = [];
  connections = [];
  server = net.createServer((socket) => peers.push(new RawPeer(socket)));
  server.listen(socketPath);
  await once(server, 'listening');
});

afterEach(async () => {
  for (const connection of connections) connection.destroy();
  for (const peer of peers) peer.socket.destroy();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await removeScratchDir(dir);
});

/** A client connection, with a record of its own events, and the server's side once it has the preface. */
async function connect(): Promise<{ connection: ClientConnection; peer: RawPeer; events: string[] }> {
  const events: string[] = [];
  const peersBefore = peers.length;
  const connection = new ClientConnection({
    socketPath,
    peerName: 'the agent',
    maxHeaderListBytes: 16 * 1024,
    onConnect: () => events.push('connect'),
    onError: (err) => events.push(`error ${err.message}`),
    onGoaway: (code) => events.push(`goaway ${code}`),
    onClose: () => events.push('close'),
  });
  connections.push(connection);
  const deadline = Date.now() + 2000;
  while (peers.length === peersBefore) {
    if (Date.now() > deadline) throw new Error('no connection');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  const peer = peers[peers.length - 1] as RawPeer;
  await peer.frame((f) => f.type === FrameType.SETTINGS);
  return { connection, peer, events };
}

const fields = (): [string, string][] => [
  [':path', '/test.v1.Svc/Call'],
  [':authority', 'localhost'],
  ['content-type', 'application/grpc'],
];

describe('HTTP/2 client connection: the protocol', () => {
  test('preface, SETTINGS (no push), a raised connection window; one request answered and closed cleanly', async () => {
    const { connection, peer } = await connect();
    const settings = peer.frames.find((f) => f.type === FrameType.SETTINGS) as ReceivedFrame;
    assert.equal(settings.streamId, 0);
    const values = new Map<number, number>();
    for (let i = 0; i < settings.payload.length; i += 6) values.set(settings.payload.readUInt16BE(i), settings.payload.readUInt32BE(i + 2));
    assert.equal(values.get(Setting.ENABLE_PUSH), 0);
    assert.equal(values.get(Setting.MAX_HEADER_LIST_SIZE), 16 * 1024);
    const windowUpdate = await peer.frame((f) => f.type === FrameType.WINDOW_UPDATE && f.streamId === 0);
    assert.ok(windowUpdate.payload.readUInt32BE(0) > 1 << 20);

    const handler = recorder();
    connection.request(fields(), Buffer.from('hello'), handler);
    const headers = await peer.frame((f) => f.type === FrameType.HEADERS);
    assert.equal(headers.streamId, 1);
    assert.equal(headers.flags & Flag.END_HEADERS, Flag.END_HEADERS);
    const data = await peer.frame((f) => f.type === FrameType.DATA && f.streamId === 1);
    assert.equal(data.payload.toString(), 'hello');
    assert.equal(data.flags & Flag.END_STREAM, Flag.END_STREAM);

    peer.write(settingsFrame([]), frame(FrameType.HEADERS, Flag.END_HEADERS, 1, RESPONSE_HEADERS));
    peer.write(frame(FrameType.DATA, Flag.PADDED, 1, Buffer.concat([Buffer.from([3]), Buffer.from('abc'), Buffer.alloc(3)])));
    peer.write(frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 1, OK_TRAILERS));
    assert.deepEqual(await handler.closed, { code: ErrorCode.NO_ERROR, reason: undefined });
    assert.deepEqual(handler.events, ['response', 'data', 'trailers', 'close']);
    assert.equal(handler.headers[0]?.[':status'], '200');
    assert.equal(handler.headers[0]?.['content-type'], 'application/grpc');
    assert.equal(handler.headers[1]?.['grpc-status'], '0');
    assert.equal(Buffer.concat(handler.data).toString(), 'abc');
    await peer.frame((f) => f.type === FrameType.SETTINGS && f.flags === Flag.ACK);
  });

  test('PING from the server is answered with the same payload; the client ping resolves on its answer', async () => {
    const { connection, peer } = await connect();
    peer.write(frame(FrameType.PING, 0, 0, Buffer.from('12345678')));
    const answer = await peer.frame((f) => f.type === FrameType.PING && f.flags === Flag.ACK);
    assert.equal(answer.payload.toString(), '12345678');
    const answered = new Promise<Error | undefined>((resolve) => connection.ping(resolve));
    const ping = await peer.frame((f) => f.type === FrameType.PING && f.flags === 0);
    peer.write(frame(FrameType.PING, Flag.ACK, 0, ping.payload));
    assert.equal(await answered, undefined);
  });

  test('flow control: a zero initial window holds the request body until WINDOW_UPDATE, sent in frames of the allowed size', async () => {
    const { connection, peer } = await connect();
    peer.write(settingsFrame([[Setting.INITIAL_WINDOW_SIZE, 0]]));
    await peer.frame((f) => f.type === FrameType.SETTINGS && f.flags === Flag.ACK);
    const body = Buffer.alloc(40_000, 7);
    connection.request(fields(), body, recorder());
    await peer.frame((f) => f.type === FrameType.HEADERS);
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(peer.frames.filter((f) => f.type === FrameType.DATA).length, 0, 'no DATA while the stream window is 0');
    peer.write(windowUpdateFrame(1, 20_000));
    await peer.frame((f) => f.type === FrameType.DATA);
    await new Promise((resolve) => setTimeout(resolve, 50));
    let sent = peer.frames.filter((f) => f.type === FrameType.DATA);
    assert.equal(
      sent.reduce((n, f) => n + f.payload.length, 0),
      20_000,
    );
    assert.ok(sent.every((f) => f.payload.length <= 16_384 && (f.flags & Flag.END_STREAM) === 0));
    peer.write(windowUpdateFrame(1, 20_000));
    await peer.frame((f) => f.type === FrameType.DATA && (f.flags & Flag.END_STREAM) !== 0);
    sent = peer.frames.filter((f) => f.type === FrameType.DATA);
    assert.deepEqual(Buffer.concat(sent.map((f) => f.payload)), body);
  });

  test('flow control: received data is acknowledged per stream once half the window is used', async () => {
    const { connection, peer } = await connect();
    const handler = recorder();
    connection.request(fields(), Buffer.alloc(0), handler);
    await peer.frame((f) => f.type === FrameType.HEADERS);
    peer.write(frame(FrameType.HEADERS, Flag.END_HEADERS, 1, RESPONSE_HEADERS));
    for (let i = 0; i < 3; i += 1) peer.write(frame(FrameType.DATA, 0, 1, Buffer.alloc(12_000)));
    const update = await peer.frame((f) => f.type === FrameType.WINDOW_UPDATE && f.streamId === 1);
    assert.equal(update.payload.readUInt32BE(0), 36_000);
    peer.write(frame(FrameType.DATA, Flag.END_STREAM, 1, Buffer.alloc(10)));
    assert.equal((await handler.closed).code, ErrorCode.NO_ERROR);
    assert.equal(Buffer.concat(handler.data).length, 36_010);
  });

  test("the server's stream limit: a second stream waits until the first ends", async () => {
    const { connection, peer } = await connect();
    peer.write(settingsFrame([[Setting.MAX_CONCURRENT_STREAMS, 1]]));
    await peer.frame((f) => f.type === FrameType.SETTINGS && f.flags === Flag.ACK);
    const first = recorder();
    const second = recorder();
    connection.request(fields(), Buffer.from('1'), first);
    connection.request(fields(), Buffer.from('2'), second);
    await peer.frame((f) => f.type === FrameType.HEADERS && f.streamId === 1);
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(peer.frames.filter((f) => f.type === FrameType.HEADERS).length, 1);
    peer.write(frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 1, Buffer.concat([RESPONSE_HEADERS, OK_TRAILERS])));
    await first.closed;
    await peer.frame((f) => f.type === FrameType.HEADERS && f.streamId === 3);
  });

  test('cancel: RST_STREAM CANCEL; frames still in flight for the stream are dropped, and its header blocks still decoded', async () => {
    const { connection, peer } = await connect();
    const handler = recorder();
    const stream = connection.request(fields(), Buffer.alloc(0), handler);
    const other = recorder();
    connection.request(fields(), Buffer.alloc(0), other);
    await peer.frame((f) => f.type === FrameType.HEADERS && f.streamId === 3);
    connection.reset(stream, ErrorCode.CANCEL);
    assert.equal((await handler.closed).code, ErrorCode.CANCEL);
    const reset = await peer.frame((f) => f.type === FrameType.RST_STREAM);
    assert.equal(reset.payload.readUInt32BE(0), ErrorCode.CANCEL);
    // The server's late answer on stream 1 puts 'x-late: 1' in the dynamic table (incremental indexing);
    // stream 3's response refers to it as index 62.
    peer.write(
      frame(
        FrameType.HEADERS,
        Flag.END_HEADERS,
        1,
        Buffer.concat([Buffer.from([0x88, 0x40, 6]), Buffer.from('x-late'), Buffer.from([1]), Buffer.from('1')]),
      ),
    );
    peer.write(frame(FrameType.DATA, 0, 1, Buffer.from('late')));
    peer.write(frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 3, Buffer.from([0x88, 0xbe])));
    await other.closed;
    assert.equal(other.headers[0]?.['x-late'], '1');
    assert.deepEqual(handler.events, ['close']);
  });

  test('GOAWAY: streams past the last one the server took end as refused; the others finish; then the socket closes', async () => {
    const { connection, peer, events } = await connect();
    const first = recorder();
    const second = recorder();
    connection.request(fields(), Buffer.alloc(0), first);
    connection.request(fields(), Buffer.alloc(0), second);
    await peer.frame((f) => f.type === FrameType.HEADERS && f.streamId === 3);
    const goaway = Buffer.alloc(8);
    goaway.writeUInt32BE(1, 0);
    goaway.writeUInt32BE(ErrorCode.NO_ERROR, 4);
    peer.write(frame(FrameType.GOAWAY, 0, 0, goaway));
    assert.equal((await second.closed).code, ErrorCode.REFUSED_STREAM);
    assert.ok(connection.gone);
    assert.throws(() => connection.request(fields(), Buffer.alloc(0), recorder()), /GOAWAY/);
    peer.write(frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 1, Buffer.concat([RESPONSE_HEADERS, OK_TRAILERS])));
    assert.equal((await first.closed).code, ErrorCode.NO_ERROR);
    await once(peer.socket, 'end');
    assert.ok(events.includes('goaway 0'));
  });
});

describe('HTTP/2 client connection: a peer encoder', () => {
  test('nghttp2 (node:http2) headers, Huffman-coded and indexed, decode byte for byte: every byte a header value may hold', async () => {
    // 'a' × 40 then one byte: shorter Huffman-coded for every byte, so nghttp2 codes each one that way.
    const bytes = [0x09, ...Array.from({ length: 0x7f - 0x20 }, (_, i) => 0x20 + i), ...Array.from({ length: 0x80 }, (_, i) => 0x80 + i)];
    const expected: Record<string, string> = {};
    for (const byte of bytes) expected[`x-${byte.toString(16)}`] = `${'a'.repeat(40)}${String.fromCharCode(byte)}`;
    const h2Path = path.join(dir, 'h2.sock');
    const h2 = http2.createServer();
    h2.on('stream', (stream) => stream.respond({ ':status': 200, ...expected }, { endStream: true }));
    await new Promise<void>((resolve) => h2.listen(h2Path, resolve));
    const sessions: http2.ServerHttp2Session[] = [];
    h2.on('session', (session) => sessions.push(session));
    try {
      const connection = new ClientConnection({
        socketPath: h2Path,
        maxHeaderListBytes: 64 * 1024,
        onConnect: () => undefined,
        onError: () => undefined,
        onGoaway: () => undefined,
        onClose: () => undefined,
      });
      connections.push(connection);
      // Twice on one connection: the second answer refers to the first's dynamic table entries.
      for (let round = 0; round < 2; round += 1) {
        const handler = recorder();
        connection.request(fields(), Buffer.alloc(0), handler);
        assert.equal((await handler.closed).code, ErrorCode.NO_ERROR);
        const { ':status': httpStatus, ...received } = handler.headers[0] ?? {};
        assert.equal(httpStatus, '200');
        for (const [name, value] of Object.entries(expected)) assert.equal(received[name], value, name);
      }
    } finally {
      for (const session of sessions) session.destroy();
      await new Promise<void>((resolve) => h2.close(() => resolve()));
    }
  });
});

describe('HTTP/2 client connection: a hostile server', () => {
  const goawayCode = async (peer: RawPeer): Promise<number> => (await peer.frame((f) => f.type === FrameType.GOAWAY)).payload.readUInt32BE(4);

  const cases: { name: string; frames: (stream: number) => Buffer[]; code: number; reason: RegExp }[] = [
    {
      name: 'a frame over 16384 bytes',
      frames: (id) => [frame(FrameType.DATA, 0, id, Buffer.alloc(16_385))],
      code: ErrorCode.FRAME_SIZE_ERROR,
      reason: /16385-byte frame/,
    },
    {
      name: 'PUSH_PROMISE',
      frames: (id) => [frame(FrameType.PUSH_PROMISE, Flag.END_HEADERS, id, Buffer.from([0, 0, 0, 2, 0x88]))],
      code: ErrorCode.PROTOCOL_ERROR,
      reason: /PUSH_PROMISE/,
    },
    {
      name: 'DATA on a stream never opened',
      frames: () => [frame(FrameType.DATA, 0, 7, Buffer.from('x'))],
      code: ErrorCode.PROTOCOL_ERROR,
      reason: /stream 7, which was never opened/,
    },
    {
      name: 'HEADERS on a server-initiated stream',
      frames: () => [frame(FrameType.HEADERS, Flag.END_HEADERS, 2, Buffer.from([0x88]))],
      code: ErrorCode.PROTOCOL_ERROR,
      reason: /never opened/,
    },
    {
      name: 'a header block interrupted by DATA',
      frames: (id) => [frame(FrameType.HEADERS, 0, id, Buffer.from([0x88])), frame(FrameType.DATA, 0, id, Buffer.from('x'))],
      code: ErrorCode.PROTOCOL_ERROR,
      reason: /interrupted a header block/,
    },
    {
      name: 'CONTINUATION without HEADERS',
      frames: (id) => [frame(FrameType.CONTINUATION, Flag.END_HEADERS, id, Buffer.from([0x88]))],
      code: ErrorCode.PROTOCOL_ERROR,
      reason: /CONTINUATION without HEADERS/,
    },
    {
      name: 'a header block that does not decode',
      frames: (id) => [frame(FrameType.HEADERS, Flag.END_HEADERS, id, Buffer.from([0x80]))],
      code: ErrorCode.COMPRESSION_ERROR,
      reason: /does not decode: a header field refers to index 0/,
    },
    {
      name: 'an endless header block (CONTINUATION flood)',
      frames: (id) => [
        frame(FrameType.HEADERS, 0, id, Buffer.alloc(16_000)),
        ...Array.from({ length: 5 }, () => frame(FrameType.CONTINUATION, 0, id, Buffer.alloc(16_000))),
      ],
      code: ErrorCode.ENHANCE_YOUR_CALM,
      reason: /header block over 65536 bytes/,
    },
    {
      name: 'a header block in endless empty CONTINUATION frames',
      frames: (id) => [frame(FrameType.HEADERS, 0, id, Buffer.alloc(0)), ...Array.from({ length: 200 }, () => frame(FrameType.CONTINUATION, 0, id))],
      code: ErrorCode.ENHANCE_YOUR_CALM,
      reason: /header block in over 128 frames/,
    },
    {
      name: 'SETTINGS_ENABLE_PUSH 1 from a server',
      frames: () => [settingsFrame([[Setting.ENABLE_PUSH, 1]])],
      code: ErrorCode.PROTOCOL_ERROR,
      reason: /SETTINGS_ENABLE_PUSH 1/,
    },
    {
      name: 'SETTINGS with a bad MAX_FRAME_SIZE',
      frames: () => [settingsFrame([[Setting.MAX_FRAME_SIZE, 100]])],
      code: ErrorCode.PROTOCOL_ERROR,
      reason: /SETTINGS_MAX_FRAME_SIZE 100/,
    },
    {
      name: 'SETTINGS of a wrong length',
      frames: () => [frame(FrameType.SETTINGS, 0, 0, Buffer.alloc(5))],
      code: ErrorCode.FRAME_SIZE_ERROR,
      reason: /SETTINGS of the wrong size/,
    },
    {
      name: 'an initial window over 2^31-1',
      frames: () => [settingsFrame([[Setting.INITIAL_WINDOW_SIZE, 2 ** 31]])],
      code: ErrorCode.FLOW_CONTROL_ERROR,
      reason: /INITIAL_WINDOW_SIZE/,
    },
    {
      name: 'a connection window grown past 2^31-1',
      frames: () => [windowUpdateFrame(0, 2 ** 31 - 1)],
      code: ErrorCode.FLOW_CONTROL_ERROR,
      reason: /connection window past/,
    },
    {
      name: 'PING of the wrong size',
      frames: () => [frame(FrameType.PING, 0, 0, Buffer.alloc(7))],
      code: ErrorCode.FRAME_SIZE_ERROR,
      reason: /PING of the wrong size/,
    },
    {
      name: 'padding longer than the frame',
      frames: (id) => [
        frame(FrameType.HEADERS, Flag.END_HEADERS, id, RESPONSE_HEADERS),
        frame(FrameType.DATA, Flag.PADDED, id, Buffer.from([9, 1, 2])),
      ],
      code: ErrorCode.PROTOCOL_ERROR,
      reason: /more padding than payload/,
    },
  ];

  for (const { name, frames, code, reason } of cases) {
    test(`${name}: GOAWAY ${code}, the stream ends, the reason is kept`, async () => {
      const { connection, peer, events } = await connect();
      const handler = recorder();
      connection.request(fields(), Buffer.alloc(0), handler);
      await peer.frame((f) => f.type === FrameType.HEADERS);
      peer.write(...frames(1));
      assert.equal((await handler.closed).code, ErrorCode.INTERNAL_ERROR);
      assert.equal(await goawayCode(peer), code);
      assert.match(connection.lostBecause ?? '', reason);
      assert.ok(connection.gone && connection.destroyed);
      assert.ok(events.includes('close'));
    });
  }

  test('stream errors end only their stream: DATA before headers, trailers that do not end, a zero WINDOW_UPDATE', async () => {
    const { connection, peer } = await connect();
    const handlers = [recorder(), recorder(), recorder(), recorder()];
    for (const handler of handlers) connection.request(fields(), Buffer.alloc(0), handler);
    await peer.frame((f) => f.type === FrameType.HEADERS && f.streamId === 7);
    peer.write(frame(FrameType.DATA, 0, 1, Buffer.from('x')));
    peer.write(frame(FrameType.HEADERS, Flag.END_HEADERS, 3, RESPONSE_HEADERS), frame(FrameType.HEADERS, Flag.END_HEADERS, 3, OK_TRAILERS));
    peer.write(windowUpdateFrame(5, 0));
    const reasons = await Promise.all(handlers.slice(0, 3).map(async (h) => (await h.closed).reason));
    assert.match(reasons[0] ?? '', /DATA before the headers/);
    assert.match(reasons[1] ?? '', /second header block that does not end the stream/);
    assert.match(reasons[2] ?? '', /WINDOW_UPDATE of 0/);
    peer.write(frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 7, Buffer.concat([RESPONSE_HEADERS, OK_TRAILERS])));
    assert.equal((await (handlers[3] as Recorded).closed).code, ErrorCode.NO_ERROR);
    assert.ok(!connection.gone);
  });

  test('random well-formed frames never throw: the connection either ends with a reason or still answers a new call', async () => {
    let seed = 7;
    const random = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return Math.floor((seed / 2 ** 31) * n);
    };
    let ended = 0;
    for (let round = 0; round < 100; round += 1) {
      const { connection, peer } = await connect();
      const handler = recorder();
      connection.request(fields(), Buffer.alloc(0), handler);
      await peer.frame((f) => f.type === FrameType.HEADERS);
      const frames: Buffer[] = [];
      // Frames of the size their type has, half the time, so that most get past the size checks.
      const sizes: Record<number, number> = { 2: 5, 3: 4, 4: 6, 6: 8, 7: 8, 8: 4 };
      for (let i = 0; i < 1 + random(3); i += 1) {
        const type = random(11);
        const length = random(2) === 0 && sizes[type] !== undefined ? sizes[type] : random(40);
        const payload = Buffer.from(Array.from({ length }, () => random(256)));
        // Now and then a header block that decodes (":status: 200"), so HEADERS and CONTINUATION get past HPACK.
        if (random(3) === 0 && payload.length > 0) payload[0] = 0x88;
        frames.push(frame(type, random(2) === 0 ? random(256) : random(256) & ~Flag.PADDED, [0, 1, 1, 2, 3][random(5)] as number, payload));
      }
      peer.write(...frames);
      await new Promise((resolve) => setTimeout(resolve, 10));
      if (connection.gone) {
        ended += 1;
        assert.match(connection.lostBecause ?? '', /HTTP\/2|closed/, `round ${round}`);
        assert.equal(typeof (await handler.closed).code, 'number');
      } else {
        const next = recorder();
        connection.request(fields(), Buffer.alloc(0), next);
        const headers = await peer.frame((f) => f.type === FrameType.HEADERS && f.streamId > 1);
        peer.write(frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, headers.streamId, Buffer.concat([RESPONSE_HEADERS, OK_TRAILERS])));
        // Answered, unless what came before left the connection in a state that our answer breaks
        // (a header block still open, say): then it ends with the reason.
        const closed = await next.closed;
        if (closed.code !== ErrorCode.NO_ERROR) assert.match(connection.lostBecause ?? '', /HTTP\/2/, `round ${round}`);
      }
      connection.destroy();
    }
    // Both outcomes happened: the rounds were neither all fatal nor all harmless.
    assert.ok(ended >= 10 && ended <= 90, `${ended} of 100 rounds ended the connection`);
  });
});
