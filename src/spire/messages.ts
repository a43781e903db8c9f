/**
 * TypeScript shapes of the Delegated Identity API messages as decoded with
 * PROTO_LOADER_OPTIONS (see spire-proto/, our subset of
 * https://github.com/spiffe/spire-api-sdk/blob/v1.15.2/proto/spire/api/agent/delegatedidentity/v1/delegatedidentity.proto).
 */
import type { ServiceDefinition } from '@grpc/proto-loader';
import { loadServiceDefinition } from '../proto-loading.js';

export interface Selector {
  type: string;
  value: string;
}

export interface SpiffeIdMessage {
  trust_domain: string;
  path: string;
}

export interface X509SvidMessage {
  /** DER certificates, leaf first. */
  cert_chain: Buffer[];
  id: SpiffeIdMessage | null;
  /** Leaf NotAfter, Unix seconds. */
  expires_at: number;
  hint: string;
}

export interface X509SvidWithKey {
  x509_svid: X509SvidMessage | null;
  /** PKCS#8 DER private key. Never log this. */
  x509_svid_key: Buffer;
}

export interface SubscribeToX509SvidsRequest {
  selectors: Selector[];
  pid?: number;
}

export interface SubscribeToX509SvidsResponse {
  x509_svids: X509SvidWithKey[];
  /** "spiffe://<td>" strings. */
  federates_with: string[];
}

export interface SubscribeToX509BundlesResponse {
  /** key "spiffe://<td>", value concatenated DER certificates. */
  ca_certificates: Record<string, Buffer>;
}

export interface JwtSvidMessage {
  /** The compact JWT. A credential: never log it. */
  token: string;
  id: SpiffeIdMessage | null;
  /** Unix seconds. */
  expires_at: number;
  issued_at: number;
  hint: string;
}

export interface FetchJwtSvidsRequest {
  /** At least one; all of them go into each token's `aud`. */
  audience: string[];
  selectors: Selector[];
  pid?: number;
}

export interface FetchJwtSvidsResponse {
  /** One per matching entry. */
  svids: JwtSvidMessage[];
}

export interface SubscribeToJwtBundlesResponse {
  /** key "spiffe://<td>", value the trust domain's JWKS JSON document. */
  bundles: Record<string, Buffer>;
}

export const DELEGATED_IDENTITY_SERVICE_NAME = 'spire.api.agent.delegatedidentity.v1.DelegatedIdentity';

let cachedDefinition: ServiceDefinition | undefined;

/** The service's methods: paths and codecs (proto-loader's description). */
export function delegatedIdentityServiceDefinition(): ServiceDefinition {
  cachedDefinition ??= loadServiceDefinition(
    'spire-proto',
    'spire/api/agent/delegatedidentity/v1/delegatedidentity.proto',
    DELEGATED_IDENTITY_SERVICE_NAME,
  );
  return cachedDefinition;
}
