/**
 * Volume attributes (pod.spec.volumes[].csi.volumeAttributes). They are written
 * by whoever can create a pod, so they may choose file names, a group and which
 * of the pod's own SVIDs to write — and nothing else. In particular they can
 * never add, change or remove a selector (docs/design.md invariant 1): selectors are
 * built only from kubelet's pod info. Unknown keys are rejected so that a typo
 * fails the mount loudly instead of being ignored.
 */
import { z } from 'zod';
import { invalidArgument } from '../errors.js';
import { describeFileNameProblem } from '../fs/file-names.js';

export const ATTRIBUTE_PREFIX = 'csi.spire.io/';
/** Keys kubelet itself adds to volume_context (podInfoOnMount, tokenRequests). */
export const KUBELET_ATTRIBUTE_PREFIX = 'csi.storage.k8s.io/';

export const DEFAULT_FILE_NAMES = {
  cert: 'svid.pem',
  key: 'svid_key.pem',
  bundle: 'svid_bundle.pem',
} as const;

export interface VolumeAttributes {
  certFile: string;
  keyFile: string;
  bundleFile: string;
  /** Group that will own the files; the key becomes 0640. */
  fsGroup: number | undefined;
  /** Write the SVID with this SPIFFE ID when several entries match. */
  spiffeId: string | undefined;
  /** Write the SVID whose entry carries this hint when several entries match. */
  hint: string | undefined;
}

const fileName = z.string().superRefine((name, ctx) => {
  const problem = describeFileNameProblem(name);
  if (problem) ctx.addIssue({ code: 'custom', message: problem });
});

/** Kubernetes allows fsGroup 0; 4294967295 is (gid_t)-1, "leave unchanged" to chown(2). */
export const fsGroupSchema = z
  .string()
  .regex(/^\d{1,10}$/, { error: 'must be a decimal group id' })
  .transform(Number)
  .refine((gid) => gid <= 4294967294, { error: 'must be between 0 and 4294967294' });

const spiffeIdSchema = z
  .string()
  .max(2048)
  // Path segments are [A-Za-z0-9._-]+ but never "." or ".." (SPIFFE ID spec).
  .regex(/^spiffe:\/\/[a-z0-9._-]+(\/(?!\.\.?(\/|$))[A-Za-z0-9._-]+)*$/, {
    error: 'must be a SPIFFE ID such as spiffe://example.org/ns/default/sa/app',
  });

const attributeSchema = z
  .object({
    'cert-file': fileName.default(DEFAULT_FILE_NAMES.cert),
    'key-file': fileName.default(DEFAULT_FILE_NAMES.key),
    'bundle-file': fileName.default(DEFAULT_FILE_NAMES.bundle),
    'fs-group': fsGroupSchema.optional(),
    'spiffe-id': spiffeIdSchema.optional(),
    hint: z.string().min(1, { error: 'must not be empty' }).max(1024).optional(),
  })
  .strict();

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
      return `volume attribute "${ATTRIBUTE_PREFIX}${key}"=${JSON.stringify(ours[key] ?? '')}: ${issue.message}`;
    });
    throw invalidArgument(problems.join('; '));
  }
  const value = result.data;
  const names = [value['cert-file'], value['key-file'], value['bundle-file']];
  if (new Set(names).size !== names.length) {
    throw invalidArgument(
      `volume attributes ${ATTRIBUTE_PREFIX}cert-file, key-file and bundle-file must be three different names, got ${names.join(', ')}`,
    );
  }
  return {
    certFile: value['cert-file'],
    keyFile: value['key-file'],
    bundleFile: value['bundle-file'],
    fsGroup: value['fs-group'],
    spiffeId: value['spiffe-id'],
    hint: value.hint,
  };
}
