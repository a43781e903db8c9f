/**
 * The JWT side of a volume's files (src/volumes/jwt-files.ts) and the
 * node-wide JWT bundles (src/spire/jwt-bundle-watcher.ts): which token is
 * written, what makes one unfit to write, the bundle file's format and scope,
 * and that the JWT bundle stream opens only for a JWT volume.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DriverMetrics } from '../../src/observability/metrics.js';
import { JwtBundleWatcher, normaliseJwks, type JwtBundleSource } from '../../src/spire/jwt-bundle-watcher.js';
import type { JwtSvidMessage } from '../../src/spire/messages.js';
import { buildJwtFiles, describeTokenProblem, type JwtFilesInput } from '../../src/volumes/jwt-files.js';
import { FakeAgentConnection } from '../support/fakes/fake-agent.js';
import { MemoryLog } from '../support/fakes/memory-log.js';

const NOW_MS = Date.UTC(2026, 0, 1);
const NOW_S = NOW_MS / 1000;
const ID = 'spiffe://example.org/app';

function token(claims: Record<string, unknown>): string {
  const part = (value: object): string => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${part({ alg: 'ES256', kid: 'k' })}.${part(claims)}.${Buffer.from('signature').toString('base64url')}`;
}

function svid(path: string, claims: Record<string, unknown> = {}, hint = ''): JwtSvidMessage {
  const sub = `spiffe://example.org${path}`;
  return {
    token: token({ sub, aud: ['vault'], exp: NOW_S + 300, iat: NOW_S, ...claims }),
    id: { trust_domain: 'example.org', path },
    expires_at: NOW_S + 300,
    issued_at: NOW_S,
    hint,
  };
}

function jwks(kid: string): Buffer {
  return Buffer.from(JSON.stringify({ keys: [{ kty: 'EC', crv: 'P-256', x: 'x', y: 'y', kid }] }));
}

function bundles(map: Record<string, Buffer>): JwtBundleSource {
  return { get: (id) => map[id], lastFailure: undefined, subscribe: () => () => undefined };
}

function input(overrides: Partial<JwtFilesInput> = {}): JwtFilesInput {
  return {
    jwt: { svids: [{ file: 'jwt_svid.token', audiences: ['vault'] }], bundleFile: 'bundle.json' },
    spiffeId: ID,
    hint: '',
    trustDomainIds: ['spiffe://example.org'],
    svidsFor: () => [svid('/app')],
    bundles: bundles({ 'spiffe://example.org': jwks('own') }),
    tokenMode: 0o600,
    nowMs: NOW_MS,
    ...overrides,
  };
}

describe('JWT files of a volume', () => {
  test('the token of the X.509 side SPIFFE ID (and hint) is written, with the given mode, and the JWKS file after it', () => {
    const built = buildJwtFiles(
      input({ hint: 'b', svidsFor: () => [svid('/other'), svid('/app', {}, 'a'), svid('/app', {}, 'b')], tokenMode: 0o640 }),
    );
    assert.ok(Array.isArray(built));
    assert.deepEqual(
      built.map((f) => [f.name, f.mode]),
      [
        ['jwt_svid.token', 0o640],
        ['bundle.json', 0o644],
      ],
    );
    assert.equal(built[0]?.data.toString(), svid('/app', {}, 'b').token);
  });

  test("spiffe-helper's bundle format: bare trust domain names, base64 JWKS, own and federated trust domains only, sorted", () => {
    const built = buildJwtFiles(
      input({
        trustDomainIds: ['spiffe://example.org', 'spiffe://partner.org', 'spiffe://not-held.org'],
        bundles: bundles({ 'spiffe://example.org': jwks('own'), 'spiffe://partner.org': jwks('partner'), 'spiffe://unrelated.org': jwks('x') }),
      }),
    );
    assert.ok(Array.isArray(built));
    const file = JSON.parse(built[1]?.data.toString() ?? '') as Record<string, string>;
    assert.deepEqual(Object.keys(file), ['example.org', 'partner.org']);
    assert.deepEqual(JSON.parse(Buffer.from(file['partner.org'] ?? '', 'base64').toString()), JSON.parse(jwks('partner').toString()));
  });

  test('nothing is written, with the reason, until every token and the own JWT bundle are there', () => {
    assert.match(
      String((buildJwtFiles(input({ svidsFor: () => undefined })) as { problem: string }).problem),
      /has not issued the JWT-SVID for audience vault yet/,
    );
    assert.match(
      String((buildJwtFiles(input({ svidsFor: () => [svid('/other')] })) as { problem: string }).problem),
      /none of the 1 JWT-SVIDs .* is for spiffe:\/\/example\.org\/app/,
    );
    assert.match(
      String((buildJwtFiles(input({ bundles: bundles({}) })) as { problem: string }).problem),
      /not sent the JWT bundle of spiffe:\/\/example\.org yet/,
    );
    assert.match(
      String((buildJwtFiles(input({ svidsFor: () => [svid('/app', { exp: NOW_S - 1 })] })) as { problem: string }).problem),
      /was rejected: it has expired/,
    );
  });

  test('a token is refused unless its claims name this identity, every requested audience and a future exp', () => {
    const good = token({ sub: ID, aud: ['a', 'b'], exp: NOW_S + 10 });
    assert.equal(describeTokenProblem(good, ID, ['a', 'b'], NOW_MS), undefined);
    assert.equal(describeTokenProblem(token({ sub: ID, aud: 'a', exp: NOW_S + 10 }), ID, ['a'], NOW_MS), undefined, 'aud as a single string');
    assert.match(describeTokenProblem(good, 'spiffe://example.org/else', ['a'], NOW_MS) ?? '', /sub is "spiffe:\/\/example\.org\/app"/);
    assert.match(describeTokenProblem(good, ID, ['a', 'c'], NOW_MS) ?? '', /aud lacks c/);
    assert.match(describeTokenProblem(token({ sub: ID, aud: 'a' }), ID, ['a'], NOW_MS) ?? '', /expired/);
    assert.match(describeTokenProblem('not-a-jwt', ID, ['a'], NOW_MS) ?? '', /not a compact JWS/);
    assert.match(describeTokenProblem(`a.${Buffer.from('[1]').toString('base64url')}.c`, ID, ['a'], NOW_MS) ?? '', /not a JSON object/);
  });
});

describe('JwtBundleWatcher', () => {
  test('opens no stream until a JWT volume subscribes; then one, whatever the number of volumes', () => {
    const connection = new FakeAgentConnection();
    const watcher = new JwtBundleWatcher({ connection, logger: new MemoryLog().logger(), metrics: new DriverMetrics() });
    assert.equal(connection.jwtBundleCalls.length, 0);
    const unsubscribe = [watcher.subscribe(() => undefined), watcher.subscribe(() => undefined)];
    assert.equal(connection.jwtBundleCalls.length, 1);
    for (const u of unsubscribe) u();
    watcher.close();
    assert.equal(connection.jwtBundleCalls[0]?.cancelled, true);
  });

  test('listeners hear only the trust domains that changed; a JWKS that is not one is refused and the previous kept', () => {
    const connection = new FakeAgentConnection();
    const log = new MemoryLog();
    const watcher = new JwtBundleWatcher({ connection, logger: log.logger(), metrics: new DriverMetrics() });
    const heard: string[][] = [];
    watcher.subscribe((changed) => heard.push([...changed]));
    const call = connection.jwtBundleCalls[0];
    assert.ok(call);
    call.push({ bundles: { 'spiffe://example.org': jwks('a'), 'spiffe://partner.org': jwks('p') } });
    call.push({ bundles: { 'spiffe://example.org': jwks('b'), 'spiffe://partner.org': jwks('p') } });
    call.push({ bundles: { 'spiffe://example.org': Buffer.from('{"no":"keys"}'), 'spiffe://partner.org': jwks('p') } });
    assert.deepEqual(heard, [['spiffe://example.org', 'spiffe://partner.org'], ['spiffe://example.org']]);
    assert.deepEqual(watcher.get('spiffe://example.org'), normaliseJwks(jwks('b')));
    assert.equal(log.withMessage('rejected a JWT bundle from the SPIRE agent; keeping the previous one').length, 1);
    watcher.close();
  });

  test('normaliseJwks keeps the keys and drops the indentation and other members', () => {
    const raw = Buffer.from(JSON.stringify({ keys: [{ kty: 'EC', kid: 'k' }], spiffe_sequence: 3 }, null, 4));
    assert.equal(normaliseJwks(raw).toString(), '{"keys":[{"kty":"EC","kid":"k"}]}');
    assert.throws(() => normaliseJwks(Buffer.from('{"keys":[{"kid":"no kty"}]}')), /no "kty"/);
    assert.throws(() => normaliseJwks(Buffer.from('not json')));
  });
});
