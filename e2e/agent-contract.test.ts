/**
 * What the real SPIRE v1.15.3 agent does on the Delegated Identity API, seen
 * by a bare gRPC client — the behaviour the driver relies on and the
 * development agent (test/support/dev-agent/) imitates. When SPIRE is
 * upgraded, a failure here says which assumption moved, before a driver test
 * fails for reasons that are hard to read.
 */
import assert from 'node:assert/strict';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { matchEcPrivateKey } from '../src/x509/ec-key-match.js';
import { delegatedIdentityService } from '../test/support/grpc-services.js';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, type JSONWebKeySet } from 'jose';
import {
  type FetchJwtSvidsResponse,
  type Selector,
  type SubscribeToJwtBundlesResponse,
  type SubscribeToX509BundlesResponse,
  type SubscribeToX509SvidsResponse,
} from '../src/spire/messages.js';
import { splitConcatenatedDer } from '../src/x509/pem.js';
import { SpireTestbed, sleep, waitFor } from './spire-testbed.js';

let testbed: SpireTestbed | undefined;
let client: grpc.Client | undefined;

before(async () => {
  testbed = await SpireTestbed.start({ label: 'e2e-contract' });
  const Client = delegatedIdentityService();
  client = new Client(`unix:${testbed.adminSocketPath}`, grpc.credentials.createInsecure());
});
after(async () => {
  client?.close();
  await testbed?.close();
});

interface Received<T> {
  at: number;
  message: T;
}

/** A subscription that records every message and the final error. */
class Recorder<T> {
  readonly messages: Received<T>[] = [];
  error: grpc.ServiceError | undefined;
  readonly openedAt = Date.now();

  constructor(readonly call: grpc.ClientReadableStream<T>) {
    call.on('data', (message: T) => this.messages.push({ at: Date.now(), message }));
    call.on('error', (err: grpc.ServiceError) => {
      this.error = err;
    });
  }

  async next(what: string, predicate: (message: T) => boolean, from = 0, timeoutMs = 15_000): Promise<Received<T>> {
    return waitFor(
      what,
      () => {
        if (this.error && this.error.code !== grpc.status.CANCELLED) throw new Error(`stream failed: ${this.error.code} ${this.error.details}`);
        return this.messages.slice(from).find((m) => predicate(m.message));
      },
      { timeoutMs, intervalMs: 20, diagnostics: () => testbed?.diagnostics() ?? '' },
    );
  }

  cancel(): void {
    this.call.cancel();
  }
}

function subscribeSvids(selectors: string[]): Recorder<SubscribeToX509SvidsResponse> {
  const parsed: Selector[] = selectors.map((s) => ({ type: s.slice(0, s.indexOf(':')), value: s.slice(s.indexOf(':') + 1) }));
  const generated = client as unknown as { SubscribeToX509SVIDs(r: object): grpc.ClientReadableStream<SubscribeToX509SvidsResponse> };
  return new Recorder(generated.SubscribeToX509SVIDs({ selectors: parsed }));
}

function subscribeBundles(): Recorder<SubscribeToX509BundlesResponse> {
  const generated = client as unknown as { SubscribeToX509Bundles(r: object): grpc.ClientReadableStream<SubscribeToX509BundlesResponse> };
  return new Recorder(generated.SubscribeToX509Bundles({}));
}

function fetchJwtSvids(audience: string[], selectors: string[]): Promise<FetchJwtSvidsResponse> {
  const parsed: Selector[] = selectors.map((s) => ({ type: s.slice(0, s.indexOf(':')), value: s.slice(s.indexOf(':') + 1) }));
  const generated = client as unknown as {
    FetchJWTSVIDs(r: object, callback: (err: grpc.ServiceError | null, response?: FetchJwtSvidsResponse) => void): grpc.ClientUnaryCall;
  };
  return new Promise((resolve, reject) =>
    generated.FetchJWTSVIDs({ audience, selectors: parsed }, (err, response) => (err ? reject(err) : resolve(response ?? { svids: [] }))),
  );
}

async function jwtFetchError(audience: string[], selectors: string[]): Promise<grpc.ServiceError> {
  try {
    await fetchJwtSvids(audience, selectors);
  } catch (err) {
    return err as grpc.ServiceError;
  }
  throw new Error('FetchJWTSVIDs succeeded');
}

describe('the real agent, as the driver and the development agent assume it', () => {
  it('nothing matches: an immediate empty response, and the stream stays open', async () => {
    const stream = subscribeSvids(['k8s:pod-uid:nobody']);
    try {
      const first = await stream.next('the first response', () => true, 0, 5000);
      assert.ok(first.at - stream.openedAt < 2000, `first response after ${first.at - stream.openedAt} ms`);
      assert.deepEqual(first.message, { x509_svids: [], federates_with: [] });
      await sleep(1000);
      assert.equal(stream.error, undefined, 'no error: an empty answer is not a failure');
    } finally {
      stream.cancel();
    }
  });

  it('an entry created while subscribed arrives on the open stream; its deletion sends an empty snapshot and keeps the stream open', async () => {
    assert.ok(testbed);
    const uid = 'contract-1';
    const stream = subscribeSvids([`k8s:pod-uid:${uid}`, 'k8s:ns:default']);
    try {
      await stream.next('the first (empty) response', (m) => m.x509_svids.length === 0);
      const createdAt = Date.now();
      const entryId = await testbed.createEntry({
        spiffeId: 'spiffe://example.org/contract',
        selectors: [`k8s:pod-uid:${uid}`],
        x509SvidTtlSeconds: 20,
      });
      const withSvid = await stream.next('the SVID', (m) => m.x509_svids.length === 1);
      assert.ok(withSvid.at - createdAt < 10_000, `SVID ${withSvid.at - createdAt} ms after entry create`);

      const svid = withSvid.message.x509_svids[0]?.x509_svid;
      const key = withSvid.message.x509_svids[0]?.x509_svid_key;
      assert.ok(svid && key);
      assert.deepEqual(svid.id, { trust_domain: 'example.org', path: '/contract' });
      assert.equal(svid.cert_chain.length, 1, 'a self-signed server CA: the chain is the leaf alone');
      const leaf = new X509Certificate(svid.cert_chain[0] as Buffer);
      assert.equal(leaf.subjectAltName, 'URI:spiffe://example.org/contract');
      assert.ok(leaf.checkPrivateKey(createPrivateKey({ key, format: 'der', type: 'pkcs8' })), 'x509_svid_key is PKCS#8 DER of the leaf key');
      // The agent's key has the shape the driver's fast key check handles (Go's MarshalPKCS8PrivateKey, ec-p256).
      assert.equal(matchEcPrivateKey(key, leaf), 'match', "the driver's own key check takes the agent's key");
      assert.equal(svid.expires_at, Math.floor(new Date(leaf.validTo).getTime() / 1000), 'expires_at is the leaf NotAfter');
      const lifetimeS = (new Date(leaf.validTo).getTime() - new Date(leaf.validFrom).getTime()) / 1000;
      assert.equal(lifetimeS, 30, 'NotBefore is backdated 10 s: -x509SVIDTTL 20 gives a 30 s NotBefore..NotAfter');
      assert.equal(svid.hint, '');

      // Re-signed when less than half of NotAfter − NotBefore is left (±10 %): ~5 s after issue for TTL 20.
      const count = stream.messages.length;
      const rotated = await stream.next(
        'a rotation',
        (m) =>
          m.x509_svids.length === 1 && new X509Certificate(m.x509_svids[0]?.x509_svid?.cert_chain[0] as Buffer).serialNumber !== leaf.serialNumber,
        count,
      );
      const rotationS = (rotated.at - withSvid.at) / 1000;
      assert.ok(rotationS > 2 && rotationS < 10, `rotated ${rotationS} s after issue (expected ~5 s)`);

      const beforeDelete = stream.messages.length;
      await testbed.deleteEntry(entryId);
      await stream.next('an empty snapshot after the delete', (m) => m.x509_svids.length === 0, beforeDelete);
      await sleep(500);
      assert.equal(stream.error, undefined, 'the stream stays open');
    } finally {
      stream.cancel();
    }
  });

  it("the bundle stream answers at once with the server's bundle under the key spiffe://<trust domain>, as concatenated DER", async () => {
    assert.ok(testbed);
    const stream = subscribeBundles();
    try {
      const first = await stream.next('the first bundle response', () => true, 0, 5000);
      assert.ok(first.at - stream.openedAt < 2000);
      assert.deepEqual(Object.keys(first.message.ca_certificates), ['spiffe://example.org']);
      const ders = splitConcatenatedDer(first.message.ca_certificates['spiffe://example.org'] as Buffer);
      assert.deepEqual(
        ders.map((der) => new X509Certificate(der).fingerprint256),
        (await testbed.serverBundle()).map((c) => c.fingerprint256),
      );
    } finally {
      stream.cancel();
    }
  });

  it('rejects an empty selector list and a malformed selector with INVALID_ARGUMENT', async () => {
    const empty = subscribeSvids([]);
    const malformed = new Recorder(
      (client as unknown as { SubscribeToX509SVIDs(r: object): grpc.ClientReadableStream<SubscribeToX509SvidsResponse> }).SubscribeToX509SVIDs({
        selectors: [{ type: 'k8s:pod-uid', value: 'x' }],
      }),
    );
    await waitFor('both calls to fail', () => empty.error !== undefined && malformed.error !== undefined, { timeoutMs: 5000 });
    assert.equal(empty.error?.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(empty.error?.details, 'must provide either selectors or non-zero PID, but not both');
    assert.equal(malformed.error?.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(malformed.error?.details, 'could not parse provided selectors');
  });

  it('FetchJWTSVIDs: no audience or no match is an error; a match gives one token per entry, cached until half its life; the JWT bundle is a standard JWKS', async () => {
    assert.ok(testbed);
    const noAudience = await jwtFetchError([], ['k8s:pod-uid:contract-jwt']);
    assert.equal(noAudience.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(noAudience.details, 'audience must be specified');
    const noEntry = await jwtFetchError(['a'], ['k8s:pod-uid:contract-jwt']);
    assert.equal(noEntry.code, grpc.status.PERMISSION_DENIED);
    assert.equal(noEntry.details, 'no identity issued');

    await testbed.createEntry({ spiffeId: 'spiffe://example.org/contract-jwt', selectors: ['k8s:pod-uid:contract-jwt'] });
    const response = await waitFor(
      'the entry to reach the agent',
      () => fetchJwtSvids(['a', 'b'], ['k8s:pod-uid:contract-jwt']).catch(() => undefined),
      {
        timeoutMs: 15_000,
        intervalMs: 250,
      },
    );
    assert.equal(response.svids.length, 1);
    const svid = response.svids[0];
    assert.ok(svid);
    assert.deepEqual(svid.id, { trust_domain: 'example.org', path: '/contract-jwt' });
    assert.equal(svid.hint, '');
    const again = await fetchJwtSvids(['a', 'b'], ['k8s:pod-uid:contract-jwt']);
    assert.equal(again.svids[0]?.token, svid.token, 'the agent serves its cached token while it is young');

    const bundles = new Recorder(
      (client as unknown as { SubscribeToJWTBundles(r: object): grpc.ClientReadableStream<SubscribeToJwtBundlesResponse> }).SubscribeToJWTBundles({}),
    );
    try {
      const first = await bundles.next('the first JWT bundle response', () => true, 0, 5000);
      assert.deepEqual(Object.keys(first.message.bundles), ['spiffe://example.org']);
      const jwks = JSON.parse((first.message.bundles['spiffe://example.org'] as Buffer).toString('utf8')) as JSONWebKeySet & Record<string, unknown>;
      assert.deepEqual(Object.keys(jwks), ['keys'], 'StandardJWKS: no spiffe_sequence or spiffe_refresh_hint');
      assert.ok(
        jwks.keys.length > 0 && jwks.keys.every((key) => typeof key.kid === 'string' && key.use === undefined),
        'keys with kid, no SPIFFE use',
      );
      assert.ok(jwks.keys.some((key) => key.kid === decodeProtectedHeader(svid.token).kid));
      const { payload } = await jwtVerify(svid.token, createLocalJWKSet(jwks), { subject: 'spiffe://example.org/contract-jwt' });
      assert.deepEqual(payload.aud, ['a', 'b'], 'every requested audience in one token');
      assert.equal(payload.exp, svid.expires_at);
      assert.equal(payload.iat, svid.issued_at);
    } finally {
      bundles.cancel();
    }
  });
});
