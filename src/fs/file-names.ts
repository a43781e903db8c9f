/**
 * Rules for the names of the files a volume exposes (`svid.pem`, or whatever a
 * pod sets with `csi.spire.io/cert-file` and friends).
 *
 * A name is a single path element at the volume root: the AtomicWriter layout
 * links `<name> -> ..data/<name>` there, and Envoy's default watch is on the
 * parent directory of each file, which has to be the directory where `..data`
 * is renamed (https://www.envoyproxy.io/docs/envoy/latest/configuration/security/secret#key-rotation).
 * A sub-directory would silently stop
 * rotations from being noticed, so it is not allowed.
 */

/** NAME_MAX on Linux; counted in bytes, not characters. */
export const MAX_FILE_NAME_BYTES = 255;

/**
 * Returns what is wrong with `name` as a volume file name, or undefined when it
 * is fine. The text is meant to be shown to the pod's author as is.
 */
export function describeFileNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'file name is empty';
  if (name.includes('\0')) return 'file name contains a NUL character';
  // A lone UTF-16 surrogate would reach the file system as U+FFFD, so the
  // file on disk would not have the name that was asked for.
  if (/\p{Cs}/u.test(name)) return 'file name is not valid Unicode (it contains a lone surrogate)';
  if (name.includes('/')) {
    return `file name ${JSON.stringify(name)} contains "/"; it must be a plain file name at the volume root`;
  }
  if (name === '.' || name === '..') return `file name ${JSON.stringify(name)} is not a file name`;
  // Names beginning with ".." (..data, ..data_tmp, ..<timestamp>) belong to the
  // AtomicWriter layout (src/fs/atomic-writer.ts); a single leading dot is
  // refused as well so hidden files cannot shadow or be confused with them.
  if (name.startsWith('.')) {
    return `file name ${JSON.stringify(name)} starts with "."; names starting with "." are reserved for the volume layout`;
  }
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes > MAX_FILE_NAME_BYTES) {
    return `file name is ${bytes} bytes long in UTF-8; at most ${MAX_FILE_NAME_BYTES} bytes are allowed`;
  }
  return undefined;
}
