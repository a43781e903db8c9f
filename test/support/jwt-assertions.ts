/**
 * Checks a volume's JWT-SVID the way a relying party would, with a well-kept
 * JOSE library (panva/jose) rather than the driver's own code: the signature
 * against the JWT bundle file the volume holds (spiffe-helper's format:
 * {"<trust domain>": base64(JWKS)}), then `aud`, `sub` and `exp`.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, type JSONWebKeySet, type JWTPayload } from 'jose';

/** The JWT bundle file: trust domain name → its JWKS. */
export async function readJwtBundles(targetPath: string, file = 'bundle.json'): Promise<Record<string, JSONWebKeySet>> {
  const parsed = JSON.parse(await fs.readFile(path.join(targetPath, file), 'utf8')) as Record<string, unknown>;
  const bundles: Record<string, JSONWebKeySet> = {};
  for (const [trustDomain, encoded] of Object.entries(parsed)) {
    assert.equal(typeof encoded, 'string', `the bundle of ${trustDomain} is a base64 string`);
    bundles[trustDomain] = JSON.parse(Buffer.from(encoded as string, 'base64').toString('utf8')) as JSONWebKeySet;
  }
  return bundles;
}

export interface VerifiedJwt {
  token: string;
  payload: JWTPayload;
  kid: string | undefined;
}

/** Verifies the token in `tokenFile` against the volume's JWT bundle for `spiffeId`'s trust domain and checks its claims. */
export async function assertValidJwtSvid(
  targetPath: string,
  options: { tokenFile: string; spiffeId: string; audiences: string[]; bundleFile?: string },
): Promise<VerifiedJwt> {
  const token = (await fs.readFile(path.join(targetPath, options.tokenFile), 'utf8')).trim();
  const trustDomain = new URL(options.spiffeId).host;
  const bundles = await readJwtBundles(targetPath, options.bundleFile);
  const jwks = bundles[trustDomain];
  assert.ok(jwks, `the JWT bundle file has the trust domain ${trustDomain} (it has ${Object.keys(bundles).join(', ')})`);
  // Every audience must be in aud; jose's `audience` option accepts a token that has any ONE of them.
  const { payload } = await jwtVerify(token, createLocalJWKSet(jwks), { subject: options.spiffeId, requiredClaims: ['exp', 'aud', 'sub'] });
  const aud = typeof payload.aud === 'string' ? [payload.aud] : (payload.aud ?? []);
  assert.deepEqual([...aud].sort(), [...options.audiences].sort(), 'aud is exactly the requested audiences');
  assert.equal(payload.sub, options.spiffeId);
  assert.ok(typeof payload.exp === 'number' && payload.exp * 1000 > Date.now(), 'exp is in the future');
  return { token, payload, kid: decodeProtectedHeader(token).kid };
}
