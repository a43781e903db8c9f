import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { digestOfParts } from '../digest.js';
import { errorMessage } from '../errors.js';
import { matchEcPrivateKey } from './ec-key-match.js';
import { derStructureEnd } from './pem.js';
import { parseSubjectAltName } from './subject-alt-name.js';

/**
 * How far in the future a leaf's NotBefore may be. SPIRE backdates NotBefore
 * by 10 s; a node whose clock is behind the SPIRE server's by more than that
 * still gets its SVIDs, but a leaf that only becomes valid much later (a wrong
 * server clock) would fail every handshake, so it is refused.
 */
const NOT_BEFORE_TOLERANCE_MS = 5 * 60 * 1000;

/** What a volume is about to receive; checked as a whole before any byte is written. */
export interface SvidMaterial {
  spiffeId: string;
  /** DER, leaf first. */
  certChain: readonly Buffer[];
  /** PKCS#8 DER. */
  keyDer: Buffer;
  /** DER certificates of the SVID's own trust domain. */
  bundle: readonly Buffer[];
}

export interface CheckedSvid {
  spiffeId: string;
  serialNumber: string;
  /** The leaf's validity: a volume's health (volume-health.ts) judges renewal against it. */
  notBefore: Date;
  notAfter: Date;
}

export type SvidCheckResult = { ok: true; svid: CheckedSvid } | { ok: false; reason: string };

/**
 * docs/design.md invariant 5: nothing invalid is written. Each certificate and the
 * key must be exactly one DER structure (X509Certificate would also take PEM
 * text, and trailing bytes break strict readers such as Go's crypto/x509); the
 * key must be PKCS#8 and belong to the leaf; the leaf's only URI SAN must be
 * the SPIFFE ID the agent says it is, it must not be a CA, and it must be
 * valid now (within a small tolerance for NotBefore); each certificate of the
 * chain must be signed by the next, and the last by a CA of the trust bundle
 * (SPIFFE X509-SVID, https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md
 * §4 and §5); the bundle must hold at least one parseable certificate. A
 * failure keeps the previous files in place; the reason is logged (it never
 * contains key material).
 */
export function checkSvid(material: SvidMaterial, now: Date = new Date(), memo?: LeafCheckMemo): SvidCheckResult {
  const leafDer = material.certChain[0];
  if (leafDer === undefined) return { ok: false, reason: 'the certificate chain is empty' };
  const leafDigest = memo === undefined ? undefined : digestOfLeafMaterial(material);
  const remembered = leafDigest !== undefined && memo?.passed?.digest === leafDigest ? memo.passed : undefined;

  if (material.bundle.length === 0) {
    return { ok: false, reason: `the trust bundle for ${trustDomainIdOf(material.spiffeId)} is empty` };
  }
  let authorities: readonly X509Certificate[];
  try {
    authorities = parsedBundle(material.bundle);
  } catch (err) {
    return { ok: false, reason: `a trust bundle certificate does not parse: ${errorMessage(err)}` };
  }

  const sameAuthority = remembered === undefined ? undefined : material.bundle.find((der) => der.equals(remembered.authority));
  if (remembered !== undefined && sameAuthority !== undefined) {
    // The same chain bytes and the same authority bytes as a check that
    // passed: the signatures verify as they did. Only the time has moved on.
    // The current bundle's buffer is kept, so an old bundle is not held alive.
    remembered.authority = sameAuthority;
    const problem = describeValidityProblem(remembered.svid.notBefore, remembered.svid.notAfter, now);
    return problem === undefined ? { ok: true, svid: remembered.svid } : { ok: false, reason: problem };
  }

  if (remembered === undefined) {
    for (const [index, der] of material.certChain.entries()) {
      const problem = describeDerProblem(der, `certificate ${index} of the chain`);
      if (problem !== undefined) return { ok: false, reason: `a certificate in the chain does not parse: ${problem}` };
    }
  }
  let chain: X509Certificate[];
  try {
    chain = material.certChain.map((der) => new X509Certificate(der));
  } catch (err) {
    return { ok: false, reason: `a certificate in the chain does not parse: ${errorMessage(err)}` };
  }
  const leaf = chain[0] as X509Certificate;
  if (remembered === undefined) {
    const problem = describeLeafProblem(material, leaf);
    if (problem !== undefined) return { ok: false, reason: problem };
  }

  const notAfter = new Date(leaf.validTo);
  const notBefore = new Date(leaf.validFrom);
  const validityProblem = describeValidityProblem(notBefore, notAfter, now);
  if (validityProblem !== undefined) return { ok: false, reason: validityProblem };

  const chainProblem = describeChainProblem(chain, authorities, trustDomainIdOf(material.spiffeId));
  if (typeof chainProblem === 'string') return { ok: false, reason: chainProblem };

  const svid = { spiffeId: material.spiffeId, serialNumber: leaf.serialNumber, notBefore, notAfter };
  // The bundle's own buffer, shared by every volume of the trust domain, not a copy per volume.
  const authority = material.bundle[chainProblem.authorityIndex] as Buffer;
  if (memo !== undefined && leafDigest !== undefined) memo.passed = { digest: leafDigest, svid, authority };
  return { ok: true, svid };
}

function describeValidityProblem(notBefore: Date, notAfter: Date, now: Date): string | undefined {
  if (!(notAfter.getTime() > now.getTime())) return `the leaf certificate expired at ${notAfter.toISOString()}`;
  if (notBefore.getTime() > now.getTime() + NOT_BEFORE_TOLERANCE_MS) {
    return `the leaf certificate is not valid before ${notBefore.toISOString()} (is the SPIRE server's or this node's clock wrong?)`;
  }
  return undefined;
}

/**
 * What one volume remembers between checks: the SVID (SPIFFE ID, chain and
 * key bytes) whose checks last passed, with its validity and the bundle CA
 * that signed its chain. A trust bundle change re-checks the same SVID
 * against the new bundle on every volume of the trust domain. The checks of
 * the SVID's own bytes cannot come out differently (matching the key to the
 * leaf, ~0.1 ms; ~0.4 ms for a key OpenSSL parses), and while the new bundle
 * still holds that CA, byte for byte, neither can the chain's signatures (a
 * parse and a verify, ~0.2 ms). Validity against the clock is checked every time; a bundle
 * without that CA gets the full chain check.
 */
export interface LeafCheckMemo {
  passed?: { digest: string; svid: CheckedSvid; authority: Buffer } | undefined;
}

/** What LeafCheckMemo remembers of an SVID: its SPIFFE ID, key and chain, length-prefixed, hashed. Exported for tests. */
export function digestOfLeafMaterial(material: SvidMaterial): string {
  return digestOfParts([Buffer.from(material.spiffeId), material.keyDer, ...material.certChain]);
}

/**
 * The checks of the SVID's own bytes: the key is one PKCS#8 DER structure and
 * belongs to the leaf, the leaf's only URI SAN is the SPIFFE ID, and the leaf
 * is not a CA. Undefined when they all pass.
 */
function describeLeafProblem(material: SvidMaterial, leaf: X509Certificate): string | undefined {
  const keyProblem = describeKeyProblem(material.keyDer, leaf);
  if (keyProblem !== undefined) return keyProblem;

  let uris: string[];
  try {
    uris = parseSubjectAltName(leaf.subjectAltName)
      .filter((entry) => entry.type === 'URI')
      .map((entry) => entry.value);
  } catch (err) {
    return `the leaf's subjectAltName does not parse: ${errorMessage(err)}`;
  }
  if (uris.length !== 1 || uris[0] !== material.spiffeId) {
    return `the leaf must carry exactly one URI SAN equal to ${material.spiffeId}, found [${uris.join(', ')}]`;
  }
  if (leaf.ca) return 'the leaf certificate is a CA (basicConstraints cA=true); an X509-SVID leaf must not be';
  return undefined;
}

/**
 * The key is one PKCS#8 DER structure that belongs to the leaf. SPIRE's EC
 * keys take the fast, stricter path of ec-key-match.ts; every other key is
 * parsed by OpenSSL and compared with the leaf's public key.
 */
function describeKeyProblem(keyDer: Buffer, leaf: X509Certificate): string | undefined {
  const derProblem = describeDerProblem(keyDer, 'the private key');
  if (derProblem !== undefined) return `the private key is not a PKCS#8 DER key: ${derProblem}`;
  const ecMatch = matchEcPrivateKey(keyDer, leaf);
  if (ecMatch === 'match') return undefined;
  if (ecMatch !== 'unhandled') return ecMatch.problem;
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: keyDer, format: 'der', type: 'pkcs8' });
  } catch {
    return 'the private key is not a PKCS#8 DER key';
  }
  return leaf.checkPrivateKey(key) ? undefined : 'the private key does not match the leaf certificate';
}

/**
 * The bundle's certificates, parsed once per bundle: every volume of a trust
 * domain checks its SVID against the same array the bundle watcher holds, so
 * a bundle change checked on 500 volumes parses the bundle once, not 500
 * times. Keyed weakly: a replaced bundle's entry goes with it.
 */
const parsedBundles = new WeakMap<readonly Buffer[], readonly X509Certificate[]>();

function parsedBundle(bundle: readonly Buffer[]): readonly X509Certificate[] {
  let parsed = parsedBundles.get(bundle);
  if (parsed === undefined) {
    parsed = bundle.map((der) => new X509Certificate(der));
    parsedBundles.set(bundle, parsed);
  }
  return parsed;
}

/** Which of the authorities signed the chain's last certificate, when each is signed by the next; else what is wrong. */
function describeChainProblem(
  chain: readonly X509Certificate[],
  authorities: readonly X509Certificate[],
  trustDomainId: string,
): string | { authorityIndex: number } {
  for (let i = 0; i + 1 < chain.length; i++) {
    if (!isSignedBy(chain[i] as X509Certificate, chain[i + 1] as X509Certificate)) {
      return `certificate ${i} of the chain is not signed by certificate ${i + 1} (a chain must run leaf first, each certificate signed by the next)`;
    }
  }
  const last = chain[chain.length - 1] as X509Certificate;
  const index = authorities.findIndex((candidate) => isSignedBy(last, candidate));
  if (index === -1) return `the certificate chain does not lead to a CA of the trust bundle of ${trustDomainId}`;
  return { authorityIndex: index };
}

function isSignedBy(certificate: X509Certificate, issuer: X509Certificate): boolean {
  try {
    return certificate.checkIssued(issuer) && certificate.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

/** Undefined for a buffer holding exactly one DER SEQUENCE and nothing before or after it; else what is wrong. */
function describeDerProblem(der: Buffer, what: string): string | undefined {
  if (der.length === 0) return `${what} is empty`;
  try {
    const end = derStructureEnd(der, 0, what);
    return end === der.length ? undefined : `${what} has ${der.length - end} bytes after its DER structure`;
  } catch (err) {
    return errorMessage(err);
  }
}

/** "spiffe://example.org/ns/x" -> "spiffe://example.org" (the key SPIRE uses in bundle maps). */
export function trustDomainIdOf(spiffeId: string): string {
  const match = /^spiffe:\/\/([^/]+)/.exec(spiffeId);
  return match ? `spiffe://${match[1]}` : spiffeId;
}
