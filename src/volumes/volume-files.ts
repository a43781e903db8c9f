/**
 * From the agent's SVID list and the trust bundle to the exact files of one
 * volume: which SVID to write, what goes in each file, and each file's mode.
 */
import type { FileSpec } from '../fs/atomic-writer.js';
import type { SpiffeIdMessage, X509SvidWithKey } from '../spire/messages.js';
import { DEFAULT_PKCS12_PASSWORD } from './attributes.js';
import { bundleToPem, certificatesToPem, derToPem } from '../x509/pem.js';
import type { buildPkcs12 } from '../x509/pkcs12.js';
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
  return formatSpiffeId(svid.x509_svid?.id);
}

/** `spiffe://<trust domain><path>` from the agent's SPIFFEID message (X.509- and JWT-SVIDs alike). */
export function formatSpiffeId(id: SpiffeIdMessage | null | undefined): string | undefined {
  return id ? `spiffe://${id.trust_domain}${id.path}` : undefined;
}

/**
 * The mode of every file that holds a secret (the key, the credential bundle,
 * the keystore, JWT-SVIDs): the driver's only, or readable by the pod's
 * fsGroup, which then owns it (docs/design.md invariant 8).
 */
export function keyFileMode(fsGroup: number | null): number {
  return fsGroup === null ? 0o600 : 0o640;
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
  /** Absent (records from before credential bundles, or not asked for): no such file. */
  credentialBundle?: string | undefined;
  /** Absent: no PKCS#12 keystore. */
  pkcs12?: string | undefined;
}

let pkcs12Encoder: typeof buildPkcs12 | undefined;

/**
 * Loads the PKCS#12 encoder (x509/pkcs12.ts and asn1js) the first time a
 * volume asks for a keystore; ManagedVolume awaits it before building the
 * files of such a volume. Most nodes never write one, and loaded at start it
 * cost ~0.3 MiB of JavaScript heap (README "Benchmarks").
 */
export async function loadPkcs12Support(): Promise<void> {
  pkcs12Encoder ??= (await import('../x509/pkcs12.js')).buildPkcs12;
}

/**
 * docs/design.md §4 (Layouts): key 0600, or 0640 group-owned with an fsGroup;
 * every file that holds the key gets the key's mode. All of them go into one
 * version directory, so they change in the same ..data swap.
 */
export function buildVolumeFiles(
  svid: PickedSvid,
  bundle: readonly Buffer[],
  names: FileNames,
  fsGroup: number | null,
  pkcs12Password: string = DEFAULT_PKCS12_PASSWORD,
): FileSpec[] {
  const keyMode = keyFileMode(fsGroup);
  const keyPem = derToPem(svid.keyDer, 'PRIVATE KEY');
  const chainPem = certificatesToPem(svid.certChain);
  const files: FileSpec[] = [
    { name: names.cert, data: Buffer.from(chainPem), mode: 0o644 },
    { name: names.key, data: Buffer.from(keyPem), mode: keyMode },
    { name: names.bundle, data: bundleToPem(bundle), mode: 0o644 },
  ];
  if (names.credentialBundle !== undefined) {
    files.push({ name: names.credentialBundle, data: credentialBundle(keyPem, chainPem), mode: keyMode });
  }
  if (names.pkcs12 !== undefined) {
    // Encrypted, but with a password from the pod spec: the mode is what keeps it as private as the key file.
    files.push({
      name: names.pkcs12,
      data: requirePkcs12Encoder()({ keyDer: svid.keyDer, certChain: svid.certChain, password: pkcs12Password }),
      mode: keyMode,
    });
  }
  return files;
}

function requirePkcs12Encoder(): typeof buildPkcs12 {
  if (pkcs12Encoder === undefined) throw new Error('internal error: a PKCS#12 keystore was asked for before loadPkcs12Support()');
  return pkcs12Encoder;
}

/**
 * The credential bundle of Kubernetes' Pod Certificates (KEP-4317,
 * `podCertificate.credentialBundlePath`): "a single file in PEM format. The
 * first PEM entry is the private key (in PKCS#8 format), and the remaining PEM
 * entries are the certificate chain issued by the signer" (PodCertificateProjection
 * in https://github.com/kubernetes/api/blob/master/core/v1/types.go). Byte for
 * byte what kubelet writes: the `PRIVATE KEY` block, then one `CERTIFICATE`
 * block per chain certificate, leaf first, each as Go's pem.EncodeToMemory
 * makes it (64-character lines, "\n"), nothing between them (makeCredentialBundle
 * and pemEncodeKey in
 * https://github.com/kubernetes/kubernetes/blob/master/pkg/kubelet/podcertificate/podcertificatemanager.go).
 * So an application written for a native podCertificate volume reads it
 * unchanged, key and chain in one read of one file, which is also what
 * HAProxy-style servers take. The chain is SPIRE's: leaf, then intermediates,
 * never the root (docs/design.md F8).
 */
function credentialBundle(keyPem: string, chainPem: string): Buffer {
  return Buffer.from(keyPem + chainPem);
}
