/**
 * The driver's HTTP/2 gRPC client against a plain node:http2 server that
 * answers exactly as each test scripts it: well-formed gRPC, and the hostile
 * or broken answers a client must survive (oversized, compressed or
 * undecodable messages, bad statuses, resets, lost connections).
 */
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import path from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { status, statusName } from '../../src/grpc-status.js';
import { H2GrpcClient, type CallError, type CallStatus, type GrpcMethod, type ServerStreamCall } from '../../src/spire/h2-grpc-client.js';
import { makeScratchDir, removeScratchDir } from '../support/scratch.js';

const TEXT: GrpcMethod<string, string> = {
  path: '/test.v1.Echo/Watch',
  serialize: (request) => Buffer.from(request),
  deserialize: (bytes) => {
    const text = bytes.toString();
    if (text === 'undecodable') throw new Error('bad wire type');
    return text;
  },
};

function frame(payload: string | Buffer, compressed = false): Buffer {
  const bytes = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const header = Buffer.alloc(5);
  header[0] = compressed ? 1 : 0;
  header.writeUInt32BE(bytes.length, 1);
  return Buffer.concat([header, bytes]);
}

interface Outcome {
  messages: string[];
  errors: CallError[];
  status: CallStatus;
  /** Every event in the order it came, read a moment after the status: nothing may follow it. */
  events: string[];
}

function outcome(call: ServerStreamCall<string>): Promise<Outcome> {
  const messages: string[] = [];
  const errors: CallError[] = [];
  const events: string[] = [];
  return new Promise((resolve) => {
    call.on('data', (message) => {
      messages.push(message);
      events.push('data');
    });
    call.on('error', (err) => {
      errors.push(err);
      events.push('error');
    });
    call.on('status', (result) => {
      events.push('status');
      setTimeout(() => resolve({ messages, errors, status: result, events: [...events] }), 20);
    });
  });
}

/** The events a call must report: its messages, then 'error' unless OK, then 'status', once each. */
function expectedEvents(result: Outcome): string[] {
  return [...result.messages.map(() => 'data'), ...(result.status.code === status.OK ? [] : ['error']), 'status'];
}

type Handler = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, body: Buffer) => void;

let dir: string;
let socketPath: string;
let server: http2.Http2Server | undefined;
let sessions: http2.ServerHttp2Session[];
/** The server side's connections under the HTTP/2 sessions. */
let rawSockets: net.Socket[];
let client: H2GrpcClient | undefined;

/** Serves `handler` on the socket, with the request body read in full first. */
async function serve(handler: Handler): Promise<void> {
  sessions = [];
  rawSockets = [];
  server = http2.createServer();
  server.on('connection', (socket: net.Socket) => rawSockets.push(socket));
  server.on('session', (session) => sessions.push(session));
  server.on('stream', (stream, headers) => {
    const chunks: Buffer[] = [];
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.on('end', () => handler(stream, headers, Buffer.concat(chunks)));
    stream.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server?.listen(socketPath, resolve));
}

function newClient(extra: Partial<ConstructorParameters<typeof H2GrpcClient>[0]> = {}): H2GrpcClient {
  client = new H2GrpcClient({ socketPath, maxReceiveMessageBytes: 1024, userAgent: 'spire-csi-driver/test', ...extra });
  return client;
}

beforeEach(async () => {
  dir = await makeScratchDir('h2');
  socketPath = path.join(dir, 'agent.sock');
});

afterEach(async () => {
  client?.close();
  client = undefined;
  for (const session of sessions ?? []) session.destroy();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
  await removeScratchDir(dir);
});

describe('H2GrpcClient: well-formed calls', () => {
  test('sends a framed request with gRPC headers, and delivers messages split across and packed into chunks, in order', async () => {
    let seen: { headers: http2.IncomingHttpHeaders; body: Buffer } | undefined;
    await serve((stream, headers, body) => {
      seen = { headers, body };
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      const all = Buffer.concat([frame('one'), frame(''), frame('three'), frame('x'.repeat(600))]);
      // Uneven pieces: a header split in two, two messages in one write, a long message over three.
      stream.write(all.subarray(0, 3));
      stream.write(all.subarray(3, 14));
      stream.write(all.subarray(14, 300));
      stream.write(all.subarray(300, 500));
      stream.end(all.subarray(500));
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
    });
    const result = await outcome(newClient().serverStream(TEXT, 'selectors'));
    assert.deepEqual(result.messages, ['one', '', 'three', 'x'.repeat(600)]);
    assert.deepEqual(result.errors, []);
    assert.equal(result.status.code, status.OK);
    assert.deepEqual(result.events, ['data', 'data', 'data', 'data', 'status']);
    assert.equal(seen?.headers[':method'], 'POST');
    assert.equal(seen?.headers[':path'], '/test.v1.Echo/Watch');
    assert.equal(seen?.headers['content-type'], 'application/grpc');
    assert.equal(seen?.headers['te'], 'trailers');
    assert.equal(seen?.headers['user-agent'], 'spire-csi-driver/test');
    assert.equal(seen?.headers['grpc-accept-encoding'], undefined, 'never asks for compression');
    assert.deepEqual(seen?.body, frame('selectors'));
  });

  test('a snapshots method: a response equal to the previous one on the call is dropped undecoded; a new call delivers it again', async () => {
    await serve((stream) => {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      // "undecodable" twice in a row: the repeat would fail the call if it were decoded.
      stream.end(Buffer.concat(['a', 'a', 'b', 'a', 'a', 'undecodable', 'undecodable'].map((m) => frame(m))));
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
    });
    const decoded: string[] = [];
    const snapshots: GrpcMethod<string, string> = {
      ...TEXT,
      deserialize: (bytes) => {
        decoded.push(bytes.toString());
        return TEXT.deserialize(bytes);
      },
      snapshots: true,
    };
    const firstCall = newClient().serverStream(snapshots, 'selectors');
    let repeats = 0;
    firstCall.on('repeat', () => repeats++);
    const first = await outcome(firstCall);
    assert.deepEqual(first.messages, ['a', 'b', 'a'], 'each repeat dropped, a return to an earlier value delivered');
    assert.equal(repeats, 2, 'each dropped repeat is reported, none after the call failed');
    assert.deepEqual(decoded, ['a', 'b', 'a', 'undecodable'], 'repeats are never decoded');
    assert.equal(first.status.code, status.INTERNAL, 'the first undecodable one fails the call');

    const second = await outcome(newClient().serverStream({ ...snapshots, deserialize: (bytes) => bytes.toString() }, 'selectors'));
    assert.deepEqual(second.messages, ['a', 'b', 'a', 'undecodable'], 'a new call starts with nothing seen');

    const plain = await outcome(newClient().serverStream({ ...TEXT, deserialize: (bytes) => bytes.toString() }, 'selectors'));
    assert.deepEqual(plain.messages, ['a', 'a', 'b', 'a', 'a', 'undecodable', 'undecodable'], 'without snapshots every message is delivered');
  });

  test('a trailers-only failure: error with the decoded grpc-message, then status', async () => {
    await serve((stream) => {
      stream.respond(
        {
          ':status': 200,
          'content-type': 'application/grpc',
          'grpc-status': String(status.PERMISSION_DENIED),
          'grpc-message': 'no%20identity%20issued',
        },
        { endStream: true },
      );
    });
    const result = await outcome(newClient().serverStream(TEXT, 's'));
    assert.equal(result.status.code, status.PERMISSION_DENIED);
    assert.equal(result.status.details, 'no identity issued');
    assert.equal(result.errors.length, 1);
    assert.equal(result.errors[0]?.code, status.PERMISSION_DENIED);
    assert.equal(result.errors[0]?.message, '7 PERMISSION_DENIED: no identity issued');
  });

  test('unary: the one response; a deadline sends grpc-timeout and fails a silent call with DEADLINE_EXCEEDED', async () => {
    const timeouts: unknown[] = [];
    await serve((stream, headers, body) => {
      timeouts.push(headers['grpc-timeout']);
      if (body.subarray(5).toString() === 'hang') return;
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.end(frame(`echo ${body.subarray(5).toString()}`));
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
    });
    const c = newClient();
    assert.equal(await c.unary(TEXT, 'hello', 5000), 'echo hello');
    await assert.rejects(c.unary(TEXT, 'hang', 100), (err: CallError) => err.code === status.DEADLINE_EXCEEDED);
    assert.deepEqual(timeouts, ['5000m', '100m']);
  });

  test('cancel(): CANCELLED on the client, and the agent sees the stream reset', async () => {
    let serverSideClosed: Promise<number> | undefined;
    await serve((stream) => {
      serverSideClosed = new Promise((resolve) => stream.on('close', () => resolve(stream.rstCode)));
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
      stream.write(frame('first'));
    });
    const call = newClient().serverStream(TEXT, 's');
    const result = outcome(call);
    await new Promise<void>((resolve) => call.on('data', () => resolve()));
    call.cancel();
    const ended = await result;
    assert.deepEqual(ended.messages, ['first']);
    assert.equal(ended.status.code, status.CANCELLED);
    assert.equal(ended.errors[0]?.code, status.CANCELLED);
    assert.equal(await serverSideClosed, http2.constants.NGHTTP2_CANCEL);
  });

  test('150 streams open at once on one connection are all answered', async () => {
    await serve((stream, _headers, body) => {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
      stream.write(frame(body.subarray(5).toString()));
    });
    const c = newClient();
    const calls = Array.from({ length: 150 }, (_, i) => c.serverStream(TEXT, `pod-${i}`));
    const firsts = await Promise.all(calls.map((call) => new Promise<string>((resolve) => call.on('data', resolve))));
    assert.deepEqual(
      firsts,
      Array.from({ length: 150 }, (_, i) => `pod-${i}`),
    );
    assert.equal(sessions.length, 1);
    for (const call of calls) call.cancel();
  });
});

describe('H2GrpcClient: hostile or broken answers', () => {
  const cases: { name: string; answer: Handler; code: status; details: RegExp }[] = [
    {
      name: 'a message over the size limit: RESOURCE_EXHAUSTED, before the message arrives',
      answer: (stream) => {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
        const header = Buffer.alloc(5);
        header.writeUInt32BE(2 ** 31, 1); // announces 2 GiB, sends none of it
        stream.write(header);
      },
      code: status.RESOURCE_EXHAUSTED,
      details: /2147483648-byte message, over the 1024-byte limit \(--max-message-size\)/,
    },
    {
      name: 'a compressed message, never asked for: INTERNAL',
      answer: (stream) => {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
        stream.write(frame('zzz', true));
      },
      code: status.INTERNAL,
      details: /compressed message/,
    },
    {
      name: 'a message that does not decode: INTERNAL',
      answer: (stream) => {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
        stream.write(frame('undecodable'));
      },
      code: status.INTERNAL,
      details: /does not decode: bad wire type/,
    },
    {
      name: 'HTTP 404: UNIMPLEMENTED',
      answer: (stream) => stream.respond({ ':status': 404 }, { endStream: true }),
      code: status.UNIMPLEMENTED,
      details: /HTTP status 404/,
    },
    {
      name: 'HTTP 503: UNAVAILABLE',
      answer: (stream) => stream.respond({ ':status': 503 }, { endStream: true }),
      code: status.UNAVAILABLE,
      details: /HTTP status 503/,
    },
    {
      name: 'a grpc-status that is not a code: UNKNOWN',
      answer: (stream) => stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': 'abc' }, { endStream: true }),
      code: status.UNKNOWN,
      details: /invalid grpc-status "abc"/,
    },
    {
      name: 'a content-type that is not gRPC: UNKNOWN',
      answer: (stream) => {
        stream.respond({ ':status': 200, 'content-type': 'text/html' });
        stream.write('<html>');
      },
      code: status.UNKNOWN,
      details: /content-type "text\/html"/,
    },
    {
      name: 'the body ends without trailers: INTERNAL',
      answer: (stream) => {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
        stream.end(frame('only'));
      },
      code: status.INTERNAL,
      details: /without a gRPC status/,
    },
    {
      name: 'a grpc-status beside a non-200 HTTP status: the grpc-status counts',
      answer: (stream) =>
        stream.respond(
          { ':status': 415, 'content-type': 'application/grpc', 'grpc-status': '13', 'grpc-message': 'bad content-type' },
          { endStream: true },
        ),
      code: status.INTERNAL,
      details: /^bad content-type$/,
    },
    {
      name: 'an empty grpc-status: UNKNOWN, not OK',
      answer: (stream) => stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '' }, { endStream: true }),
      code: status.UNKNOWN,
      details: /invalid grpc-status ""/,
    },
    {
      name: 'OK trailers in the middle of a message: INTERNAL',
      answer: (stream) => {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
        stream.end(frame('complete message').subarray(0, 9));
        stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      },
      code: status.INTERNAL,
      details: /in the middle of a message \(9 bytes left over\)/,
    },
    {
      name: 'the agent process dies mid-call (its socket closes, no GOAWAY): UNAVAILABLE',
      answer: (stream) => {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
        // The raw socket, as when the agent process is killed: no GOAWAY, no RST_STREAM.
        stream.write(frame('first'), () => rawSockets.at(-1)?.destroy());
      },
      code: status.UNAVAILABLE,
      details: /connection/,
    },
    {
      name: 'RST_STREAM REFUSED_STREAM: UNAVAILABLE',
      answer: (stream) => stream.close(http2.constants.NGHTTP2_REFUSED_STREAM),
      code: status.UNAVAILABLE,
      details: /refused the stream/,
    },
    {
      name: 'the connection drops mid-call: UNAVAILABLE',
      answer: (stream) => {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
        stream.write(frame('first'), () => stream.session?.destroy());
      },
      code: status.UNAVAILABLE,
      details: /the agent closed the connection|connection to the agent/,
    },
  ];
  for (const { name, answer, code, details } of cases) {
    test(name, async () => {
      await serve(answer);
      const result = await outcome(newClient().serverStream(TEXT, 's'));
      assert.equal(result.status.code, code, `${statusName(result.status.code)}: ${result.status.details}`);
      assert.match(result.status.details, details);
      assert.equal(result.errors.length, 1);
      assert.equal(result.errors[0]?.code, code);
      assert.deepEqual(result.events, expectedEvents(result), 'messages, then error, then status, once each');
    });
  }

  test('after a hostile answer the connection still serves the next call', async () => {
    let calls = 0;
    await serve((stream) => {
      calls += 1;
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.end(calls === 1 ? frame('zzz', true) : frame('fine'));
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
    });
    const c = newClient();
    assert.equal((await outcome(c.serverStream(TEXT, 's'))).status.code, status.INTERNAL);
    assert.deepEqual((await outcome(c.serverStream(TEXT, 's'))).messages, ['fine']);
  });
});

describe('H2GrpcClient: connections', () => {
  test('no socket: UNAVAILABLE naming ENOENT; calls fail fast during the backoff; once the socket exists, calls succeed', async () => {
    const c = newClient({ reconnectBackoffInitialMs: 300, reconnectBackoffMaxMs: 300 });
    const first = await outcome(c.serverStream(TEXT, 's'));
    assert.equal(first.status.code, status.UNAVAILABLE);
    assert.match(first.status.details, /ENOENT/);
    await serve((stream) => {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
      stream.write(frame('up'));
    });
    // Within the backoff: no dial, the same reason.
    const fast = await outcome(c.serverStream(TEXT, 's'));
    assert.equal(fast.status.code, status.UNAVAILABLE);
    assert.match(fast.status.details, /cannot reach the agent: .*ENOENT/);
    assert.equal(sessions.length, 0);
    await new Promise((resolve) => setTimeout(resolve, 350));
    const call = c.serverStream(TEXT, 's');
    assert.equal(await new Promise<string>((resolve) => call.on('data', resolve)), 'up');
    call.cancel();
  });

  test('GOAWAY: the open call finishes on the old connection, new calls open a new one', async () => {
    let n = 0;
    await serve((stream) => {
      n += 1;
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      if (n === 1) {
        stream.write(frame('before'), () => {
          stream.session?.goaway(http2.constants.NGHTTP2_NO_ERROR, 1);
          // Frames arrive in order: a client that has this message has seen the GOAWAY.
          stream.write(frame('after goaway'));
          setTimeout(() => stream.end(frame('last')), 100);
        });
      } else {
        stream.end(frame('new connection'));
      }
    });
    const c = newClient();
    const first = c.serverStream(TEXT, 's');
    const firstOutcome = outcome(first);
    let received = 0;
    await new Promise<void>((resolve) => first.on('data', () => (++received === 2 ? resolve() : undefined)));
    const second = await outcome(c.serverStream(TEXT, 's'));
    assert.deepEqual(second.messages, ['new connection']);
    assert.deepEqual((await firstOutcome).messages, ['before', 'after goaway', 'last']);
    assert.equal((await firstOutcome).status.code, status.OK);
    assert.equal(sessions.length, 2);
  });

  test('keepalive: an agent that stops answering fails the open calls with UNAVAILABLE', async () => {
    // Accepts the connection and says nothing at all (no SETTINGS, no PING ack).
    const silent = net.createServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(socketPath, resolve));
    try {
      const c = newClient({ keepaliveIntervalMs: 50, keepaliveTimeoutMs: 100 });
      const started = performance.now();
      const result = await outcome(c.serverStream(TEXT, 's'));
      assert.equal(result.status.code, status.UNAVAILABLE);
      assert.match(result.status.details, /did not answer a keepalive ping within 100 ms/);
      assert.ok(performance.now() - started < 5000);
    } finally {
      silent.close();
    }
  });

  test('close(): an open call finishes; new calls fail with UNAVAILABLE', async () => {
    let release!: () => void;
    await serve((stream) => {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.write(frame('before close'));
      release = () => stream.end(frame('after close'));
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
    });
    const c = newClient();
    const open = c.serverStream(TEXT, 's');
    const openOutcome = outcome(open);
    await new Promise<void>((resolve) => open.on('data', () => resolve()));
    c.close();
    const refused = await outcome(c.serverStream(TEXT, 's'));
    assert.equal(refused.status.code, status.UNAVAILABLE);
    assert.match(refused.status.details, /closed/);
    release();
    const finished = await openOutcome;
    assert.deepEqual(finished.messages, ['before close', 'after close']);
    assert.equal(finished.status.code, status.OK);
  });

  test('a call left open on a connection the agent closed (GOAWAY) fails after one keepalive period', async () => {
    await serve((stream) => {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
      stream.write(frame('first'), () => {
        stream.session?.goaway(http2.constants.NGHTTP2_NO_ERROR, 1);
        stream.write(frame('never ends'));
      });
    });
    const c = newClient({ keepaliveIntervalMs: 100, keepaliveTimeoutMs: 100 });
    const started = performance.now();
    const result = await outcome(c.serverStream(TEXT, 's'));
    assert.deepEqual(result.messages, ['first', 'never ends']);
    assert.equal(result.status.code, status.UNAVAILABLE);
    assert.match(result.status.details, /did not end within one keepalive period/);
    assert.ok(performance.now() - started >= 150, 'not before the period');
  });

  test('cancel() resets a stream the agent answered with an error but left open', async () => {
    let serverSideClosed: Promise<number> | undefined;
    await serve((stream) => {
      serverSideClosed = new Promise((resolve) => stream.on('close', () => resolve(stream.rstCode)));
      stream.respond({ ':status': 503 }); // no endStream
    });
    const c = newClient();
    const call = c.serverStream(TEXT, 's');
    const result = outcome(call);
    await new Promise((resolve) => setTimeout(resolve, 200)); // the 503 arrives (the status below proves it did)
    call.cancel();
    assert.equal((await result).status.code, status.UNAVAILABLE, "the agent's answer stands");
    assert.equal(await serverSideClosed, http2.constants.NGHTTP2_CANCEL);
  });
});
