/**
 * The development agent's JWT-SVIDs: an ES256 key per (own) trust domain with
 * a key ID, tokens signed with node:crypto, the JWKS the JWT bundle stream
 * sends, and the agent's token cache, which hands out the same token until it
 * is half-way through its life (FetchJWTSVID in
 * https://github.com/spiffe/spire/blob/v1.15.3/pkg/agent/manager/manager.go).
 */
import crypto from 'node:crypto';

interface SigningKey {
  kid: string;
  privateKey: crypto.KeyObject;
  publicJwk: crypto.JsonWebKey;
}

export interface IssuedJwt {
  token: string;
  issuedAt: number;
  expiresAt: number;
}

export class JwtIssuer {
  /** Oldest first; the last signs. Old keys stay in the JWKS so tokens they signed still verify. */
  private keys: SigningKey[] = [newKey()];
  private readonly cache = new Map<string, IssuedJwt>();

  constructor(
    private readonly trustDomain: string,
    /** Lifetime of new tokens. */
    public ttlSeconds: number,
  ) {}

  /**
   * The JWKS document of the trust domain as SubscribeToJWTBundles sends it:
   * bundleutil.Marshal with NoX509SVIDKeys and StandardJWKS, so only the JWT
   * keys, no SPIFFE `use` or `spiffe_sequence`, indented by four spaces
   * (https://github.com/spiffe/spire/blob/v1.15.3/pkg/common/bundleutil/marshal.go).
   */
  jwks(): Buffer {
    return Buffer.from(JSON.stringify({ keys: this.keys.map((key) => ({ ...key.publicJwk, kid: key.kid })) }, null, 4));
  }

  /** A new signing key; the old one stays published. Cached tokens are dropped, as after a real key rotation they are re-signed. */
  rotateKey(): void {
    this.keys = [...this.keys.slice(-1), newKey()];
    this.cache.clear();
  }

  /** The cached token of `entryId` for these audiences while it is younger than half its life, else a new one. */
  issue(entryId: string, spiffeId: string, audiences: readonly string[], nowMs = Date.now()): IssuedJwt {
    const cacheKey = `${entryId}\n${[...audiences].sort().join('\n')}`;
    const cached = this.cache.get(cacheKey);
    const now = Math.floor(nowMs / 1000);
    if (cached !== undefined && now < cached.issuedAt + (cached.expiresAt - cached.issuedAt) / 2) return cached;
    const issuedAt = now;
    const expiresAt = now + this.ttlSeconds;
    const key = this.keys[this.keys.length - 1] as SigningKey;
    const header = { alg: 'ES256', kid: key.kid, typ: 'JWT' };
    const claims = { sub: spiffeId, aud: audiences.length === 1 ? audiences[0] : [...audiences], iat: issuedAt, exp: expiresAt };
    const signingInput = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`;
    // JWS wants the raw r||s form of an ECDSA signature (RFC 7518 §3.4), not DER.
    const signature = crypto.sign('sha256', Buffer.from(signingInput), { key: key.privateKey, dsaEncoding: 'ieee-p1363' });
    const issued = { token: `${signingInput}.${signature.toString('base64url')}`, issuedAt, expiresAt };
    this.cache.set(cacheKey, issued);
    return issued;
  }

  get name(): string {
    return this.trustDomain;
  }
}

function newKey(): SigningKey {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { kid: crypto.randomBytes(16).toString('hex'), privateKey, publicJwk: publicKey.export({ format: 'jwk' }) };
}

function base64url(text: string): string {
  return Buffer.from(text).toString('base64url');
}
