/**
 * Volume attributes (pod.spec.volumes[].csi.volumeAttributes). They are written
 * by whoever can create a pod, so they may choose file names and formats (a
 * layout, a credential bundle), a group and which of the pod's own SVIDs to
 * write — and nothing else. In particular they can
 * never add, change or remove a selector (docs/design.md invariant 1): selectors are
 * built only from kubelet's pod info. Unknown keys are rejected so that a typo
 * fails the mount loudly instead of being ignored.
 */
import * as z from 'zod/mini';
import { convertedString } from '../validation.js';
import { invalidArgument } from '../errors.js';
import { describeFileNameProblem } from '../fs/file-names.js';
import {
  DEFAULT_COMBINED_BUNDLE_FILE,
  DEFAULT_FEDERATED_BUNDLE_MODE,
  FEDERATED_BUNDLE_MODES,
  FEDERATED_BUNDLE_SUFFIX,
  type FederatedBundleMode,
} from './federated-bundles.js';
import { DEFAULT_JWT_BUNDLE_FILE, parseJwtAudiences, type JwtAttributes } from './jwt-attributes.js';

export const ATTRIBUTE_PREFIX = 'csi.spire.io/';
/** Keys kubelet itself adds to volume_context (podInfoOnMount, tokenRequests). */
export const KUBELET_ATTRIBUTE_PREFIX = 'csi.storage.k8s.io/';

/**
 * Presets for the names applications are already configured with
 * (csi.spire.io/layout); csi.spire.io/cert-file, key-file and bundle-file
 * override single names. Only names, never content: every layout writes the
 * same PEM files (docs/design.md §4).
 *
 * - spiffe-helper: the names of spiffe-helper's examples
 *   (svid_file_name, svid_key_file_name, svid_bundle_file_name in
 *   https://github.com/spiffe/spiffe-helper/blob/main/README.md), this driver's
 *   default since its first version.
 * - cert-manager: the keys of a kubernetes.io/tls Secret as cert-manager fills
 *   them, and the defaults of cert-manager's own CSI driver
 *   (https://cert-manager.io/docs/usage/csi-driver/).
 *
 * The SPIFFE filesystem-delivery draft (https://github.com/spiffe/spiffe/pull/376)
 * is not a layout yet: it is an unmerged pull request whose file names were
 * still being changed in review, and a name shipped here would have to be kept.
 */
export const LAYOUTS = {
  'spiffe-helper': { cert: 'svid.pem', key: 'svid_key.pem', bundle: 'svid_bundle.pem' },
  'cert-manager': { cert: 'tls.crt', key: 'tls.key', bundle: 'ca.crt' },
} as const;

export type LayoutName = keyof typeof LAYOUTS;

export const DEFAULT_LAYOUT: LayoutName = 'spiffe-helper';

export const DEFAULT_FILE_NAMES = LAYOUTS[DEFAULT_LAYOUT];

const LAYOUT_NAMES = Object.keys(LAYOUTS) as [LayoutName, ...LayoutName[]];

export interface VolumeAttributes {
  /** The preset the three PEM names below started from (they may override it). */
  layout: LayoutName;
  certFile: string;
  keyFile: string;
  bundleFile: string;
  /**
   * One more file, in the format of Kubernetes' Pod Certificates credential
   * bundle (key, then chain), or undefined for none.
   */
  credentialBundleFile: string | undefined;
  /** A PKCS#12 keystore with the key and chain; absent or undefined for none. */
  pkcs12File?: string | undefined;
  /** Its password: csi.spire.io/pkcs12-password, else DEFAULT_PKCS12_PASSWORD; undefined without pkcs12File. */
  pkcs12Password?: string | undefined;
  /** Group that will own the files; the key becomes 0640. */
  fsGroup: number | undefined;
  /** Write the SVID with this SPIFFE ID when several entries match. */
  spiffeId: string | undefined;
  /** Write the SVID whose entry carries this hint when several entries match. */
  hint: string | undefined;
  /** csi.spire.io/federated-bundles; absent means the default (federated-bundles.ts). */
  federatedBundles?: FederatedBundleMode | undefined;
  /** The file with own and federated CAs, with federatedBundles combined only. */
  combinedBundleFile?: string | undefined;
  /** JWT-SVIDs and the JWT bundle (jwt-attributes.ts); absent without csi.spire.io/jwt-audiences. */
  jwt?: JwtAttributes;
}

/**
 * Java's own default keystore password (the JDK's cacerts, keytool's
 * examples), so `-storepass changeit` or Spring's `key-store-password` work
 * without a pod author choosing one. It is not a secret and protects nothing:
 * a volume attribute is readable by everyone who can read the pod, and the
 * file's mode (the key file's) is what guards the key.
 */
export const DEFAULT_PKCS12_PASSWORD = 'changeit';

/**
 * Printable ASCII only: PBES2 takes the password's bytes and the MAC its
 * BMPString, and readers convert other characters differently (OpenSSL from
 * the locale, Java from UTF-16), which would make a keystore one reader opens
 * and another refuses. Not empty: OpenSSL and Java disagree about what an
 * empty PKCS#12 password is.
 */
const pkcs12PasswordSchema = z
  .string()
  .check(
    z.minLength(1, { error: `must not be empty (leave the attribute out for the default "${DEFAULT_PKCS12_PASSWORD}")` }),
    z.maxLength(128, { error: 'must be at most 128 characters' }),
    z.regex(/^[\x20-\x7e]*$/, { error: 'must be printable ASCII (letters, digits, punctuation, space)' }),
  );

/** Attributes whose value a message must not repeat (it would land in kubelet's pod events). */
const UNECHOED_ATTRIBUTES = new Set(['pkcs12-password']);

const fileName = z.string().check(
  z.superRefine((name: string, ctx) => {
    const problem = describeFileNameProblem(name);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  }),
);

/** Kubernetes allows fsGroup 0; 4294967295 is (gid_t)-1, "leave unchanged" to chown(2). */
export const fsGroupSchema = z
  .pipe(z.string().check(z.regex(/^\d{1,10}$/, { error: 'must be a decimal group id' })), z.transform(Number))
  .check(z.refine((gid: number) => gid <= 4294967294, { error: 'must be between 0 and 4294967294' }));

const spiffeIdSchema = z.string().check(
  z.maxLength(2048),
  // Path segments are [A-Za-z0-9._-]+ but never "." or ".." (SPIFFE ID spec).
  z.regex(/^spiffe:\/\/[a-z0-9._-]+(\/(?!\.\.?(\/|$))[A-Za-z0-9._-]+)*$/, {
    error: 'must be a SPIFFE ID such as spiffe://example.org/ns/default/sa/app',
  }),
);

const attributeSchema = z.strictObject({
  // No defaults here: an absent name comes from csi.spire.io/layout.
  'cert-file': z.optional(fileName),
  'key-file': z.optional(fileName),
  'bundle-file': z.optional(fileName),
  'credential-bundle-file': z.optional(fileName),
  'pkcs12-file': z.optional(fileName),
  'pkcs12-password': z.optional(pkcs12PasswordSchema),
  layout: z._default(z.enum(LAYOUT_NAMES, { error: `must be one of ${LAYOUT_NAMES.join(', ')}` }), DEFAULT_LAYOUT),
  'fs-group': z.optional(fsGroupSchema),
  'spiffe-id': z.optional(spiffeIdSchema),
  hint: z.optional(z.string().check(z.minLength(1, { error: 'must not be empty' }), z.maxLength(1024))),
  'federated-bundles': z._default(
    z.enum(FEDERATED_BUNDLE_MODES, { error: `must be one of ${FEDERATED_BUNDLE_MODES.join(', ')}` }),
    DEFAULT_FEDERATED_BUNDLE_MODE,
  ),
  'combined-bundle-file': z.optional(fileName),
  'jwt-audiences': z.optional(
    convertedString((value, fail) => {
      const parsed = parseJwtAudiences(value);
      return 'problem' in parsed ? fail(parsed.problem) : parsed.svids;
    }),
  ),
  'jwt-bundle-file': z.optional(fileName),
});

export const SUPPORTED_ATTRIBUTES = Object.keys(attributeSchema.shape).map((key) => ATTRIBUTE_PREFIX + key);

export function parseVolumeAttributes(volumeContext: Readonly<Record<string, string>>): VolumeAttributes {
  // No prototype: a key like "__proto__" must arrive in the schema as an
  // unknown key, not vanish into Object.prototype's setter.
  const ours: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const [key, value] of Object.entries(volumeContext)) {
    if (key.startsWith(KUBELET_ATTRIBUTE_PREFIX)) continue;
    if (!key.startsWith(ATTRIBUTE_PREFIX)) {
      throw invalidArgument(
        `unknown volume attribute "${key}" in pod.spec.volumes[].csi.volumeAttributes; supported: ${SUPPORTED_ATTRIBUTES.join(', ')}`,
      );
    }
    ours[key.slice(ATTRIBUTE_PREFIX.length)] = value;
  }
  const result = attributeSchema.safeParse(ours);
  if (!result.success) {
    const problems = result.error.issues.map((issue) => {
      if (issue.code === 'unrecognized_keys') {
        return `unknown volume attribute ${issue.keys.map((k) => `"${ATTRIBUTE_PREFIX}${k}"`).join(', ')}; supported: ${SUPPORTED_ATTRIBUTES.join(', ')}`;
      }
      const key = String(issue.path[0] ?? '');
      if (UNECHOED_ATTRIBUTES.has(key)) return `volume attribute "${ATTRIBUTE_PREFIX}${key}": ${issue.message}`;
      return `volume attribute "${ATTRIBUTE_PREFIX}${key}"=${JSON.stringify(ours[key] ?? '')}: ${issue.message}`;
    });
    throw invalidArgument(problems.join('; '));
  }
  const value = result.data;
  const preset = LAYOUTS[value.layout];
  const certFile = value['cert-file'] ?? preset.cert;
  const keyFile = value['key-file'] ?? preset.key;
  const bundleFile = value['bundle-file'] ?? preset.bundle;
  const credentialBundleFile = value['credential-bundle-file'];
  const pkcs12File = value['pkcs12-file'];
  if (pkcs12File === undefined && value['pkcs12-password'] !== undefined) {
    throw invalidArgument(
      `volume attribute ${ATTRIBUTE_PREFIX}pkcs12-password is set but ${ATTRIBUTE_PREFIX}pkcs12-file is not: ` +
        `set ${ATTRIBUTE_PREFIX}pkcs12-file to the keystore's file name (e.g. keystore.p12), or remove the password`,
    );
  }
  const federatedBundles = value['federated-bundles'];
  if (federatedBundles !== 'combined' && value['combined-bundle-file'] !== undefined) {
    throw invalidArgument(
      `volume attribute ${ATTRIBUTE_PREFIX}combined-bundle-file is set but ${ATTRIBUTE_PREFIX}federated-bundles is ${federatedBundles}: ` +
        `set ${ATTRIBUTE_PREFIX}federated-bundles to combined, or remove ${ATTRIBUTE_PREFIX}combined-bundle-file`,
    );
  }
  const combinedBundleFile = federatedBundles === 'combined' ? (value['combined-bundle-file'] ?? DEFAULT_COMBINED_BUNDLE_FILE) : undefined;
  const jwtSvids = value['jwt-audiences'];
  if (jwtSvids === undefined && value['jwt-bundle-file'] !== undefined) {
    throw invalidArgument(
      `volume attribute ${ATTRIBUTE_PREFIX}jwt-bundle-file is set but ${ATTRIBUTE_PREFIX}jwt-audiences is not: ` +
        `set ${ATTRIBUTE_PREFIX}jwt-audiences to the tokens' audiences (e.g. vault), or remove the bundle file name`,
    );
  }
  const jwt: JwtAttributes | undefined =
    jwtSvids === undefined ? undefined : { svids: jwtSvids, bundleFile: value['jwt-bundle-file'] ?? DEFAULT_JWT_BUNDLE_FILE };
  const names = [
    ['cert-file', certFile, value['cert-file'] === undefined],
    ['key-file', keyFile, value['key-file'] === undefined],
    ['bundle-file', bundleFile, value['bundle-file'] === undefined],
    ...(credentialBundleFile === undefined ? [] : [['credential-bundle-file', credentialBundleFile, false] as const]),
    ...(pkcs12File === undefined ? [] : [['pkcs12-file', pkcs12File, false] as const]),
    ...(combinedBundleFile === undefined ? [] : [['combined-bundle-file', combinedBundleFile, false] as const]),
    ...(jwt === undefined ? [] : jwtFileNames(jwt, value['jwt-bundle-file'] === undefined)),
  ] as const;
  checkDistinct(value.layout, names);
  if (federatedBundles !== 'none') checkNoFederatedBundleName(names);
  return {
    layout: value.layout,
    certFile,
    keyFile,
    bundleFile,
    credentialBundleFile,
    pkcs12File,
    pkcs12Password: pkcs12File === undefined ? undefined : (value['pkcs12-password'] ?? DEFAULT_PKCS12_PASSWORD),
    fsGroup: value['fs-group'],
    spiffeId: value['spiffe-id'],
    hint: value.hint,
    federatedBundles,
    combinedBundleFile,
    ...(jwt === undefined ? {} : { jwt }),
  };
}

/** The JWT files for checkDistinct; a default name counts as the layout's, so the message says it was not set. */
function jwtFileNames(jwt: JwtAttributes, defaultBundleFile: boolean): (readonly [attribute: string, name: string, fromLayout: boolean])[] {
  return [...jwt.svids.map((svid) => ['jwt-audiences', svid.file, false] as const), ['jwt-bundle-file', jwt.bundleFile, defaultBundleFile] as const];
}

/**
 * The per-trust-domain files are named `<td>.federated-bundle.pem` after
 * whatever trust domains the agent lists later, so no other file may end that
 * way: the names could not be told apart, and one file would replace another.
 */
function checkNoFederatedBundleName(names: readonly (readonly [attribute: string, name: string, fromLayout: boolean])[]): void {
  const reserved = names.filter(([, name]) => name.endsWith(FEDERATED_BUNDLE_SUFFIX));
  if (reserved.length === 0) return;
  throw invalidArgument(
    `${reserved.map(([attribute, name]) => `${ATTRIBUTE_PREFIX}${attribute}=${JSON.stringify(name)}`).join(', ')}: ` +
      `names ending in "${FEDERATED_BUNDLE_SUFFIX}" are reserved for the federated trust bundles; ` +
      `choose another name, or set ${ATTRIBUTE_PREFIX}federated-bundles to none`,
  );
}

/**
 * Two files with one name would overwrite each other in the version directory
 * (the key over a 0644 certificate, or the other way round), so every name of a
 * volume must differ. The message names both attributes and where a name came
 * from when the layout chose it, so the pod's author sees which one to change.
 */
function checkDistinct(layout: LayoutName, names: readonly (readonly [attribute: string, name: string, fromLayout: boolean])[]): void {
  const clashes: string[] = [];
  names.forEach(([attribute, name, fromLayout], i) => {
    const earlier = names.slice(0, i).find(([, other]) => other === name);
    if (earlier === undefined) return;
    const describe = (key: string, isFromLayout: boolean): string =>
      `${ATTRIBUTE_PREFIX}${key}${isFromLayout ? ` (layout ${layout}'s default)` : ''}`;
    clashes.push(`${describe(earlier[0], earlier[2])} and ${describe(attribute, fromLayout)} are both ${JSON.stringify(name)}`);
  });
  if (clashes.length > 0) {
    throw invalidArgument(`every file of a volume needs its own name: ${clashes.join('; ')}; set one of them to another name`);
  }
}
