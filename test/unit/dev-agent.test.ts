/**
 * Drives the development SPIRE agent through a real @grpc/grpc-js client on its
 * Unix socket and checks it behaves as docs/design.md facts F1–F9 say the real
 * agent does (e2e/agent-contract.test.ts checks the real one) — the driver's integration tests lean on every one of
 * these behaviours.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { delegatedIdentityService } from '../support/grpc-services.js';
import { createLocalJWKSet, jwtVerify, type JSONWebKeySet } from 'jose';
import {
  type FetchJwtSvidsResponse,
  type SubscribeToJwtBundlesResponse,
  type SubscribeToX509BundlesResponse,
  type SubscribeToX509SvidsRequest,
  type SubscribeToX509SvidsResponse,
} from '../../src/spire/messages.js';
import { splitConcatenatedDer } from '../../src/x509/pem.js';
import { makeScratchDir, removeScratchDir } from '../support/scratch.js';
import { DevAgent, type DevAgentOptions } from '../support/dev-agent/dev-agent.js';
import { mintCa, mintEcSec1KeyDer, mintRsaPkcs1KeyDer, mintSvid } from '../support/certs.js';

interface DelegatedIdentityClient extends grpc.Client {
  SubscribeToX509SVIDs(request: SubscribeToX509SvidsRequest): grpc.ClientReadableStream<SubscribeToX509SvidsResponse>;
  SubscribeToX509Bundles(request: Record<string, never>): grpc.ClientReadableStream<SubscribeToX509BundlesResponse>;
  FetchJWTSVIDs(
    request: { audience: string[]; selectors: { type: string; value: string }[] },
    callback: (error: grpc.ServiceError | null, response?: FetchJwtSvidsResponse) => void,
  ): grpc.ClientUnaryCall;
  SubscribeToJWTBundles(request: Record<string, never>): grpc.ClientReadableStream<SubscribeToJwtBundlesResponse>;
}

function connect(socketPath: string): DelegatedIdentityClient {
  const Client = delegatedIdentityService();
  return new Client(`unix:${socketPath}`, grpc.credentials.createInsecure()) as unknown as DelegatedIdentityClient;
}

/** Buffers a server stream so tests can await its next message or its final status. */
class StreamReader<T> {
  private readonly queue: T[] = [];
  private failure: grpc.ServiceError | undefined;
  private ended = false;
  private readonly waiters = new Set<() => void>();

  constructor(readonly call: grpc.ClientReadableStream<T>) {
    call.on('data', (message: T) => {
      this.queue.push(message);
      this.notify();
    });
    call.on('error', (error: grpc.ServiceError) => {
      this.failure = error;
      this.notify();
    });
    call.on('end', () => {
      this.ended = true;
      this.notify();
    });
  }

  async next(timeoutMs = 3000): Promise<T> {
    await this.until(() => this.queue.length > 0 || this.failure !== undefined || this.ended, timeoutMs, 'a message');
    const message = this.queue.shift();
    if (message !== undefined) return message;
    throw this.failure ?? new Error('stream ended without a message');
  }

  /** The stream's error status; fails if a message arrives first. */
  async error(timeoutMs = 3000): Promise<grpc.ServiceError> {
    await this.until(() => this.queue.length > 0 || this.failure !== undefined || this.ended, timeoutMs, 'an error');
    assert.equal(this.queue.length, 0, 'expected an error status, got a message');
    if (!this.failure) throw new Error('stream ended with OK, expected an error');
    return this.failure;
  }

  /** Asserts that nothing (no message, no status) arrives for `ms`. */
  async quiet(ms: number): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, ms));
    assert.equal(this.queue.length, 0, 'unexpected message');
    assert.equal(this.failure, undefined, 'unexpected error');
    assert.equal(this.ended, false, 'unexpected end');
  }

  cancel(): void {
    this.call.cancel();
  }

  private notify(): void {
    for (const waiter of this.waiters) waiter();
  }

  private until(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
    if (condition()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const waiter = (): void => {
        if (!condition()) return;
        clearTimeout(timer);
        this.waiters.delete(waiter);
        resolve();
      };
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      this.waiters.add(waiter);
    });
  }
}

interface Harness {
  agent: DevAgent;
  socketPath: string;
  client: DelegatedIdentityClient;
  subscribe: (selectors: string[]) => StreamReader<SubscribeToX509SvidsResponse>;
  bundles: () => StreamReader<SubscribeToX509BundlesResponse>;
}

/** A fresh agent, socket and client per test; everything is torn down even when the test fails. */
async function withAgent(options: Omit<DevAgentOptions, 'socketPath'>, body: (harness: Harness) => Promise<void>): Promise<void> {
  const dir = await makeScratchDir('dev-agent');
  const socketPath = path.join(dir, 'admin.sock');
  const agent = await DevAgent.start({ ...options, socketPath });
  const clients: DelegatedIdentityClient[] = [];
  const readers: StreamReader<unknown>[] = [];
  const client = connect(socketPath);
  clients.push(client);
  const harness: Harness = {
    agent,
    socketPath,
    client,
    subscribe: (selectors) => {
      const reader = new StreamReader(client.SubscribeToX509SVIDs({ selectors: selectors.map(toSelector) }));
      readers.push(reader);
      return reader;
    },
    bundles: () => {
      const reader = new StreamReader(client.SubscribeToX509Bundles({}));
      readers.push(reader);
      return reader;
    },
  };
  try {
    await body(harness);
  } finally {
    for (const reader of readers) reader.cancel();
    for (const c of clients) c.close();
    await agent.close();
    await removeScratchDir(dir);
  }
}

function toSelector(text: string): { type: string; value: string } {
  const colon = text.indexOf(':');
  return { type: text.slice(0, colon), value: text.slice(colon + 1) };
}

function leafOf(response: SubscribeToX509SvidsResponse, index = 0): X509Certificate {
  const der = response.x509_svids[index]?.x509_svid?.cert_chain[0];
  assert.ok(der, `response has no SVID at index ${index}`);
  return new X509Certificate(der);
}

const POD_SELECTORS = ['k8s:ns:default', 'k8s:sa:web', 'k8s:pod-uid:1234', 'k8s:pod-name:web-0', 'k8s:node-name:n1'];
const WEB_ID = 'spiffe://example.org/ns/default/sa/web';

describe('certs', () => {
  it('mints a SPIRE-shaped CA and X.509-SVID', async () => {
    const ca = await mintCa({ trustDomain: 'example.org' });
    const caCert = new X509Certificate(ca.certDer);
    assert.equal(caCert.ca, true);
    assert.equal(caCert.subjectAltName, 'URI:spiffe://example.org');
    assert.equal(caCert.serialNumber.toLowerCase(), ca.serialHex);

    const svid = await mintSvid({ ca, spiffeId: WEB_ID });
    const leaf = new X509Certificate(svid.certDer);
    assert.equal(leaf.ca, false);
    assert.equal(leaf.subjectAltName, `URI:${WEB_ID}`);
    assert.ok(leaf.verify(caCert.publicKey));
    assert.ok(leaf.checkPrivateKey(createPrivateKey({ key: svid.keyPkcs8Der, format: 'der', type: 'pkcs8' })));
    assert.equal(new Date(leaf.validTo).getTime(), svid.notAfter.getTime());
    const backdate = Date.now() - new Date(leaf.validFrom).getTime();
    assert.ok(backdate >= 9_000 && backdate <= 12_000, `NotBefore backdated ~10 s, got ${backdate} ms`);
    assert.deepEqual(svid.certChain, [svid.certDer]);
  });

  it('mints deliberately broken material on request', async () => {
    const ca = await mintCa({ trustDomain: 'example.org' });
    const twoUris = await mintSvid({ ca, spiffeId: WEB_ID, extraUriSans: ['spiffe://example.org/other'], dnsNames: ['web'] });
    assert.equal(new X509Certificate(twoUris.certDer).subjectAltName, `URI:${WEB_ID}, URI:spiffe://example.org/other, DNS:web`);
    const noSan = await mintSvid({ ca, spiffeId: WEB_ID, uriSans: [] });
    assert.equal(new X509Certificate(noSan.certDer).subjectAltName, undefined);
    const other = await mintSvid({ ca, spiffeId: WEB_ID });
    assert.equal(
      new X509Certificate(twoUris.certDer).checkPrivateKey(createPrivateKey({ key: other.keyPkcs8Der, format: 'der', type: 'pkcs8' })),
      false,
    );
    for (const der of [mintRsaPkcs1KeyDer(), mintEcSec1KeyDer()]) {
      assert.throws(() => createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }));
    }
    const intermediate = await mintCa({ trustDomain: 'example.org', parent: ca });
    const chained = await mintSvid({ ca: intermediate, spiffeId: WEB_ID });
    assert.deepEqual(chained.certChain, [chained.certDer, intermediate.certDer]);
  });
});

describe('DevAgent', () => {
  it('answers a subscription that matches nothing at once with an empty response and keeps it open', async () => {
    await withAgent({}, async ({ agent, subscribe }) => {
      await agent.addEntry({ spiffeId: WEB_ID, selectors: ['k8s:ns:other'] });
      const stream = subscribe(POD_SELECTORS);
      assert.deepEqual(await stream.next(), { x509_svids: [], federates_with: [] });
      await stream.quiet(150);
      assert.equal(agent.openSvidStreams(), 1);
      stream.cancel();
      await agent.waitForSvidStreams(0, 2000);
    });
  });

  it('matches when all of the entry selectors are in the request, extra request selectors allowed', async () => {
    await withAgent({}, async ({ agent, subscribe }) => {
      const id = await agent.addEntry({ spiffeId: WEB_ID, selectors: ['k8s:ns:default', 'k8s:sa:web'], hint: 'web' });
      const response = await subscribe(POD_SELECTORS).next();
      assert.equal(response.x509_svids.length, 1);
      const svid = response.x509_svids[0]!;
      const current = agent.currentSvid(id);
      assert.deepEqual(svid.x509_svid?.id, { trust_domain: 'example.org', path: '/ns/default/sa/web' });
      assert.equal(svid.x509_svid?.hint, 'web');
      assert.equal(svid.x509_svid?.cert_chain.length, 1);
      assert.ok(svid.x509_svid?.cert_chain[0]?.equals(current.certDer));
      assert.ok(svid.x509_svid_key.equals(current.keyPkcs8Der));
      assert.equal(svid.x509_svid?.expires_at, current.notAfter.getTime() / 1000);
      const leaf = leafOf(response);
      assert.equal(leaf.serialNumber.toLowerCase(), current.serialHex);
      assert.ok(leaf.verify(new X509Certificate(agent.bundleDers()[0]!).publicKey));
      assert.ok(leaf.checkPrivateKey(createPrivateKey({ key: svid.x509_svid_key, format: 'der', type: 'pkcs8' })));

      // Missing one of the entry's selectors: no match, and still no error.
      const missing = await subscribe(['k8s:ns:default', 'k8s:pod-uid:1234']).next();
      assert.deepEqual(missing.x509_svids, []);
    });
  });

  it('sorts identities by entry ID, skips admin entries and lists only held federated bundles', async () => {
    await withAgent({}, async ({ agent, subscribe }) => {
      const otherCa = await mintCa({ trustDomain: 'other.org' });
      agent.setFederatedBundle('spiffe://other.org', [otherCa.certDer]);
      await agent.addEntry({
        id: 'b',
        spiffeId: 'spiffe://example.org/b',
        selectors: ['k8s:ns:default'],
        federatesWith: ['other.org', 'missing.org'],
      });
      await agent.addEntry({ id: 'a', spiffeId: 'spiffe://example.org/a', selectors: ['k8s:sa:web'] });
      await agent.addEntry({ id: '0', spiffeId: 'spiffe://example.org/admin', selectors: ['k8s:ns:default'], admin: true });
      const response = await subscribe(POD_SELECTORS).next();
      assert.deepEqual(
        response.x509_svids.map((s) => s.x509_svid?.id?.path),
        ['/a', '/b'],
      );
      assert.deepEqual(response.federates_with, ['spiffe://other.org']);
    });
  });

  it('rejects malformed requests like SPIRE >= 1.10.2 and records every selector set', async () => {
    await withAgent({}, async ({ agent, client }) => {
      const cases: { request: SubscribeToX509SvidsRequest; code: grpc.status; details: RegExp }[] = [
        { request: { selectors: [] }, code: grpc.status.INVALID_ARGUMENT, details: /^must provide either selectors or non-zero PID, but not both$/ },
        {
          request: { selectors: [toSelector('k8s:ns:a')], pid: 42 },
          code: grpc.status.INVALID_ARGUMENT,
          details: /^must provide either selectors or non-zero PID, but not both$/,
        },
        {
          request: { selectors: [{ type: '', value: 'ns:a' }] },
          code: grpc.status.INVALID_ARGUMENT,
          details: /^could not parse provided selectors$/,
        },
        {
          request: { selectors: [{ type: 'k8s:ns', value: 'a' }] },
          code: grpc.status.INVALID_ARGUMENT,
          details: /^could not parse provided selectors$/,
        },
        { request: { selectors: [{ type: 'k8s', value: '' }] }, code: grpc.status.INVALID_ARGUMENT, details: /^could not parse provided selectors$/ },
        { request: { selectors: [], pid: 42 }, code: grpc.status.UNIMPLEMENTED, details: /only supports selectors/ },
      ];
      for (const { request, code, details } of cases) {
        const error = await new StreamReader(client.SubscribeToX509SVIDs(request)).error();
        assert.equal(error.code, code, JSON.stringify(request));
        assert.match(error.details, details);
      }
      assert.deepEqual(
        agent.receivedSelectorSets(),
        cases.map((c) => c.request.selectors),
      );
      assert.equal(agent.openSvidStreams(), 0);

      // FetchJWTSVIDs, unlike the X.509 stream, answers "nothing matches" with an error (service.go).
      const jwt = await new Promise<grpc.ServiceError | null>((resolve) =>
        client.FetchJWTSVIDs({ audience: ['x'], selectors: [toSelector('k8s:ns:a')] }, resolve),
      );
      assert.equal(jwt?.code, grpc.status.PERMISSION_DENIED);
      assert.equal(jwt?.details, 'no identity issued');
      const noAudience = await new Promise<grpc.ServiceError | null>((resolve) =>
        client.FetchJWTSVIDs({ audience: [], selectors: [toSelector('k8s:ns:a')] }, resolve),
      );
      assert.equal(noAudience?.code, grpc.status.INVALID_ARGUMENT);
      assert.equal(noAudience?.details, 'audience must be specified');
    });
  });

  it('denies an unauthorized caller with both SPIRE messages, on SVID and bundle streams', async () => {
    await withAgent({ callerAuthorization: 'no-entry' }, async ({ agent, subscribe, bundles }) => {
      let error = await subscribe(POD_SELECTORS).error();
      assert.equal(error.code, grpc.status.PERMISSION_DENIED);
      assert.equal(error.details, 'no identity issued');
      error = await bundles().error();
      assert.equal(error.code, grpc.status.PERMISSION_DENIED);
      assert.equal(error.details, 'no identity issued');

      agent.setCallerAuthorization('not-delegate');
      error = await subscribe(POD_SELECTORS).error();
      assert.equal(error.code, grpc.status.PERMISSION_DENIED);
      assert.equal(error.details, 'caller not configured as an authorized delegate');
      // Authorization is checked before validation, as in the agent.
      error = await subscribe([]).error();
      assert.equal(error.code, grpc.status.PERMISSION_DENIED);
    });
  });

  it('re-checks authorization before each later message, not by itself', async () => {
    await withAgent({}, async ({ agent, subscribe, bundles }) => {
      const id = await agent.addEntry({ spiffeId: WEB_ID, selectors: ['k8s:ns:default'] });
      const svids = subscribe(POD_SELECTORS);
      const bundleStream = bundles();
      await svids.next();
      await bundleStream.next();
      agent.setCallerAuthorization('not-delegate');
      await svids.quiet(100);
      await agent.rotateSvids(id);
      const error = await svids.error();
      assert.equal(error.code, grpc.status.PERMISSION_DENIED);
      assert.equal(error.details, 'caller not configured as an authorized delegate');
      await bundleStream.quiet(50);
      await agent.rotateCa();
      assert.equal((await bundleStream.error()).code, grpc.status.PERMISSION_DENIED);
      assert.equal(agent.openSvidStreams(), 0);
      assert.equal(agent.openBundleStreams(), 0);
    });
  });

  it('pushes an entry added later: first a snapshot without its SVID, then with it', async () => {
    await withAgent({}, async ({ agent, subscribe }) => {
      const stream = subscribe(POD_SELECTORS);
      assert.deepEqual((await stream.next()).x509_svids, []);
      // An entry the stream's selectors do not cover must not wake it.
      await agent.addEntry({ spiffeId: 'spiffe://example.org/x', selectors: ['k8s:ns:kube-system'] });
      const id = await agent.addEntry({ spiffeId: WEB_ID, selectors: ['k8s:ns:default', 'k8s:pod-uid:1234'] });
      assert.deepEqual((await stream.next()).x509_svids, [], 'the entry is seen before its SVID is signed (docs/design.md fact F6)');
      const withSvid = await stream.next();
      assert.equal(leafOf(withSvid).serialNumber.toLowerCase(), agent.currentSvid(id).serialHex);
      await stream.quiet(100);
    });
  });

  it('sends an empty snapshot when the entry is removed and keeps the stream open', async () => {
    await withAgent({}, async ({ agent, subscribe }) => {
      const id = await agent.addEntry({ spiffeId: WEB_ID, selectors: ['k8s:ns:default'] });
      const stream = subscribe(POD_SELECTORS);
      assert.equal((await stream.next()).x509_svids.length, 1);
      assert.equal(agent.removeEntry(id), true);
      assert.deepEqual(await stream.next(), { x509_svids: [], federates_with: [] });
      await stream.quiet(100);
      assert.equal(agent.openSvidStreams(), 1);
      assert.deepEqual(agent.listEntries(), []);
    });
  });

  it('rotates an SVID with a new key and serial', async () => {
    await withAgent({}, async ({ agent, subscribe }) => {
      const id = await agent.addEntry({ spiffeId: WEB_ID, selectors: ['k8s:ns:default'] });
      const stream = subscribe(POD_SELECTORS);
      const before = await stream.next();
      await agent.rotateSvids(id);
      const after = await stream.next();
      assert.notEqual(leafOf(after).serialNumber, leafOf(before).serialNumber);
      assert.ok(!after.x509_svids[0]!.x509_svid_key.equals(before.x509_svids[0]!.x509_svid_key));
      assert.equal(leafOf(after).serialNumber.toLowerCase(), agent.currentSvid(id).serialHex);
    });
  });

  it('auto-rotates at half the SVID lifetime', async () => {
    await withAgent({ autoRotate: true, svidTtlSeconds: 2 }, async ({ agent, subscribe }) => {
      await agent.addEntry({ spiffeId: WEB_ID, selectors: ['k8s:ns:default'] });
      const stream = subscribe(POD_SELECTORS);
      const first = leafOf(await stream.next()).serialNumber;
      const started = Date.now();
      const second = leafOf(await stream.next(2500)).serialNumber;
      assert.notEqual(second, first);
      assert.ok(Date.now() - started < 2000, 'rotated around the 1 s half-life');
    });
  });

  it('rotates the CA: bundle with both CAs, identical SVIDs re-sent, then SVIDs from the new CA', async () => {
    await withAgent({}, async ({ agent, subscribe, bundles }) => {
      const id = await agent.addEntry({ spiffeId: WEB_ID, selectors: ['k8s:ns:default'] });
      const noMatch = subscribe(['k8s:ns:nothing']);
      const stream = subscribe(POD_SELECTORS);
      const bundleStream = bundles();
      const initialBundle = await bundleStream.next();
      assert.deepEqual(Object.keys(initialBundle.ca_certificates), ['spiffe://example.org']);
      const oldCa = agent.bundleDers()[0]!;
      assert.deepEqual(splitConcatenatedDer(initialBundle.ca_certificates['spiffe://example.org']!), [oldCa]);
      const before = await stream.next();
      await noMatch.next();

      await agent.rotateCa();
      const [, newCa] = agent.bundleDers();
      assert.ok(newCa);
      const duringRotation = await bundleStream.next();
      assert.deepEqual(splitConcatenatedDer(duringRotation.ca_certificates['spiffe://example.org']!), [oldCa, newCa]);
      assert.deepEqual(await stream.next(), before, 'a bundle change re-sends byte-identical SVIDs');
      assert.deepEqual((await noMatch.next()).x509_svids, [], 'every subscriber is notified');
      const rotated = await stream.next();
      assert.ok(leafOf(rotated).verify(new X509Certificate(newCa).publicKey));
      assert.equal(leafOf(rotated).serialNumber.toLowerCase(), agent.currentSvid(id).serialHex);

      agent.dropOldCa();
      const afterDrop = await bundleStream.next();
      assert.deepEqual(splitConcatenatedDer(afterDrop.ca_certificates['spiffe://example.org']!), [newCa]);
      assert.deepEqual(await stream.next(), rotated);
      await bundleStream.quiet(50);
    });
  });

  it('streams federated bundles that an entry federates with and notifies its subscribers', async () => {
    await withAgent({}, async ({ agent, subscribe, bundles }) => {
      await agent.addEntry({ spiffeId: WEB_ID, selectors: ['k8s:ns:default'], federatesWith: ['spiffe://other.org'] });
      const stream = subscribe(POD_SELECTORS);
      const bundleStream = bundles();
      assert.deepEqual((await stream.next()).federates_with, []);
      await bundleStream.next();
      const otherCa = await mintCa({ trustDomain: 'other.org' });
      agent.setFederatedBundle('other.org', [otherCa.certDer]);
      const bundle = await bundleStream.next();
      assert.ok(bundle.ca_certificates['spiffe://other.org']?.equals(otherCa.certDer));
      assert.deepEqual((await stream.next()).federates_with, ['spiffe://other.org']);
    });
  });

  it('delays the first response of a matching stream, never of a non-matching one', async () => {
    await withAgent({ firstResponseDelayMs: 400 }, async ({ agent, subscribe }) => {
      await agent.addEntry({ spiffeId: WEB_ID, selectors: ['k8s:ns:default'] });
      const started = Date.now();
      const matching = subscribe(POD_SELECTORS);
      const empty = subscribe(['k8s:ns:nothing']);
      await empty.next();
      assert.ok(Date.now() - started < 300, 'no-match answer is immediate');
      assert.equal((await matching.next()).x509_svids.length, 1);
      assert.ok(Date.now() - started >= 390, `first response after the delay, got ${Date.now() - started} ms`);
      agent.setFirstResponseDelay(0);
      const t1 = Date.now();
      await subscribe(POD_SELECTORS).next();
      assert.ok(Date.now() - t1 < 300);
    });
  });

  it('restarts: open streams fail, the socket is gone while down, a new client connects afterwards', async () => {
    await withAgent({}, async ({ agent, socketPath, subscribe, bundles }) => {
      const id = await agent.addEntry({ spiffeId: WEB_ID, selectors: ['k8s:ns:default'] });
      const stream = subscribe(POD_SELECTORS);
      const bundleStream = bundles();
      await stream.next();
      await bundleStream.next();
      assert.equal((await fs.stat(socketPath)).mode & 0o777, 0o770);

      await agent.stop();
      // The connection is cut as if the agent died: UNAVAILABLE, not CANCELLED.
      assert.equal((await stream.error()).code, grpc.status.UNAVAILABLE);
      assert.equal((await bundleStream.error()).code, grpc.status.UNAVAILABLE);
      await assert.rejects(fs.stat(socketPath), { code: 'ENOENT' });
      assert.equal(agent.openSvidStreams(), 0);

      await agent.restart({ downtimeMs: 100 });
      const stat = await fs.stat(socketPath);
      assert.ok(stat.isSocket());
      assert.equal(stat.mode & 0o777, 0o770);
      const client = connect(socketPath);
      try {
        const reader = new StreamReader(client.SubscribeToX509SVIDs({ selectors: POD_SELECTORS.map(toSelector) }));
        const response = await reader.next();
        assert.equal(leafOf(response).serialNumber.toLowerCase(), agent.currentSvid(id).serialHex, 'same SVID after restart');
        reader.cancel();
      } finally {
        client.close();
      }
    });
  });

  it('replaces a stale file at the socket path on start', async () => {
    const dir = await makeScratchDir('dev-agent-stale');
    const socketPath = path.join(dir, 'admin.sock');
    await fs.writeFile(socketPath, 'stale');
    const agent = await DevAgent.start({ socketPath });
    try {
      assert.ok((await fs.stat(socketPath)).isSocket());
    } finally {
      await agent.close();
      await removeScratchDir(dir);
    }
  });

  it('serves injected SVID material exactly as given', async () => {
    await withAgent({}, async ({ agent, subscribe }) => {
      const id = await agent.addEntry({ spiffeId: WEB_ID, selectors: ['k8s:ns:default'] });
      const stream = subscribe(POD_SELECTORS);
      await stream.next();
      const bad = await mintSvid({ ca: agent.activeCa(), spiffeId: WEB_ID, notAfter: new Date(Date.now() - 1000) });
      const key = mintRsaPkcs1KeyDer();
      agent.replaceSvid(id, { certChain: [bad.certDer], keyPkcs8Der: key });
      const response = await stream.next();
      assert.ok(response.x509_svids[0]?.x509_svid_key.equals(key));
      assert.equal(response.x509_svids[0]?.x509_svid?.expires_at, bad.notAfter.getTime() / 1000);
      assert.equal(agent.currentSvid(id).serialHex, bad.serialHex);
    });
  });
});

describe('JWT-SVIDs (e2e/agent-contract.test.ts checks the same against the real agent)', () => {
  it('one token per matching entry with every audience, cached until half its life, verifying against the JWKS of SubscribeToJWTBundles', async () => {
    await withAgent({ jwtSvidTtlSeconds: 120 }, async ({ agent, client }) => {
      await agent.addEntry({ spiffeId: 'spiffe://example.org/jwt', selectors: ['k8s:ns:a'], hint: 'h' });
      await agent.addEntry({ spiffeId: 'spiffe://example.org/admin', selectors: ['k8s:ns:a'], admin: true });
      const fetch = (): Promise<FetchJwtSvidsResponse> =>
        new Promise((resolve, reject) =>
          client.FetchJWTSVIDs({ audience: ['a', 'b'], selectors: [toSelector('k8s:ns:a')] }, (err, response) =>
            err ? reject(err) : resolve(response ?? { svids: [] }),
          ),
        );
      const response = await fetch();
      assert.equal(response.svids.length, 1, 'admin entries are never sent');
      const svid = response.svids[0];
      assert.ok(svid);
      assert.deepEqual(svid.id, { trust_domain: 'example.org', path: '/jwt' });
      assert.equal(svid.hint, 'h');
      assert.equal(svid.expires_at - svid.issued_at, 120);
      assert.equal((await fetch()).svids[0]?.token, svid.token, 'cached while young');

      const bundles = new StreamReader(client.SubscribeToJWTBundles({}));
      try {
        const first = await bundles.next();
        assert.deepEqual(Object.keys(first.bundles), ['spiffe://example.org']);
        const jwks = JSON.parse((first.bundles['spiffe://example.org'] as Buffer).toString('utf8')) as JSONWebKeySet & Record<string, unknown>;
        assert.deepEqual(Object.keys(jwks), ['keys']);
        const { payload } = await jwtVerify(svid.token, createLocalJWKSet(jwks), { subject: 'spiffe://example.org/jwt', audience: 'a' });
        assert.deepEqual(payload.aud, ['a', 'b']);
        assert.equal(payload.exp, svid.expires_at);

        agent.rotateJwtKey();
        const rotated = JSON.parse(((await bundles.next()).bundles['spiffe://example.org'] as Buffer).toString('utf8')) as JSONWebKeySet;
        assert.equal(rotated.keys.length, 2, 'the old key stays published next to the new one');
        const resigned = (await fetch()).svids[0];
        assert.ok(resigned && resigned.token !== svid.token, 'tokens are re-signed after a key rotation');
        await jwtVerify(resigned.token, createLocalJWKSet(rotated), { subject: 'spiffe://example.org/jwt' });
      } finally {
        bundles.cancel();
      }
    });
  });
});
