/**
 * From the held JWT-SVIDs and JWT bundles to the JWT files of one volume: one
 * compact JWT per csi.spire.io/jwt-audiences entry, and the JWT bundle file in
 * spiffe-helper's format. They join the X.509 files in the same version
 * directory, so everything changes in one ..data swap (docs/design.md invariant 4).
 */
import type { FileSpec } from '../fs/atomic-writer.js';
import type { JwtBundleSource } from '../spire/jwt-bundle-watcher.js';
import type { JwtSvidMessage } from '../spire/messages.js';
import type { JwtAttributes, JwtSvidRequest } from './jwt-attributes.js';
import { formatSpiffeId } from './volume-files.js';

export interface JwtFilesInput {
  jwt: JwtAttributes;
  /** The SPIFFE ID and hint of the X.509-SVID the volume writes: its tokens are for the same identity. */
  spiffeId: string;
  hint: string;
  /** The trust domain ID of that identity, and those it federates with ("spiffe://<td>"). */
  trustDomainIds: readonly string[];
  svidsFor: (request: JwtSvidRequest) => readonly JwtSvidMessage[] | undefined;
  bundles: JwtBundleSource;
  /** Token files are credentials: the key file's mode. */
  tokenMode: number;
  nowMs: number;
}

export function buildJwtFiles(input: JwtFilesInput): FileSpec[] | { problem: string } {
  const files: FileSpec[] = [];
  for (const request of input.jwt.svids) {
    const svids = input.svidsFor(request);
    const audiences = request.audiences.join(',');
    if (svids === undefined) return { problem: `the SPIRE agent has not issued the JWT-SVID for audience ${audiences} yet` };
    const svid = pickJwtSvid(svids, input.spiffeId, input.hint);
    if (svid === undefined) {
      return {
        problem:
          `none of the ${svids.length} JWT-SVIDs the agent issued for audience ${audiences} is for ${input.spiffeId}, ` +
          `the identity of the volume's X.509-SVID: [${svids.map(spiffeIdOfJwt).join(', ')}]`,
      };
    }
    const invalid = describeTokenProblem(svid.token, input.spiffeId, request.audiences, input.nowMs);
    if (invalid !== undefined) return { problem: `the SPIRE agent's JWT-SVID for audience ${audiences} was rejected: ${invalid}` };
    files.push({ name: request.file, data: Buffer.from(svid.token), mode: input.tokenMode });
  }
  const bundle = jwtBundleFile(input.trustDomainIds, input.bundles);
  if ('problem' in bundle) return bundle;
  files.push({ name: input.jwt.bundleFile, data: bundle.data, mode: 0o644 });
  return files;
}

function spiffeIdOfJwt(svid: JwtSvidMessage): string {
  return formatSpiffeId(svid.id) ?? '?';
}

/** The token of the same identity as the X.509 side; by hint too when several entries share the SPIFFE ID. */
function pickJwtSvid(svids: readonly JwtSvidMessage[], spiffeId: string, hint: string): JwtSvidMessage | undefined {
  const sameId = svids.filter((svid) => spiffeIdOfJwt(svid) === spiffeId);
  return sameId.find((svid) => svid.hint === hint) ?? sameId[0];
}

/**
 * What is wrong with a token before it is written, or undefined: a compact
 * JWS whose claims say it is for this identity (`sub`), all the requested
 * audiences (`aud`), and not expired (`exp`) (JWT-SVID §3,
 * https://github.com/spiffe/spiffe/blob/main/standards/JWT-SVID.md). The
 * signature is the reader's to check against the bundle file.
 */
export function describeTokenProblem(token: string, spiffeId: string, audiences: readonly string[], nowMs: number): string | undefined {
  const parts = token.split('.');
  if (parts.length !== 3 || parts.some((part) => !/^[A-Za-z0-9_-]+$/.test(part))) return 'not a compact JWS';
  let claims: unknown;
  try {
    claims = JSON.parse(Buffer.from(parts[1] as string, 'base64url').toString('utf8'));
  } catch {
    return 'its claims are not JSON';
  }
  if (typeof claims !== 'object' || claims === null || Array.isArray(claims)) return 'its claims are not a JSON object';
  const { sub, aud, exp } = claims as { sub?: unknown; aud?: unknown; exp?: unknown };
  if (sub !== spiffeId) return `sub is ${JSON.stringify(sub)}, not ${spiffeId}`;
  const audList = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : [];
  const missing = audiences.filter((audience) => !audList.includes(audience));
  if (missing.length > 0) return `aud lacks ${missing.join(', ')}`;
  if (typeof exp !== 'number' || exp * 1000 <= nowMs) return 'it has expired';
  return undefined;
}

/**
 * spiffe-helper's jwt_bundle_file_name format: a JSON object from the bare
 * trust domain name to the base64 (standard alphabet) of its JWKS
 * (WriteJWTBundleSet in https://github.com/spiffe/spiffe-helper/blob/main/pkg/disk/json.go
 * keys by `TrustDomain().Name()`). Only the volume's own trust domain and those
 * its SVID federates with: the agent's stream carries every bundle it holds.
 * Keys sorted, so the same bundles always give the same bytes.
 */
function jwtBundleFile(trustDomainIds: readonly string[], bundles: JwtBundleSource): { data: Buffer } | { problem: string } {
  const [own, ...federated] = trustDomainIds;
  if (own === undefined || bundles.get(own) === undefined) {
    return { problem: `the SPIRE agent has not sent the JWT bundle of ${own ?? 'the trust domain'} yet` };
  }
  const entries: [string, string][] = [];
  for (const id of [own, ...federated]) {
    const jwks = bundles.get(id);
    if (jwks !== undefined) entries.push([id.slice('spiffe://'.length), jwks.toString('base64')]);
  }
  entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return { data: Buffer.from(JSON.stringify(Object.fromEntries(entries))) };
}
