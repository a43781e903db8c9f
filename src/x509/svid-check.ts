import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { parseSubjectAltName } from './subject-alt-name.js';
import { errorMessage } from '../errors.js';

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
  notAfter: Date;
}

export type SvidCheckResult = { ok: true; svid: CheckedSvid } | { ok: false; reason: string };

/**
 * DESIGN.md invariant 5: nothing invalid is written. The key must be PKCS#8 and
 * belong to the leaf, the leaf's only URI SAN must be the SPIFFE ID the agent
 * says it is, the leaf must not have expired, and the bundle must hold at least
 * one parseable certificate. A failure keeps the previous files in place; the
 * reason is logged (it never contains key material).
 */
export function checkSvid(material: SvidMaterial, now: Date = new Date()): SvidCheckResult {
  const leafDer = material.certChain[0];
  if (leafDer === undefined) return { ok: false, reason: 'the certificate chain is empty' };

  let chain: X509Certificate[];
  try {
    chain = material.certChain.map((der) => new X509Certificate(der));
  } catch (err) {
    return { ok: false, reason: `a certificate in the chain does not parse: ${errorMessage(err)}` };
  }
  const leaf = chain[0] as X509Certificate;

  let key: KeyObject;
  try {
    key = createPrivateKey({ key: material.keyDer, format: 'der', type: 'pkcs8' });
  } catch {
    return { ok: false, reason: 'the private key is not a PKCS#8 DER key' };
  }
  if (!leaf.checkPrivateKey(key)) {
    return { ok: false, reason: 'the private key does not match the leaf certificate' };
  }

  let uris: string[];
  try {
    uris = parseSubjectAltName(leaf.subjectAltName)
      .filter((entry) => entry.type === 'URI')
      .map((entry) => entry.value);
  } catch (err) {
    return { ok: false, reason: `the leaf's subjectAltName does not parse: ${errorMessage(err)}` };
  }
  if (uris.length !== 1 || uris[0] !== material.spiffeId) {
    return {
      ok: false,
      reason: `the leaf must carry exactly one URI SAN equal to ${material.spiffeId}, found [${uris.join(', ')}]`,
    };
  }

  const notAfter = new Date(leaf.validTo);
  if (!(notAfter.getTime() > now.getTime())) {
    return { ok: false, reason: `the leaf certificate expired at ${notAfter.toISOString()}` };
  }

  if (material.bundle.length === 0) {
    return { ok: false, reason: `the trust bundle for ${trustDomainIdOf(material.spiffeId)} is empty` };
  }
  try {
    for (const der of material.bundle) new X509Certificate(der);
  } catch (err) {
    return { ok: false, reason: `a trust bundle certificate does not parse: ${errorMessage(err)}` };
  }

  return { ok: true, svid: { spiffeId: material.spiffeId, serialNumber: leaf.serialNumber, notAfter } };
}

/** "spiffe://example.org/ns/x" -> "spiffe://example.org" (the key SPIRE uses in bundle maps). */
export function trustDomainIdOf(spiffeId: string): string {
  const match = /^spiffe:\/\/([^/]+)/.exec(spiffeId);
  return match ? `spiffe://${match[1]}` : spiffeId;
}
