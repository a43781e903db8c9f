/**
 * From the agent's SVID list and the trust bundle to the exact files of one
 * volume: which SVID to write, what goes in each file, and each file's mode.
 */
import type { FileSpec } from '../fs/atomic-writer.js';
import type { X509SvidWithKey } from '../spire/messages.js';
import { certificatesToPem, derToPem } from '../x509/pem.js';
import { trustDomainIdOf } from '../x509/svid-check.js';

export interface SvidChoice {
  spiffeId: string | null;
  hint: string | null;
}

export interface PickedSvid {
  spiffeId: string;
  trustDomainId: string;
  certChain: Buffer[];
  keyDer: Buffer;
  hint: string;
}

export function spiffeIdOf(svid: X509SvidWithKey): string | undefined {
  const id = svid.x509_svid?.id;
  return id ? `spiffe://${id.trust_domain}${id.path}` : undefined;
}

/**
 * The agent sorts SVIDs by entry id (sortIdentities in
 * https://github.com/spiffe/spire/tree/v1.15.3/pkg/agent/manager/cache), so
 * "the first" is stable but arbitrary; csi.spire.io/spiffe-id and
 * csi.spire.io/hint let a pod with several matching entries say which one it wants.
 */
export function pickSvid(svids: readonly X509SvidWithKey[], choice: SvidChoice): PickedSvid | { problem: string } {
  const candidates = svids.filter((svid) => {
    const spiffeId = spiffeIdOf(svid);
    if (spiffeId === undefined) return false;
    if (choice.spiffeId !== null && spiffeId !== choice.spiffeId) return false;
    if (choice.hint !== null && svid.x509_svid?.hint !== choice.hint) return false;
    return true;
  });
  const chosen = candidates[0];
  if (chosen === undefined || chosen.x509_svid === null) {
    const offered = svids.map((svid) => `${spiffeIdOf(svid) ?? '?'}${svid.x509_svid?.hint ? ` (hint ${svid.x509_svid.hint})` : ''}`);
    const wanted = [choice.spiffeId && `SPIFFE ID ${choice.spiffeId}`, choice.hint && `hint "${choice.hint}"`].filter(Boolean).join(' and ');
    return { problem: `none of the ${svids.length} SVIDs the agent offers has ${wanted || 'a SPIFFE ID'}: [${offered.join(', ')}]` };
  }
  const spiffeId = spiffeIdOf(chosen) as string;
  return {
    spiffeId,
    trustDomainId: trustDomainIdOf(spiffeId),
    certChain: chosen.x509_svid.cert_chain,
    keyDer: chosen.x509_svid_key,
    hint: chosen.x509_svid.hint,
  };
}

export interface FileNames {
  cert: string;
  key: string;
  bundle: string;
}

/** docs/design.md §4 (Layouts): key 0600, or 0640 group-owned with an fsGroup. */
export function buildVolumeFiles(svid: PickedSvid, bundle: readonly Buffer[], names: FileNames, fsGroup: number | null): FileSpec[] {
  return [
    { name: names.cert, data: Buffer.from(certificatesToPem(svid.certChain)), mode: 0o644 },
    { name: names.key, data: Buffer.from(derToPem(svid.keyDer, 'PRIVATE KEY')), mode: fsGroup === null ? 0o600 : 0o640 },
    { name: names.bundle, data: Buffer.from(certificatesToPem(bundle)), mode: 0o644 },
  ];
}
