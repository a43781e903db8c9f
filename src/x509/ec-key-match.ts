import { ECDH, createECDH, type JsonWebKey, type X509Certificate } from 'node:crypto';

/**
 * Whether a PKCS#8 EC private key belongs to a certificate, without
 * OpenSSL's key decoder: node:crypto's createPrivateKey takes ~0.35 ms with
 * OpenSSL 3 (its decoder framework tries one decoder after another), most of
 * an SVID check and a tenth of a publish's own time (README "Benchmarks").
 *
 * Only the shape SPIRE writes (Go's x509.MarshalPKCS8PrivateKey; ecdsa
 * P-256 by default, P-384 with the ec-p384 key type) is handled here:
 *
 *   SEQUENCE {                                   -- PKCS#8 v1, RFC 5208 §5
 *     INTEGER 0
 *     SEQUENCE { OID id-ecPublicKey, OID <named curve> }
 *     OCTET STRING {
 *       SEQUENCE {                               -- ECPrivateKey, RFC 5915 §3
 *         INTEGER 1
 *         OCTET STRING <private scalar>
 *         [0] { OID <the same curve> }           -- optional
 *         [1] { BIT STRING <public point> }      -- optional
 *       } } }
 *
 * in strict DER, nothing before, between or after. Anything else (RSA,
 * Ed25519, attributes, a v2 key, explicit curve parameters, a malformed key)
 * is `unhandled`, and svid-check.ts gives it to OpenSSL as before, which keeps
 * its verdict and its messages for everything that is not this shape.
 *
 * The check is stricter than the one it replaces: it derives the public point
 * from the private scalar (an ECDH key computes it, ~25 µs) and compares that
 * with the leaf's key and with the point embedded in the key. OpenSSL's
 * X509_check_private_key compared the leaf's key with the embedded point
 * alone, so a key whose scalar was damaged but whose point was intact passed,
 * and then failed in the workload: BoringSSL (Envoy) refuses such a key when
 * it parses it (EC_KEY_check_key) and Go derives the point from the scalar.
 */
export type EcKeyMatch = 'match' | 'unhandled' | { problem: string };

/** The named curves SPIRE and Go use, by the DER encoding of their OID (tag and length included). */
const CURVES = new Map<string, { jwkName: string; opensslName: string; scalarBytes: number }>([
  ['06082a8648ce3d030107', { jwkName: 'P-256', opensslName: 'prime256v1', scalarBytes: 32 }],
  ['06052b81040022', { jwkName: 'P-384', opensslName: 'secp384r1', scalarBytes: 48 }],
  ['06052b81040023', { jwkName: 'P-521', opensslName: 'secp521r1', scalarBytes: 66 }],
]);

/** id-ecPublicKey, 1.2.840.10045.2.1, with its tag and length. */
const ID_EC_PUBLIC_KEY = Buffer.from('06072a8648ce3d0201', 'hex');

const SEQUENCE = 0x30;
const INTEGER = 0x02;
const OCTET_STRING = 0x04;
const BIT_STRING = 0x03;
const CONTEXT_0 = 0xa0;
const CONTEXT_1 = 0xa1;

export function matchEcPrivateKey(keyDer: Buffer, leaf: X509Certificate): EcKeyMatch {
  const key = parseEcPkcs8(keyDer);
  if (key === undefined) return 'unhandled';
  const ecdh = createECDH(key.curve.opensslName);
  try {
    ecdh.setPrivateKey(key.scalar);
  } catch {
    // Zero, or not below the curve's order.
    return { problem: `the private key is not a valid ${key.curve.jwkName} key: its private value is out of range` };
  }
  const derived = ecdh.getPublicKey();
  if (key.embeddedPoint !== undefined && !samePoint(key.embeddedPoint, derived, key.curve.opensslName)) {
    return { problem: 'the private key is inconsistent: the public key it carries is not the one its private value gives' };
  }
  const leafKey = leafPublicJwk(leaf);
  if (leafKey?.kty !== 'EC' || leafKey.crv !== key.curve.jwkName || leafKey.x === undefined || leafKey.y === undefined) {
    return { problem: 'the private key does not match the leaf certificate' };
  }
  // getPublicKey: 0x04, then x and y, each as long as the curve's field elements (RFC 7518 §6.2.1.2 pads JWK's the same way).
  const size = (derived.length - 1) / 2;
  const x = derived.subarray(1, 1 + size);
  const y = derived.subarray(1 + size);
  if (!x.equals(Buffer.from(leafKey.x, 'base64url')) || !y.equals(Buffer.from(leafKey.y, 'base64url'))) {
    return { problem: 'the private key does not match the leaf certificate' };
  }
  return 'match';
}

/** The leaf's public key as a JWK; undefined for a key OpenSSL cannot read or JWK cannot express (DSA, say), which no EC key matches. */
function leafPublicJwk(leaf: X509Certificate): JsonWebKey | undefined {
  try {
    return leaf.publicKey.export({ format: 'jwk' });
  } catch {
    return undefined;
  }
}

interface ParsedEcKey {
  curve: { jwkName: string; opensslName: string; scalarBytes: number };
  scalar: Buffer;
  /** The ECPrivateKey's [1] publicKey, without the BIT STRING's unused-bits byte. */
  embeddedPoint: Buffer | undefined;
}

/** The key when it has exactly the shape above; undefined otherwise. */
function parseEcPkcs8(der: Buffer): ParsedEcKey | undefined {
  const outer = readTlv(der, 0, der.length);
  if (outer === undefined || outer.tag !== SEQUENCE || outer.end !== der.length) return undefined;
  const version = readTlv(der, outer.start, outer.end);
  if (version === undefined || version.tag !== INTEGER || !isSmallInteger(der, version, 0)) return undefined;
  const algorithm = readTlv(der, version.end, outer.end);
  if (algorithm === undefined || algorithm.tag !== SEQUENCE) return undefined;
  const algorithmOid = readTlv(der, algorithm.start, algorithm.end);
  if (algorithmOid === undefined || !der.subarray(algorithmOid.headerStart, algorithmOid.end).equals(ID_EC_PUBLIC_KEY)) return undefined;
  const curveOid = readTlv(der, algorithmOid.end, algorithm.end);
  if (curveOid === undefined || curveOid.end !== algorithm.end) return undefined;
  const curveOidBytes = der.subarray(curveOid.headerStart, curveOid.end);
  const curve = CURVES.get(curveOidBytes.toString('hex'));
  if (curve === undefined) return undefined;
  const privateKey = readTlv(der, algorithm.end, outer.end);
  // No attributes and no v2 public key after it.
  if (privateKey === undefined || privateKey.tag !== OCTET_STRING || privateKey.end !== outer.end) return undefined;

  const ecKey = readTlv(der, privateKey.start, privateKey.end);
  if (ecKey === undefined || ecKey.tag !== SEQUENCE || ecKey.end !== privateKey.end) return undefined;
  const ecVersion = readTlv(der, ecKey.start, ecKey.end);
  if (ecVersion === undefined || ecVersion.tag !== INTEGER || !isSmallInteger(der, ecVersion, 1)) return undefined;
  const scalar = readTlv(der, ecVersion.end, ecKey.end);
  // RFC 5915 fixes the scalar's length to the curve's order; Go writes it so.
  if (scalar === undefined || scalar.tag !== OCTET_STRING || scalar.end - scalar.start !== curve.scalarBytes) return undefined;
  let offset = scalar.end;
  let field = readTlv(der, offset, ecKey.end);
  if (field?.tag === CONTEXT_0) {
    // Parameters repeated inside the ECPrivateKey: the same curve, or not this shape.
    if (!der.subarray(field.start, field.end).equals(curveOidBytes)) return undefined;
    offset = field.end;
    field = readTlv(der, offset, ecKey.end);
  }
  let embeddedPoint: Buffer | undefined;
  if (field?.tag === CONTEXT_1) {
    const bits = readTlv(der, field.start, field.end);
    // A BIT STRING of whole bytes (its first content byte, the unused bits, 0) holding the point.
    if (bits === undefined || bits.tag !== BIT_STRING || bits.end !== field.end || bits.end - bits.start < 2 || der[bits.start] !== 0)
      return undefined;
    embeddedPoint = der.subarray(bits.start + 1, bits.end);
    offset = field.end;
  }
  // Anything else after the scalar, readable or not, is not this shape.
  if (offset !== ecKey.end) return undefined;
  return { curve, scalar: der.subarray(scalar.start, scalar.end), embeddedPoint };
}

/**
 * Equal points, the embedded one in SEC 1's uncompressed form (what Go writes,
 * and getPublicKey gives) or its compressed form. Any other encoding, the
 * hybrid 0x06/0x07 forms OpenSSL would also take included, is unequal:
 * BoringSSL (Envoy) refuses such a key.
 */
function samePoint(embedded: Buffer, derivedUncompressed: Buffer, curveName: string): boolean {
  if (embedded[0] === 0x04) return embedded.equals(derivedUncompressed);
  const compressedLength = (derivedUncompressed.length + 1) / 2;
  if ((embedded[0] !== 0x02 && embedded[0] !== 0x03) || embedded.length !== compressedLength) return false;
  try {
    return derivedUncompressed.equals(ECDH.convertKey(embedded, curveName, undefined, undefined, 'uncompressed') as Buffer);
  } catch {
    return false;
  }
}

interface Tlv {
  tag: number;
  headerStart: number;
  /** The content: [start, end). */
  start: number;
  end: number;
}

/**
 * One DER tag-length-value at `offset`, inside [offset, limit); undefined
 * when it is not there or not strict DER (a multi-byte tag, an indefinite or
 * non-minimal length, a length running past `limit`).
 */
function readTlv(der: Buffer, offset: number, limit: number): Tlv | undefined {
  if (offset + 2 > limit) return undefined;
  const tag = der[offset] as number;
  if ((tag & 0x1f) === 0x1f) return undefined;
  const first = der[offset + 1] as number;
  let start = offset + 2;
  let length = first;
  if (first >= 0x80) {
    const lengthBytes = first & 0x7f;
    // Keys and their parts are far below 64 KiB: two length bytes at most.
    if (lengthBytes === 0 || lengthBytes > 2 || start + lengthBytes > limit) return undefined;
    length = 0;
    for (let i = 0; i < lengthBytes; i++) length = length * 256 + (der[start + i] as number);
    start += lengthBytes;
    // Minimal: the long form only from 128 on, and no leading zero byte.
    if (length < 0x80 || (lengthBytes === 2 && length < 0x100)) return undefined;
  }
  const end = start + length;
  return end > limit ? undefined : { tag, headerStart: offset, start, end };
}

/** A one-byte INTEGER holding `value` (0 and 1 are each a single content byte in DER). */
function isSmallInteger(der: Buffer, tlv: Tlv, value: number): boolean {
  return tlv.end - tlv.start === 1 && der[tlv.start] === value;
}
