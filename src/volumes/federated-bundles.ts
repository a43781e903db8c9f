/**
 * Federated trust bundles (csi.spire.io/federated-bundles): which trust
 * domains a volume gets bundles for, what each file is called, and what goes
 * in the combined file. The SVID response lists the trust domains the pod's
 * entry federates with (`federates_with`, `spiffe://<td>` strings, docs/design.md
 * F7); the node-wide bundle stream carries every bundle the agent holds, for
 * every entry on the node (F9, F22). A volume gets exactly the intersection:
 * a pod must never be handed a CA it was not registered to trust.
 */
import type { FileSpec } from '../fs/atomic-writer.js';
import { describeFileNameProblem } from '../fs/file-names.js';
import { bundleToPem, certificatesToPem, withoutDuplicates } from '../x509/pem.js';

/**
 * - separate: one file per federated trust domain, `<td>.federated-bundle.pem`.
 * - combined: those files, and one more holding the own and every federated CA.
 * - none: no federated file at all.
 */
export const FEDERATED_BUNDLE_MODES = ['separate', 'combined', 'none'] as const;

export type FederatedBundleMode = (typeof FEDERATED_BUNDLE_MODES)[number];

export const DEFAULT_FEDERATED_BUNDLE_MODE: FederatedBundleMode = 'separate';

/** The combined file's name unless csi.spire.io/combined-bundle-file says otherwise. */
export const DEFAULT_COMBINED_BUNDLE_FILE = 'combined_bundle.pem';

/**
 * Every per-trust-domain file ends with this, and no other file of a volume
 * may (attributes.ts refuses such names), so the trust domains a response
 * brings can never take the name of the certificate, key or own bundle.
 * Not the SPIFFE filesystem-delivery draft's `<td>.spiffe-trust-bundle.pem`
 * (https://github.com/spiffe/spiffe/pull/376): that draft is unmerged, and its
 * file holds the own trust domain too, which ours never does.
 */
export const FEDERATED_BUNDLE_SUFFIX = '.federated-bundle.pem';

/** A SPIFFE trust domain name: lowercase letters, digits, ".", "-", "_" (SPIFFE ID spec §2.1). */
const TRUST_DOMAIN_NAME = /^[a-z0-9._-]+$/;

/**
 * Records written before federation existed, and a mode a newer driver may
 * add, read as the default: what the pod would get if it were published now.
 */
export function federatedBundleModeOf(recorded: string | undefined): FederatedBundleMode {
  return (FEDERATED_BUNDLE_MODES as readonly string[]).includes(recorded ?? '') ? (recorded as FederatedBundleMode) : DEFAULT_FEDERATED_BUNDLE_MODE;
}

/**
 * The file name for the bundle of `trustDomainId` (`spiffe://<td>`), or the
 * reason there is none. SPIRE only sends parsed trust domain names, but the
 * name reaches the file system, so it is checked as if it came from anyone:
 * nothing but the SPIFFE trust-domain characters, not starting with "." (so
 * never `..data` or `..`), and short enough for NAME_MAX.
 */
export function federatedBundleFileName(trustDomainId: string): { name: string } | { problem: string } {
  const td = trustDomainId.startsWith('spiffe://') ? trustDomainId.slice('spiffe://'.length) : undefined;
  if (td === undefined || !TRUST_DOMAIN_NAME.test(td)) {
    return { problem: `${JSON.stringify(trustDomainId)} is not a trust domain ID of the form spiffe://<lowercase letters, digits, ".", "-", "_">` };
  }
  const name = td + FEDERATED_BUNDLE_SUFFIX;
  const problem = describeFileNameProblem(name);
  return problem === undefined ? { name } : { problem: `trust domain ${td}: ${problem}` };
}

/** The trust domains a volume gets files for: its entry's `federates_with`, without its own, each once, sorted. */
export function federatedTrustDomainIds(federatesWith: readonly string[], ownTrustDomainId: string): string[] {
  return [...new Set(federatesWith)].filter((id) => id !== ownTrustDomainId).sort();
}

export interface FederatedBundleInput {
  mode: FederatedBundleMode;
  /** The combined file's name; used with mode combined only. */
  combinedFileName: string;
  ownBundle: readonly Buffer[];
  /** Trust domain ID → its CAs, for the trust domains the volume gets (federatedTrustDomainIds) whose bundle is known. */
  federated: ReadonlyMap<string, readonly Buffer[]>;
  /** Names the volume's other files use: a federated file never replaces one of them. */
  takenNames: ReadonlySet<string>;
}

export interface FederatedBundleFiles {
  files: FileSpec[];
  /** Trust domains left out, with why (a name no file can have); for the log. */
  skipped: { trustDomainId: string; problem: string }[];
}

/**
 * The federated files of one version, each 0644 like the own bundle: public
 * CAs. The combined file holds the own CAs first, then each federated trust
 * domain's in name order, every certificate once.
 */
export function buildFederatedBundleFiles(input: FederatedBundleInput): FederatedBundleFiles {
  const result: FederatedBundleFiles = { files: [], skipped: [] };
  if (input.mode === 'none') return result;
  const combined: Buffer[] = [...input.ownBundle];
  for (const [trustDomainId, certificates] of [...input.federated].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const named = federatedBundleFileName(trustDomainId);
    if ('problem' in named) {
      result.skipped.push({ trustDomainId, problem: named.problem });
      continue;
    }
    if (input.takenNames.has(named.name)) {
      result.skipped.push({ trustDomainId, problem: `its file name ${named.name} is another file of the volume` });
      continue;
    }
    result.files.push({ name: named.name, data: bundleToPem(certificates), mode: 0o644 });
    combined.push(...certificates);
  }
  if (input.mode === 'combined') {
    result.files.push({ name: input.combinedFileName, data: Buffer.from(certificatesToPem(withoutDuplicates(combined))), mode: 0o644 });
  }
  return result;
}
