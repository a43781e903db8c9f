/**
 * The JWT-SVID attributes of a volume: which tokens to write (csi.spire.io/jwt-audiences)
 * and where the JWT bundle goes (csi.spire.io/jwt-bundle-file). Like every
 * attribute they choose audiences and file names only; the identity is the
 * pod's, fetched with the same selectors as its X.509-SVID (docs/design.md invariant 1).
 *
 * `csi.spire.io/jwt-audiences` is a list of tokens separated by `;`, each one
 * `[<file>=]<audience>[,<audience>...]`: one token per entry, all of an entry's
 * audiences in that token's `aud`, as spiffe-helper's `jwt_svids` entries
 * (`jwt_audience` plus `jwt_extra_audiences`, one `jwt_svid_file_name` each:
 * https://github.com/spiffe/spiffe-helper/blob/main/README.md). One entry may
 * leave out its file name and gets DEFAULT_JWT_SVID_FILE.
 */
import { describeFileNameProblem } from '../fs/file-names.js';

/** spiffe-helper's README example names (jwt_svid_file_name, jwt_bundle_file_name). */
export const DEFAULT_JWT_SVID_FILE = 'jwt_svid.token';
export const DEFAULT_JWT_BUNDLE_FILE = 'bundle.json';

/**
 * Bounds that keep a volume's fetch small: every token is one FetchJWTSVIDs
 * call per refresh, and a token's `aud` travels in every request the pod makes.
 */
export const MAX_JWT_SVIDS = 8;
export const MAX_AUDIENCES_PER_JWT_SVID = 8;
export const MAX_AUDIENCE_LENGTH = 256;

/**
 * Printable ASCII but the list's own separators (`,` `;` `=`) and spaces:
 * audiences are URLs (`https://vault.example.com`), host names
 * (`sts.amazonaws.com`) or URNs (`api://AzureADTokenExchange`), which all fit.
 */
const AUDIENCE = /^[\x21-\x7e]+$/;
const SEPARATORS = /[,;=]/;

/** One token to keep in the volume. */
export interface JwtSvidRequest {
  /** The file's name in the volume. */
  file: string;
  /** Every value of the token's `aud`, in the order given. */
  audiences: string[];
}

export interface JwtAttributes {
  svids: JwtSvidRequest[];
  /** The JWKS file: {"<trust domain>": base64(JWKS)} as spiffe-helper writes it. */
  bundleFile: string;
}

/**
 * Parses csi.spire.io/jwt-audiences. Returns the problems in words (each names
 * what to change) instead of throwing, so attributes.ts reports them with its
 * other attribute errors.
 */
export function parseJwtAudiences(value: string): { svids: JwtSvidRequest[] } | { problem: string } {
  const entries = value.split(';').map((entry) => entry.trim());
  if (entries.length > MAX_JWT_SVIDS) {
    return { problem: `asks for ${entries.length} tokens; at most ${MAX_JWT_SVIDS} per volume (entries are separated by ";")` };
  }
  const svids: JwtSvidRequest[] = [];
  let unnamed = 0;
  for (const [index, entry] of entries.entries()) {
    const where = entries.length === 1 ? '' : `entry ${index + 1} (${JSON.stringify(entry)}): `;
    const equals = entry.indexOf('=');
    const file = equals === -1 ? undefined : entry.slice(0, equals).trim();
    const list = equals === -1 ? entry : entry.slice(equals + 1);
    if (file !== undefined) {
      const fileProblem = describeFileNameProblem(file);
      if (fileProblem) return { problem: `${where}${fileProblem}` };
    }
    const audiences = list.split(',').map((audience) => audience.trim());
    for (const audience of audiences) {
      if (audience === '') {
        return { problem: `${where}has an empty audience; write one or more audiences separated by "," (e.g. "vault" or "vault,sts.amazonaws.com")` };
      }
      if (audience.length > MAX_AUDIENCE_LENGTH) return { problem: `${where}audience is longer than ${MAX_AUDIENCE_LENGTH} characters` };
      if (!AUDIENCE.test(audience) || SEPARATORS.test(audience)) {
        return {
          problem: `${where}audience ${JSON.stringify(audience)} must be printable ASCII without spaces, "," ";" or "=" (those separate audiences, tokens and a file name)`,
        };
      }
    }
    if (audiences.length > MAX_AUDIENCES_PER_JWT_SVID) {
      return { problem: `${where}has ${audiences.length} audiences; at most ${MAX_AUDIENCES_PER_JWT_SVID} per token` };
    }
    const repeated = audiences.find((audience, i) => audiences.indexOf(audience) !== i);
    if (repeated !== undefined) return { problem: `${where}lists audience ${JSON.stringify(repeated)} twice` };
    if (file === undefined) {
      unnamed += 1;
      if (unnamed > 1) {
        return {
          problem: `${where}only one token may use the default file name ${DEFAULT_JWT_SVID_FILE}; name the others' files as <file>=<audience>, e.g. vault.token=vault`,
        };
      }
    }
    svids.push({ file: file ?? DEFAULT_JWT_SVID_FILE, audiences });
  }
  const sameToken = svids.find((svid, i) => svids.slice(0, i).some((other) => sameAudiences(other.audiences, svid.audiences)));
  if (sameToken !== undefined) {
    return { problem: `two entries ask for the same audiences (${sameToken.audiences.join(',')}); one token serves both, so list it once` };
  }
  return { svids };
}

function sameAudiences(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((audience) => b.includes(audience));
}
