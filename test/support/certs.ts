/**
 * Certificate minting for tests and the development agent, with @peculiar/x509
 * over Node's WebCrypto. The shapes follow what a SPIRE server without an
 * UpstreamAuthority issues (makeCertChain in
 * https://github.com/spiffe/spire/blob/v1.15.3/pkg/server/ca/ca.go): a
 * self-signed EC P-256 CA whose URI SAN is the trust domain, and leaf X.509-SVIDs
 * whose only URI SAN is the SPIFFE ID, with PKCS#8 DER private keys.
 *
 * Every knob is open on purpose: other tests mint deliberately broken SVIDs
 * (expired, two URI SANs, a foreign trust domain, a key that does not match)
 * to prove the driver never writes them (docs/design.md invariant 5).
 */
import { generateKeyPairSync, randomBytes, webcrypto } from 'node:crypto';
// @peculiar/x509 registers its algorithm providers through tsyringe, which
// needs the reflect-metadata polyfill loaded first (module order matters).
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto);

export type KeyPair = webcrypto.CryptoKeyPair;

/** The key types a SPIRE agent can hand out (`workload_x509_svid_key_type`). */
export type KeyAlgorithm = 'ec-p256' | 'ec-p384' | 'rsa-2048';

/**
 * SPIRE's server CA backdates NotBefore by a few seconds so that a peer whose
 * clock runs slightly behind still accepts a freshly issued certificate.
 */
export const DEFAULT_BACKDATE_MS = 10_000;

const CA_DEFAULT_TTL_MS = 24 * 3600 * 1000; // SPIRE's default ca_ttl
const SVID_DEFAULT_TTL_MS = 3600 * 1000; // SPIRE's default x509_svid_ttl

const SIGNING_ALGORITHM = { name: 'ECDSA', hash: 'SHA-256' };

export interface MintedCa {
  trustDomain: string;
  /** DER of the CA certificate. */
  certDer: Buffer;
  keys: KeyPair;
  /** Lower-case hex, as minted (Node's X509Certificate.serialNumber is upper-case). */
  serialHex: string;
  notBefore: Date;
  notAfter: Date;
  /**
   * What a leaf signed by this CA carries after itself: empty for a root, else
   * this intermediate and any intermediates above it, never the root.
   */
  upstreamChain: Buffer[];
}

export interface MintCaOptions {
  /** Bare trust domain name, e.g. `example.org`. */
  trustDomain: string;
  notBefore?: Date;
  notAfter?: Date;
  commonName?: string;
  /** Sign with this CA instead of self-signing, to build an intermediate (UpstreamAuthority-like) chain. */
  parent?: MintedCa;
}

export interface MintSvidOptions {
  ca: MintedCa;
  /** `spiffe://<td>/<path>`; becomes the only URI SAN unless `uriSans`/`extraUriSans` say otherwise. */
  spiffeId: string;
  notBefore?: Date;
  /** Default: now + 1 h. */
  notAfter?: Date;
  /** URI SANs added after the SPIFFE ID (an SVID must have exactly one; this makes it invalid). */
  extraUriSans?: string[];
  dnsNames?: string[];
  /** Replaces every URI SAN, the SPIFFE ID included (an empty list gives a leaf with no URI SAN). */
  uriSans?: string[];
  /** Reuse a key pair (e.g. to rotate without re-keying); by default a fresh key is generated. */
  keyPair?: KeyPair;
  /** Key type of a freshly generated key. Default `ec-p256`, SPIRE's default. */
  keyAlgorithm?: KeyAlgorithm;
  /** Issue a CA certificate instead of a leaf (a malformed SVID). */
  isCa?: boolean;
}

export interface MintedSvid {
  certDer: Buffer;
  /** The leaf followed by the CA's upstream chain, as SPIRE's `makeCertChain` builds it. */
  certChain: Buffer[];
  /** PKCS#8 DER. */
  keyPkcs8Der: Buffer;
  keyPair: KeyPair;
  /** Lower-case hex. */
  serialHex: string;
  notBefore: Date;
  notAfter: Date;
}

export async function generateKeyPair(algorithm: KeyAlgorithm = 'ec-p256'): Promise<KeyPair> {
  switch (algorithm) {
    case 'ec-p256':
      return webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify']);
    case 'ec-p384':
      return webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, true, ['sign', 'verify']);
    case 'rsa-2048':
      return webcrypto.subtle.generateKey(
        { name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' },
        true,
        ['sign', 'verify'],
      );
  }
}

export async function mintCa(options: MintCaOptions): Promise<MintedCa> {
  const now = Date.now();
  const notBefore = wholeSeconds(options.notBefore ?? new Date(now - DEFAULT_BACKDATE_MS));
  const notAfter = wholeSeconds(options.notAfter ?? new Date(now + CA_DEFAULT_TTL_MS));
  const keys = await generateKeyPair('ec-p256');
  const serialHex = randomSerialHex();
  // Distinct subjects per CA (SPIRE puts the serial in its CA subjects too), so
  // a bundle holding the old and the new CA during rotation never has two
  // authorities with the same name for chain building to confuse.
  const defaultName = `dev SPIRE ${options.parent ? 'intermediate ' : ''}CA ${options.trustDomain} ${serialHex.slice(0, 8)}`;
  const subject = `CN=${escapeDnValue(options.commonName ?? defaultName)}, O=SPIFFE, C=US`;
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(true, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature, true),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    new x509.SubjectAlternativeNameExtension([{ type: 'url', value: `spiffe://${options.trustDomain}` }]),
  ];

  let cert: x509.X509Certificate;
  if (options.parent) {
    const parent = options.parent;
    extensions.push(await x509.AuthorityKeyIdentifierExtension.create(parent.keys.publicKey));
    cert = await x509.X509CertificateGenerator.create({
      serialNumber: serialHex,
      subject,
      issuer: new x509.X509Certificate(parent.certDer).subjectName,
      notBefore,
      notAfter,
      publicKey: keys.publicKey,
      signingKey: parent.keys.privateKey,
      signingAlgorithm: SIGNING_ALGORITHM,
      extensions,
    });
  } else {
    cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: serialHex,
      name: subject,
      notBefore,
      notAfter,
      keys: keys,
      signingAlgorithm: SIGNING_ALGORITHM,
      extensions,
    });
  }
  const certDer = Buffer.from(cert.rawData);
  return {
    trustDomain: options.trustDomain,
    certDer,
    keys,
    serialHex,
    notBefore,
    notAfter,
    // The root never travels in an SVID chain; an intermediate and whatever
    // sits between it and the root do (SPIRE's makeCertChain, docs/design.md fact F8).
    upstreamChain: options.parent ? [certDer, ...options.parent.upstreamChain] : [],
  };
}

export async function mintSvid(options: MintSvidOptions): Promise<MintedSvid> {
  const now = Date.now();
  const notBefore = wholeSeconds(options.notBefore ?? new Date(now - DEFAULT_BACKDATE_MS));
  const notAfter = wholeSeconds(options.notAfter ?? new Date(now + SVID_DEFAULT_TTL_MS));
  const keyPair = options.keyPair ?? (await generateKeyPair(options.keyAlgorithm ?? 'ec-p256'));
  const serialHex = randomSerialHex();

  const uris = options.uriSans ?? [options.spiffeId, ...(options.extraUriSans ?? [])];
  const names: { type: 'url' | 'dns'; value: string }[] = [
    ...uris.map((value) => ({ type: 'url' as const, value })),
    ...(options.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
  ];

  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(options.isCa ?? false, undefined, true),
    new x509.KeyUsagesExtension(
      options.isCa
        ? x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign
        : x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment | x509.KeyUsageFlags.keyAgreement,
      true,
    ),
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
    await x509.SubjectKeyIdentifierExtension.create(keyPair.publicKey),
    await x509.AuthorityKeyIdentifierExtension.create(options.ca.keys.publicKey),
  ];
  if (names.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(names));

  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serialHex,
    subject: 'O=SPIRE, C=US',
    issuer: new x509.X509Certificate(options.ca.certDer).subjectName,
    notBefore,
    notAfter,
    publicKey: keyPair.publicKey,
    signingKey: options.ca.keys.privateKey,
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions,
  });
  const certDer = Buffer.from(cert.rawData);
  return {
    certDer,
    certChain: [certDer, ...options.ca.upstreamChain],
    keyPkcs8Der: await exportPkcs8(keyPair),
    keyPair,
    serialHex,
    notBefore,
    notAfter,
  };
}

export async function exportPkcs8(keyPair: KeyPair): Promise<Buffer> {
  return Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keyPair.privateKey));
}

/**
 * An RSA private key as PKCS#1 (`RSA PRIVATE KEY`) DER — not PKCS#8, which the
 * Delegated Identity API promises (docs/design.md fact F8), so a driver must refuse it.
 */
export function mintRsaPkcs1KeyDer(): Buffer {
  return generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'der' },
    privateKeyEncoding: { type: 'pkcs1', format: 'der' },
  }).privateKey;
}

/** An EC P-256 private key as SEC 1 (`EC PRIVATE KEY`) DER — also not PKCS#8. */
export function mintEcSec1KeyDer(): Buffer {
  return generateKeyPairSync('ec', {
    namedCurve: 'P-256',
    publicKeyEncoding: { type: 'spki', format: 'der' },
    privateKeyEncoding: { type: 'sec1', format: 'der' },
  }).privateKey;
}

/**
 * 128 random bits like SPIRE's serials, with the top bit cleared so the DER
 * INTEGER stays positive without a padding byte, and a non-zero first byte so
 * the hex form is the canonical encoding.
 */
function randomSerialHex(): string {
  const bytes = randomBytes(16);
  bytes[0] = bytes[0]! & 0x7f || 0x01;
  return bytes.toString('hex');
}

/** X.509 times carry whole seconds; truncating here keeps `notAfter` equal to what the certificate says. */
function wholeSeconds(date: Date): Date {
  return new Date(Math.floor(date.getTime() / 1000) * 1000);
}

function escapeDnValue(value: string): string {
  return value.replace(/([,+"\\<>;=])/g, '\\$1');
}
