import assert from 'node:assert/strict';
import { ECDH, X509Certificate, createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { before, describe, test } from 'node:test';
import { matchEcPrivateKey, type EcKeyMatch } from '../../src/x509/ec-key-match.js';
import { exportPkcs8, generateKeyPair, mintCa, mintSvid, type MintedCa, type MintedSvid } from '../support/certs.js';

/** One DER tag-length-value (lengths up to 64 KiB). */
function tlv(tag: number, ...contents: Buffer[]): Buffer {
  const body = Buffer.concat(contents);
  const length = body.length < 0x80 ? [body.length] : body.length < 0x100 ? [0x81, body.length] : [0x82, body.length >> 8, body.length & 0xff];
  return Buffer.concat([Buffer.from([tag, ...length]), body]);
}

const P256_OID = Buffer.from('06082a8648ce3d030107', 'hex');
const P384_OID = Buffer.from('06052b81040022', 'hex');
const EC_PUBLIC_KEY_OID = Buffer.from('06072a8648ce3d0201', 'hex');
/** The order n of P-256. */
const P256_ORDER = Buffer.from('ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551', 'hex');

interface EcKeyParts {
  curveOid?: Buffer;
  scalar: Buffer;
  /** The [0] parameters inside the ECPrivateKey. */
  innerCurveOid?: Buffer;
  /** The [1] public point (without the BIT STRING's leading 0). */
  point?: Buffer;
  /** Extra bytes appended inside the ECPrivateKey SEQUENCE. */
  trailing?: Buffer;
}

/** A PKCS#8 EC key built from its parts, in the shape Go's x509.MarshalPKCS8PrivateKey writes unless told otherwise. */
function pkcs8(parts: EcKeyParts): Buffer {
  const ecPrivateKey = tlv(
    0x30,
    tlv(0x02, Buffer.from([1])),
    tlv(0x04, parts.scalar),
    parts.innerCurveOid === undefined ? Buffer.alloc(0) : tlv(0xa0, parts.innerCurveOid),
    parts.point === undefined ? Buffer.alloc(0) : tlv(0xa1, tlv(0x03, Buffer.from([0]), parts.point)),
    parts.trailing ?? Buffer.alloc(0),
  );
  return tlv(0x30, tlv(0x02, Buffer.from([0])), tlv(0x30, EC_PUBLIC_KEY_OID, parts.curveOid ?? P256_OID), tlv(0x04, ecPrivateKey));
}

/** The scalar and point of a PKCS#8 key in Go's shape (WebCrypto exports the same). */
function partsOf(der: Buffer): { scalar: Buffer; point: Buffer } {
  const jwk = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }).export({ format: 'jwk' });
  const d = Buffer.from(jwk.d ?? '', 'base64url');
  return { scalar: d, point: Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x ?? '', 'base64url'), Buffer.from(jwk.y ?? '', 'base64url')]) };
}

/** The key with its [1] BIT STRING declaring one unused bit. */
function withUnusedBits(der: Buffer): Buffer {
  const copy = Buffer.from(der);
  const at = copy.indexOf(Buffer.from([0xa1, 0x44, 0x03, 0x42, 0x00]));
  assert.ok(at > 0);
  copy[at + 4] = 1;
  return copy;
}

function problemOf(result: EcKeyMatch): string {
  assert.equal(typeof result, 'object', `expected a problem, got ${JSON.stringify(result)}`);
  return (result as { problem: string }).problem;
}

/** What the OpenSSL path (createPrivateKey + X509_check_private_key) says of the key. */
function openSslAccepts(der: Buffer, leaf: X509Certificate): boolean {
  try {
    return leaf.checkPrivateKey(createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }));
  } catch {
    return false;
  }
}

describe('matchEcPrivateKey', () => {
  let ca: MintedCa;
  let svid: MintedSvid;
  let leaf: X509Certificate;

  before(async () => {
    ca = await mintCa({ trustDomain: 'example.org' });
    svid = await mintSvid({ ca, spiffeId: 'spiffe://example.org/app' });
    leaf = new X509Certificate(svid.certDer);
  });

  test("a P-256 key in SPIRE's shape (Go's MarshalPKCS8PrivateKey: no [0], the point in [1]) matches its leaf", () => {
    const { scalar, point } = partsOf(svid.keyPkcs8Der);
    // The builder reproduces the minted key byte for byte: that is the shape handled.
    assert.deepEqual(pkcs8({ scalar, point }), svid.keyPkcs8Der);
    assert.equal(matchEcPrivateKey(svid.keyPkcs8Der, leaf), 'match');
  });

  test('a P-384 key matches its leaf', async () => {
    const p384 = await mintSvid({ ca, spiffeId: 'spiffe://example.org/p384', keyAlgorithm: 'ec-p384' });
    assert.equal(matchEcPrivateKey(p384.keyPkcs8Der, new X509Certificate(p384.certDer)), 'match');
  });

  test('without the embedded point, or with the [0] parameters repeated, or the point compressed, the key still matches', () => {
    const { scalar, point } = partsOf(svid.keyPkcs8Der);
    assert.equal(matchEcPrivateKey(pkcs8({ scalar }), leaf), 'match');
    assert.equal(matchEcPrivateKey(pkcs8({ scalar, point, innerCurveOid: P256_OID }), leaf), 'match');
    const compressed = ECDH.convertKey(point, 'prime256v1', undefined, undefined, 'compressed') as Buffer;
    assert.equal(matchEcPrivateKey(pkcs8({ scalar, point: compressed }), leaf), 'match');
  });

  test('another key, of the same curve or another, does not match the leaf; nor does an EC key for a leaf with an RSA key', async () => {
    const other = await exportPkcs8(await generateKeyPair('ec-p256'));
    assert.equal(problemOf(matchEcPrivateKey(other, leaf)), 'the private key does not match the leaf certificate');
    const p384 = await exportPkcs8(await generateKeyPair('ec-p384'));
    assert.equal(problemOf(matchEcPrivateKey(p384, leaf)), 'the private key does not match the leaf certificate');
    const rsaLeaf = await mintSvid({ ca, spiffeId: 'spiffe://example.org/rsa', keyAlgorithm: 'rsa-2048' });
    assert.equal(
      problemOf(matchEcPrivateKey(svid.keyPkcs8Der, new X509Certificate(rsaLeaf.certDer))),
      'the private key does not match the leaf certificate',
    );
  });

  test('a leaf whose public key cannot be read or put as a JWK (DSA, say) matches no EC key, without a throw', () => {
    const unreadable = {
      get publicKey(): never {
        throw new Error('unsupported key type');
      },
    } as unknown as X509Certificate;
    assert.equal(problemOf(matchEcPrivateKey(svid.keyPkcs8Der, unreadable)), 'the private key does not match the leaf certificate');
  });

  test('a damaged private value with the point intact is refused, where the OpenSSL comparison accepted it', () => {
    const { scalar, point } = partsOf(svid.keyPkcs8Der);
    const damaged = Buffer.from(scalar);
    damaged[7] = (damaged[7] as number) ^ 0x10;
    const key = pkcs8({ scalar: damaged, point });
    assert.equal(openSslAccepts(key, leaf), true, 'OpenSSL compares the embedded point alone');
    assert.match(problemOf(matchEcPrivateKey(key, leaf)), /inconsistent: the public key it carries is not the one its private value gives/);
    // Without the point, the damaged value gives another public key.
    assert.equal(problemOf(matchEcPrivateKey(pkcs8({ scalar: damaged }), leaf)), 'the private key does not match the leaf certificate');
  });

  test('a private value of zero or not below the order is out of range', () => {
    const { point } = partsOf(svid.keyPkcs8Der);
    assert.match(
      problemOf(matchEcPrivateKey(pkcs8({ scalar: Buffer.alloc(32), point }), leaf)),
      /not a valid P-256 key: its private value is out of range/,
    );
    assert.match(problemOf(matchEcPrivateKey(pkcs8({ scalar: P256_ORDER, point }), leaf)), /out of range/);
    assert.match(problemOf(matchEcPrivateKey(pkcs8({ scalar: Buffer.alloc(32, 0xff), point }), leaf)), /out of range/);
  });

  test('every other shape is left to OpenSSL (unhandled)', () => {
    const { scalar, point } = partsOf(svid.keyPkcs8Der);
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'der', type: 'pkcs8' });
    const ed25519 = generateKeyPairSync('ed25519').privateKey.export({ format: 'der', type: 'pkcs8' });
    const cases: Record<string, Buffer> = {
      'an RSA key': rsa,
      'an Ed25519 key': ed25519,
      'a SEC 1 key': generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'der', type: 'sec1' }),
      'a curve we do not know (secp256k1)': pkcs8({ scalar, point, curveOid: Buffer.from('06052b8104000a', 'hex') }),
      '[0] parameters naming another curve': pkcs8({ scalar, point, innerCurveOid: P384_OID }),
      'a private value shorter than the curve order': pkcs8({ scalar: scalar.subarray(1), point }),
      'bytes after the [1] point': pkcs8({ scalar, point, trailing: Buffer.from([0x05, 0x00]) }),
      'a BIT STRING with unused bits': withUnusedBits(pkcs8({ scalar, point })),
      'a non-minimal length': Buffer.concat([Buffer.from([0x30, 0x82, 0x00, svid.keyPkcs8Der[2] as number]), svid.keyPkcs8Der.subarray(3)]),
      'PKCS#8 attributes': Buffer.concat([
        Buffer.from([0x30, 0x81, svid.keyPkcs8Der.length - 3 + 2]),
        svid.keyPkcs8Der.subarray(3),
        Buffer.from([0xa0, 0x00]),
      ]),
      'version 1 (v2) without a public key': Buffer.from(svid.keyPkcs8Der.toString('hex').replace(/^(308187)020100/, '$1020101'), 'hex'),
      empty: Buffer.alloc(0),
      'a truncated key': svid.keyPkcs8Der.subarray(0, svid.keyPkcs8Der.length - 1),
      'a key with a byte after it': Buffer.concat([svid.keyPkcs8Der, Buffer.from([0])]),
    };
    for (const [what, der] of Object.entries(cases)) assert.equal(matchEcPrivateKey(der, leaf), 'unhandled', what);
  });

  test('damaged keys, every single-bit flip and seeded multi-byte damage: never a throw and never a match', () => {
    const key = svid.keyPkcs8Der;
    const seen = { unhandled: 0, refused: 0 };
    const judge = (mutated: Buffer): void => {
      const result = matchEcPrivateKey(mutated, leaf);
      // Every byte of the shape counts: a flip in a tag, a length, an OID or a version leaves the shape, one in the
      // value or the point changes the key (a point's form byte included: only 0x04 and 0x02/0x03 are points).
      assert.notEqual(result, 'match', `a damaged key matched: ${mutated.toString('hex')}`);
      if (result === 'unhandled') seen.unhandled++;
      else seen.refused++;
    };
    for (let at = 0; at < key.length; at++) {
      for (let bit = 0; bit < 8; bit++) {
        const mutated = Buffer.from(key);
        mutated[at] = (mutated[at] as number) ^ (1 << bit);
        judge(mutated);
      }
    }
    // A seeded generator (mulberry32), so that a failure is the same failure on every run.
    let seed = 0x5eed;
    const random = (below: number): number => {
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) % below;
    };
    for (let i = 0; i < 2000; i++) {
      const mutated = Buffer.from(key);
      for (let f = 0; f < 2 + random(3); f++) mutated[random(mutated.length)] = random(256);
      if (!mutated.equals(key)) judge(mutated);
    }
    // Both outcomes occur (the value and the point are 96 of the key's 138 bytes).
    assert.ok(seen.refused > 1500 && seen.unhandled > 300, JSON.stringify(seen));
  });

  test('an embedded point in the hybrid form (0x06/0x07), which OpenSSL reads and BoringSSL refuses, is no match', () => {
    const { scalar, point } = partsOf(svid.keyPkcs8Der);
    const yIsOdd = ((point[point.length - 1] as number) & 1) === 1;
    const hybrid = Buffer.from(point);
    hybrid[0] = yIsOdd ? 0x07 : 0x06;
    assert.match(problemOf(matchEcPrivateKey(pkcs8({ scalar, point: hybrid }), leaf)), /inconsistent/);
    // A compressed point of the wrong parity, or of the wrong length, neither.
    const compressed = ECDH.convertKey(point, 'prime256v1', undefined, undefined, 'compressed') as Buffer;
    const wrongParity = Buffer.from(compressed);
    wrongParity[0] = compressed[0] === 0x02 ? 0x03 : 0x02;
    assert.match(problemOf(matchEcPrivateKey(pkcs8({ scalar, point: wrongParity }), leaf)), /inconsistent/);
    assert.match(problemOf(matchEcPrivateKey(pkcs8({ scalar, point: Buffer.concat([compressed, Buffer.from([0])]) }), leaf)), /inconsistent/);
  });
});
