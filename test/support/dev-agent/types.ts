/**
 * The development agent's types: the public ones, which dev-agent.ts re-exports
 * (tests import them from there), and the entry record the modules share.
 */
import type { Selector } from '../../../src/spire/messages.js';

export type CallerAuthorization = 'authorized' | 'no-entry' | 'not-delegate';

export interface DevAgentOptions {
  /** Absolute path of the admin socket. */
  socketPath: string;
  /** Bare trust domain name. Default `example.org`. */
  trustDomain?: string;
  /** X.509-SVID lifetime when an entry sets none. Default 3600 (SPIRE's default `x509_svid_ttl`). */
  svidTtlSeconds?: number;
  /** Re-sign each SVID at half its lifetime, as the agent's `ShouldRotateX509` does (without the ±10 % jitter). */
  autoRotate?: boolean;
  /** Delay before the first response of a stream whose selectors match entries (F5: the real agent blocks until the SVIDs are cached). */
  firstResponseDelayMs?: number;
  /** JWT-SVID lifetime. Default 300 (SPIRE's default `default_jwt_svid_ttl`, 5 min). */
  jwtSvidTtlSeconds?: number;
  /** Outcome of the caller check that stands in for peer attestation (F2). Default `authorized`. */
  callerAuthorization?: CallerAuthorization;
}

export interface DevEntrySpec {
  /** Entry ID; default `entry-000001`, `entry-000002`, … in creation order. Responses are sorted by it (F4). */
  id?: string;
  /** `spiffe://<trust domain>/<path>` in the agent's own trust domain. */
  spiffeId: string;
  /** `type:value` strings such as `k8s:ns:default`; split at the first colon. */
  selectors: string[];
  hint?: string;
  ttlSeconds?: number;
  /** Admin entries match but are never sent to a delegate (F4). */
  admin?: boolean;
  /** Trust domains, `spiffe://td` or bare `td`. */
  federatesWith?: string[];
}

export interface DevEntry {
  id: string;
  spiffeId: string;
  selectors: Selector[];
  hint: string;
  ttlSeconds: number;
  admin: boolean;
  /** Normalised to `spiffe://td`. */
  federatesWith: string[];
}

export interface CurrentSvid {
  /** The leaf. */
  certDer: Buffer;
  /** Leaf first, as sent in `cert_chain`. */
  certChain: Buffer[];
  keyPkcs8Der: Buffer;
  /** Lower-case hex; empty when an injected certificate could not be parsed. */
  serialHex: string;
  spiffeId: string;
  notAfter: Date;
}

/** Material for {@link DevAgent.replaceSvid}, sent exactly as given. */
export interface InjectedSvid {
  certChain: Buffer[];
  keyPkcs8Der: Buffer;
  /** Unix seconds for `expires_at`; default the leaf's NotAfter (0 if the leaf does not parse). */
  expiresAt?: number;
}

/** An SVID as the agent holds and sends it: signed here, or injected by a test. */
export interface IssuedSvid {
  certChain: Buffer[];
  keyPkcs8Der: Buffer;
  serialHex: string;
  notAfter: Date;
  expiresAt: number;
}

/** One registration entry and its cached SVID. */
export interface EntryRecord {
  entry: DevEntry;
  selectorKeys: string[];
  /** Undefined until the first signing finishes: the "not yet cached" state of F5/F6. */
  svid: IssuedSvid | undefined;
  /** Bumped on every (re)issue so a slow signing cannot overwrite a newer SVID. */
  generation: number;
}
