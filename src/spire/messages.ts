/**
 * The Delegated Identity API messages: their TypeScript shapes as decoded by
 * protobuf/codec.ts, and their schemas (mirroring spire-proto/, our subset of
 * https://github.com/spiffe/spire-api-sdk/blob/v1.15.2/proto/spire/api/agent/delegatedidentity/v1/delegatedidentity.proto).
 */
import type { FieldSchema, MessageSchema } from '../protobuf/codec.js';

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

// ------------------------------------------------------------------ schemas

const EMPTY: MessageSchema = { name: 'Empty', fields: [] };
const SELECTOR: MessageSchema = {
  name: 'Selector',
  fields: [
    { name: 'type', no: 1, type: 'string' },
    { name: 'value', no: 2, type: 'string' },
  ],
};
const SPIFFE_ID: MessageSchema = {
  name: 'SPIFFEID',
  fields: [
    { name: 'trust_domain', no: 1, type: 'string' },
    { name: 'path', no: 2, type: 'string' },
  ],
};
const BYTES_MAP = (name: string, no: number): FieldSchema => ({ name, no, type: 'map', mapValue: 'bytes' });

const SUBSCRIBE_TO_X509_SVIDS_REQUEST: MessageSchema = {
  name: 'SubscribeToX509SVIDsRequest',
  fields: [
    { name: 'selectors', no: 1, type: 'message', repeated: true, message: SELECTOR },
    { name: 'pid', no: 2, type: 'int32' },
  ],
};

const SUBSCRIBE_TO_X509_SVIDS_RESPONSE: MessageSchema = {
  name: 'SubscribeToX509SVIDsResponse',
  fields: [
    {
      name: 'x509_svids',
      no: 1,
      type: 'message',
      repeated: true,
      message: {
        name: 'X509SVIDWithKey',
        fields: [
          {
            name: 'x509_svid',
            no: 1,
            type: 'message',
            message: {
              name: 'X509SVID',
              fields: [
                { name: 'cert_chain', no: 1, type: 'bytes', repeated: true },
                { name: 'id', no: 2, type: 'message', message: SPIFFE_ID },
                { name: 'expires_at', no: 3, type: 'int64' },
                { name: 'hint', no: 4, type: 'string' },
              ],
            },
          },
          { name: 'x509_svid_key', no: 2, type: 'bytes' },
        ],
      },
    },
    { name: 'federates_with', no: 2, type: 'string', repeated: true },
  ],
};

const SUBSCRIBE_TO_X509_BUNDLES_RESPONSE: MessageSchema = { name: 'SubscribeToX509BundlesResponse', fields: [BYTES_MAP('ca_certificates', 1)] };

const FETCH_JWT_SVIDS_REQUEST: MessageSchema = {
  name: 'FetchJWTSVIDsRequest',
  fields: [
    { name: 'audience', no: 1, type: 'string', repeated: true },
    { name: 'selectors', no: 2, type: 'message', repeated: true, message: SELECTOR },
    { name: 'pid', no: 3, type: 'int32' },
  ],
};

const FETCH_JWT_SVIDS_RESPONSE: MessageSchema = {
  name: 'FetchJWTSVIDsResponse',
  fields: [
    {
      name: 'svids',
      no: 1,
      type: 'message',
      repeated: true,
      message: {
        name: 'JWTSVID',
        fields: [
          { name: 'token', no: 1, type: 'string' },
          { name: 'id', no: 2, type: 'message', message: SPIFFE_ID },
          { name: 'expires_at', no: 3, type: 'int64' },
          { name: 'issued_at', no: 4, type: 'int64' },
          { name: 'hint', no: 5, type: 'string' },
        ],
      },
    },
  ],
};

const SUBSCRIBE_TO_JWT_BUNDLES_RESPONSE: MessageSchema = { name: 'SubscribeToJWTBundlesResponse', fields: [BYTES_MAP('bundles', 1)] };

/** The four methods: path, request and response schema. */
export const DELEGATED_IDENTITY_METHODS = {
  subscribeToX509Svids: { name: 'SubscribeToX509SVIDs', request: SUBSCRIBE_TO_X509_SVIDS_REQUEST, response: SUBSCRIBE_TO_X509_SVIDS_RESPONSE },
  subscribeToX509Bundles: { name: 'SubscribeToX509Bundles', request: EMPTY, response: SUBSCRIBE_TO_X509_BUNDLES_RESPONSE },
  fetchJwtSvids: { name: 'FetchJWTSVIDs', request: FETCH_JWT_SVIDS_REQUEST, response: FETCH_JWT_SVIDS_RESPONSE },
  subscribeToJwtBundles: { name: 'SubscribeToJWTBundles', request: EMPTY, response: SUBSCRIBE_TO_JWT_BUNDLES_RESPONSE },
} as const satisfies Record<string, { name: string; request: MessageSchema; response: MessageSchema }>;
