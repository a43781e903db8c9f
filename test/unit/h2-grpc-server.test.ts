/**
 * The driver's own gRPC server for kubelet, against grpc-js's client (what
 * kubelet's grpc-go client does on the wire) and against raw HTTP/2 requests
 * that no gRPC client would send: wrong method or content type, compressed,
 * missing, doubled, torn, oversized or undecodable messages, a malformed
 * deadline.
 */
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import path from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { H2GrpcServer, MAX_REQUEST_BYTES, encodeGrpcMessage, type UnaryMethodHandler } from '../../src/csi/h2-grpc-server.js';
import { CSI_IDENTITY_METHODS, CSI_IDENTITY_SERVICE_NAME } from '../../src/csi/messages.js';
import { DriverError } from '../../src/errors.js';
import { status } from '../../src/grpc-status.js';
import { csiIdentityService } from '../support/grpc-services.js';
import { makeScratchDir, removeScratchDir } from '../support/scratch.js';

let dir: string;
let socketPath: string;
let server: H2GrpcServer | undefined;
let client: grpc.Client | undefined;

beforeEach(async () => {
  dir = await makeScratchDir('h2-server');
  socketPath = path.join(dir, 'csi.sock');
});

afterEach(async () => {
  client?.close();
  client = undefined;
  await server?.close();
  server = undefined;
  await removeScratchDir(dir);
});

async function serve(handlers: Record<string, UnaryMethodHandler>): Promise<void> {
  server = new H2GrpcServer([{ methods: CSI_IDENTITY_METHODS, handlers }]);
  await server.listen(socketPath);
}

type UnaryClientMethod = (
  request: object,
  options: grpc.CallOptions,
  callback: (err: grpc.ServiceError | null, response?: unknown) => void,
) => grpc.ClientUnaryCall;

function callIdentity(method: string, request: object = {}, options: grpc.CallOptions = {}): Promise<unknown> {
  const Client = csiIdentityService();
  client ??= new Client(`unix:${socketPath}`, grpc.credentials.createInsecure());
  const fn = (client as unknown as Record<string, UnaryClientMethod>)[method] as UnaryClientMethod;
  return new Promise((resolve, reject) => {
    fn.call(client, request, options, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

/** One raw HTTP/2 request: the response headers (or trailers-only block) and the trailers. */
async function rawCall(
  headers: http2.OutgoingHttpHeaders,
  body: Buffer,
): Promise<{ headers: http2.IncomingHttpHeaders; trailers: http2.IncomingHttpHeaders | undefined; data: Buffer }> {
  const session = http2.connect('http://localhost', { createConnection: () => net.connect(socketPath) });
  try {
    return await new Promise((resolve, reject) => {
      const stream = session.request(
        { ':method': 'POST', ':path': `/${CSI_IDENTITY_SERVICE_NAME}/Probe`, 'content-type': 'application/grpc', te: 'trailers', ...headers },
        { endStream: false },
      );
      let responseHeaders: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders | undefined;
      const chunks: Buffer[] = [];
      stream.on('response', (h) => (responseHeaders = h));
      stream.on('trailers', (t: http2.IncomingHttpHeaders) => {
        trailers = t;
      });
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      stream.on('close', () => resolve({ headers: responseHeaders, trailers, data: Buffer.concat(chunks) }));
      stream.on('error', reject);
      stream.end(body);
    });
  } finally {
    session.close();
  }
}

function frame(payload: Buffer, compressed = false): Buffer {
  const header = Buffer.alloc(5);
  header[0] = compressed ? 1 : 0;
  header.writeUInt32BE(payload.length, 1);
  return Buffer.concat([header, payload]);
}

const probeOk: UnaryMethodHandler = async () => ({ ready: { value: true } });

describe('H2GrpcServer: calls from a gRPC client', () => {
  test('a unary call: the decoded request in, the response out', async () => {
    let seen: unknown;
    await serve({
      GetPluginInfo: async (request) => {
        seen = request;
        return { name: 'csi.spire.io', vendor_version: '1.2.3', manifest: { a: 'b' } };
      },
    });
    assert.deepEqual(await callIdentity('GetPluginInfo'), { name: 'csi.spire.io', vendor_version: '1.2.3', manifest: { a: 'b' } });
    assert.deepEqual(seen, {});
  });

  test('a DriverError: its code, and its message byte for byte (non-ASCII and "%" included)', async () => {
    const message = 'volume "ä" 100% gone:\nretry ✓';
    await serve({ Probe: async () => Promise.reject(new DriverError(status.FAILED_PRECONDITION, message)) });
    await assert.rejects(callIdentity('Probe'), (err: grpc.ServiceError) => {
      assert.equal(err.code, status.FAILED_PRECONDITION);
      assert.equal(err.details, message);
      return true;
    });
    assert.equal(encodeGrpcMessage('a%b ä'), 'a%25b %C3%A4');
  });

  test('anything else thrown: INTERNAL naming the method', async () => {
    await serve({ Probe: async () => Promise.reject(new TypeError('boom')) });
    await assert.rejects(callIdentity('Probe'), { code: status.INTERNAL, details: 'internal error in Probe: boom' });
  });

  test('a method the service has but the driver does not serve: UNIMPLEMENTED', async () => {
    await serve({ Probe: probeOk });
    await assert.rejects(callIdentity('GetPluginCapabilities'), { code: status.UNIMPLEMENTED });
  });

  test("the caller's deadline: DEADLINE_EXCEEDED, and the handler's signal aborts", async () => {
    let aborted: Promise<void> | undefined;
    await serve({
      Probe: (_request, signal) => {
        aborted = new Promise((resolve) => signal.addEventListener('abort', () => resolve()));
        return new Promise(() => undefined);
      },
    });
    await assert.rejects(callIdentity('Probe', {}, { deadline: Date.now() + 300 }), { code: status.DEADLINE_EXCEEDED });
    await aborted;
  });

  test("the caller's cancel aborts the handler's signal", async () => {
    let aborted = false;
    let started: () => void = () => undefined;
    const running = new Promise<void>((resolve) => (started = resolve));
    await serve({
      Probe: (_request, signal) => {
        started();
        return new Promise((resolve) => signal.addEventListener('abort', () => ((aborted = true), resolve({}))));
      },
    });
    const Client = csiIdentityService();
    client = new Client(`unix:${socketPath}`, grpc.credentials.createInsecure());
    const call = (client as unknown as Record<string, UnaryClientMethod>)['Probe']?.call(client, {}, {}, () => undefined);
    await running;
    call?.cancel();
    for (let i = 0; i < 100 && !aborted; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    assert.ok(aborted);
  });

  test('close(): a call in progress finishes; afterwards nothing connects', async () => {
    let release: () => void = () => undefined;
    let started: () => void = () => undefined;
    const running = new Promise<void>((resolve) => (started = resolve));
    await serve({
      Probe: () => {
        started();
        return new Promise((resolve) => (release = () => resolve({ ready: { value: true } })));
      },
    });
    const answered = callIdentity('Probe');
    await running;
    const closed = server?.close();
    server = undefined;
    release();
    assert.deepEqual(await answered, { ready: { value: true } });
    await closed;
    client?.close();
    client = undefined;
    await assert.rejects(callIdentity('Probe', {}, { deadline: Date.now() + 1000 }), { code: status.UNAVAILABLE });
  });

  test('many calls at once on one connection are all answered', async () => {
    await serve({ Probe: async () => new Promise((resolve) => setTimeout(() => resolve({ ready: { value: true } }), 5)) });
    const answers = await Promise.all(Array.from({ length: 600 }, () => callIdentity('Probe')));
    assert.equal(answers.length, 600);
  });
});

describe('H2GrpcServer: requests no gRPC client sends', () => {
  const grpcStatus = (result: { headers: http2.IncomingHttpHeaders; trailers: http2.IncomingHttpHeaders | undefined }): number =>
    Number(result.headers['grpc-status'] ?? result.trailers?.['grpc-status']);

  test('GET: HTTP 405; another content type: HTTP 415', async () => {
    await serve({ Probe: probeOk });
    assert.equal((await rawCall({ ':method': 'GET' }, Buffer.alloc(0))).headers[':status'], 405);
    assert.equal((await rawCall({ 'content-type': 'application/json' }, Buffer.from('{}'))).headers[':status'], 415);
  });

  const cases: Array<[string, Buffer, number, RegExp]> = [
    ['no message', Buffer.alloc(0), status.INTERNAL, /no message/],
    ['a torn header', Buffer.from([0, 0, 0]), status.INTERNAL, /inside a message header/],
    ['a torn message', frame(Buffer.alloc(10)).subarray(0, 9), status.INTERNAL, /inside its message/],
    ['two messages', Buffer.concat([frame(Buffer.alloc(0)), frame(Buffer.alloc(0))]), status.INTERNAL, /more than one message/],
    ['a compressed message', frame(Buffer.from([1, 2, 3]), true), status.UNIMPLEMENTED, /identity encoding only/],
    ['bytes that do not decode', frame(Buffer.from([0x0a, 0xff, 0xff, 0xff])), status.INTERNAL, /does not decode/],
    ['over 4 MiB', frame(Buffer.alloc(MAX_REQUEST_BYTES + 1)), status.RESOURCE_EXHAUSTED, /larger than 4194304 bytes/],
    [
      'a header declaring over 4 MiB, before the bytes come',
      frame(Buffer.alloc(MAX_REQUEST_BYTES + 1)).subarray(0, 64),
      status.RESOURCE_EXHAUSTED,
      /larger than 4194304 bytes/,
    ],
  ];
  for (const [name, body, code, message] of cases) {
    test(`${name}: ${code}, and the handler never runs`, async () => {
      let ran = false;
      await serve({ Probe: async () => ((ran = true), { ready: { value: true } }) });
      const result = await rawCall({}, body);
      assert.equal(result.headers[':status'], 200);
      assert.equal(grpcStatus(result), code);
      assert.match(decodeURIComponent(String(result.headers['grpc-message'] ?? result.trailers?.['grpc-message'])), message);
      assert.equal(ran, false);
    });
  }

  test('a malformed grpc-timeout: INTERNAL; one beyond a timer (99999999S) is no deadline', async () => {
    await serve({ Probe: probeOk });
    const bad = await rawCall({ 'grpc-timeout': '123456789S' }, frame(Buffer.alloc(0)));
    assert.equal(grpcStatus(bad), status.INTERNAL);
    const far = await rawCall({ 'grpc-timeout': '99999999S' }, frame(Buffer.alloc(0)));
    assert.equal(grpcStatus(far), status.OK);
    assert.ok(far.data.length >= 5, 'the response message');
  });

  test("the server's own deadline: DEADLINE_EXCEEDED from the server, with the stream still open, and the handler's signal aborted", async () => {
    let aborted = false;
    await serve({ Probe: (_request, signal) => new Promise(() => signal.addEventListener('abort', () => (aborted = true))) });
    const started = performance.now();
    // A raw client that enforces nothing itself and never resets the stream.
    const result = await rawCall({ 'grpc-timeout': '150m' }, frame(Buffer.alloc(0)));
    assert.equal(grpcStatus(result), status.DEADLINE_EXCEEDED);
    assert.ok(performance.now() - started >= 140, 'not before the deadline');
    assert.ok(aborted);
  });

  test('after hostile requests the server still answers', async () => {
    await serve({ Probe: probeOk });
    await rawCall({}, frame(Buffer.from([1]), true));
    await rawCall({ ':method': 'GET' }, Buffer.alloc(0));
    assert.deepEqual(await callIdentity('Probe'), { ready: { value: true } });
  });
});
