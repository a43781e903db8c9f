/**
 * The CSI messages we serve: their TypeScript shapes as decoded by
 * protobuf/codec.ts, their schemas (mirroring csi-proto/, our subset of
 * https://github.com/container-storage-interface/spec/blob/v1.12.0/csi.proto),
 * and the methods' paths and codecs.
 */
import { decodeMessage, encodeMessage, type FieldSchema, type MessageSchema } from '../protobuf/codec.js';
import type { UnaryCodec } from './h2-grpc-server.js';

export type AccessModeName =
  | 'UNKNOWN'
  | 'SINGLE_NODE_WRITER'
  | 'SINGLE_NODE_READER_ONLY'
  | 'MULTI_NODE_READER_ONLY'
  | 'MULTI_NODE_SINGLE_WRITER'
  | 'MULTI_NODE_MULTI_WRITER'
  | 'SINGLE_NODE_SINGLE_WRITER'
  | 'SINGLE_NODE_MULTI_WRITER';

export interface MountVolume {
  fs_type: string;
  mount_flags: string[];
  volume_mount_group: string;
}

export interface VolumeCapability {
  block?: Record<string, never> | null;
  mount?: MountVolume | null;
  /** Which member of the access_type oneof is set. */
  access_type?: 'block' | 'mount';
  access_mode: { mode: AccessModeName } | null;
}

export interface NodePublishVolumeRequest {
  volume_id: string;
  publish_context: Record<string, string>;
  staging_target_path: string;
  target_path: string;
  volume_capability: VolumeCapability | null;
  readonly: boolean;
  /** csi_secret: never log. */
  secrets: Record<string, string>;
  volume_context: Record<string, string>;
}

export interface NodeUnpublishVolumeRequest {
  volume_id: string;
  target_path: string;
}

export interface NodeGetVolumeStatsRequest {
  volume_id: string;
  volume_path: string;
  staging_target_path: string;
}

export interface VolumeUsage {
  unit: 'UNKNOWN' | 'BYTES' | 'INODES';
  total: number;
  used: number;
  available: number;
}

export interface NodeGetVolumeStatsResponse {
  usage: VolumeUsage[];
  volume_condition: { abnormal: boolean; message: string };
}

export const CSI_IDENTITY_SERVICE_NAME = 'csi.v1.Identity';
export const CSI_NODE_SERVICE_NAME = 'csi.v1.Node';

// ------------------------------------------------------------------ schemas

const EMPTY: MessageSchema = { name: 'Empty', fields: [] };
const STRING_MAP = (name: string, no: number): FieldSchema => ({ name, no, type: 'map', mapValue: 'string' });
const ACCESS_MODES: readonly AccessModeName[] = [
  'UNKNOWN',
  'SINGLE_NODE_WRITER',
  'SINGLE_NODE_READER_ONLY',
  'MULTI_NODE_READER_ONLY',
  'MULTI_NODE_SINGLE_WRITER',
  'MULTI_NODE_MULTI_WRITER',
  'SINGLE_NODE_SINGLE_WRITER',
  'SINGLE_NODE_MULTI_WRITER',
];

const VOLUME_CAPABILITY: MessageSchema = {
  name: 'VolumeCapability',
  fields: [
    { name: 'block', no: 1, type: 'message', message: EMPTY, oneof: 'access_type' },
    {
      name: 'mount',
      no: 2,
      type: 'message',
      oneof: 'access_type',
      message: {
        name: 'MountVolume',
        fields: [
          { name: 'fs_type', no: 1, type: 'string' },
          { name: 'mount_flags', no: 2, type: 'string', repeated: true },
          { name: 'volume_mount_group', no: 3, type: 'string' },
        ],
      },
    },
    {
      name: 'access_mode',
      no: 3,
      type: 'message',
      message: { name: 'AccessMode', fields: [{ name: 'mode', no: 1, type: 'enum', values: ACCESS_MODES }] },
    },
  ],
};

const NODE_PUBLISH_VOLUME_REQUEST: MessageSchema = {
  name: 'NodePublishVolumeRequest',
  fields: [
    { name: 'volume_id', no: 1, type: 'string' },
    STRING_MAP('publish_context', 2),
    { name: 'staging_target_path', no: 3, type: 'string' },
    { name: 'target_path', no: 4, type: 'string' },
    { name: 'volume_capability', no: 5, type: 'message', message: VOLUME_CAPABILITY },
    { name: 'readonly', no: 6, type: 'bool' },
    STRING_MAP('secrets', 7),
    STRING_MAP('volume_context', 8),
  ],
};

const NODE_UNPUBLISH_VOLUME_REQUEST: MessageSchema = {
  name: 'NodeUnpublishVolumeRequest',
  fields: [
    { name: 'volume_id', no: 1, type: 'string' },
    { name: 'target_path', no: 2, type: 'string' },
  ],
};

const NODE_GET_VOLUME_STATS_REQUEST: MessageSchema = {
  name: 'NodeGetVolumeStatsRequest',
  fields: [
    { name: 'volume_id', no: 1, type: 'string' },
    { name: 'volume_path', no: 2, type: 'string' },
    { name: 'staging_target_path', no: 3, type: 'string' },
  ],
};

const NODE_GET_VOLUME_STATS_RESPONSE: MessageSchema = {
  name: 'NodeGetVolumeStatsResponse',
  fields: [
    {
      name: 'usage',
      no: 1,
      type: 'message',
      repeated: true,
      message: {
        name: 'VolumeUsage',
        fields: [
          { name: 'available', no: 1, type: 'int64' },
          { name: 'total', no: 2, type: 'int64' },
          { name: 'used', no: 3, type: 'int64' },
          { name: 'unit', no: 4, type: 'enum', values: ['UNKNOWN', 'BYTES', 'INODES'] },
        ],
      },
    },
    {
      name: 'volume_condition',
      no: 2,
      type: 'message',
      message: {
        name: 'VolumeCondition',
        fields: [
          { name: 'abnormal', no: 1, type: 'bool' },
          { name: 'message', no: 2, type: 'string' },
        ],
      },
    },
  ],
};

const GET_PLUGIN_INFO_RESPONSE: MessageSchema = {
  name: 'GetPluginInfoResponse',
  fields: [{ name: 'name', no: 1, type: 'string' }, { name: 'vendor_version', no: 2, type: 'string' }, STRING_MAP('manifest', 3)],
};

const GET_PLUGIN_CAPABILITIES_RESPONSE: MessageSchema = {
  name: 'GetPluginCapabilitiesResponse',
  fields: [
    {
      name: 'capabilities',
      no: 1,
      type: 'message',
      repeated: true,
      message: {
        name: 'PluginCapability',
        fields: [
          {
            name: 'service',
            no: 1,
            type: 'message',
            oneof: 'type',
            message: {
              name: 'Service',
              fields: [
                {
                  name: 'type',
                  no: 1,
                  type: 'enum',
                  values: [
                    'UNKNOWN',
                    'CONTROLLER_SERVICE',
                    'VOLUME_ACCESSIBILITY_CONSTRAINTS',
                    'GROUP_CONTROLLER_SERVICE',
                    'SNAPSHOT_METADATA_SERVICE',
                  ],
                },
              ],
            },
          },
        ],
      },
    },
  ],
};

const PROBE_RESPONSE: MessageSchema = {
  name: 'ProbeResponse',
  fields: [{ name: 'ready', no: 1, type: 'message', message: { name: 'BoolValue', fields: [{ name: 'value', no: 1, type: 'bool' }] } }],
};

const NODE_GET_CAPABILITIES_RESPONSE: MessageSchema = {
  name: 'NodeGetCapabilitiesResponse',
  fields: [
    {
      name: 'capabilities',
      no: 1,
      type: 'message',
      repeated: true,
      message: {
        name: 'NodeServiceCapability',
        fields: [
          {
            name: 'rpc',
            no: 1,
            type: 'message',
            oneof: 'type',
            message: {
              name: 'RPC',
              fields: [
                {
                  name: 'type',
                  no: 1,
                  type: 'enum',
                  values: [
                    'UNKNOWN',
                    'STAGE_UNSTAGE_VOLUME',
                    'GET_VOLUME_STATS',
                    'EXPAND_VOLUME',
                    'VOLUME_CONDITION',
                    'SINGLE_NODE_MULTI_WRITER',
                    'VOLUME_MOUNT_GROUP',
                  ],
                },
              ],
            },
          },
        ],
      },
    },
  ],
};

const NODE_GET_INFO_RESPONSE: MessageSchema = {
  name: 'NodeGetInfoResponse',
  fields: [
    { name: 'node_id', no: 1, type: 'string' },
    { name: 'max_volumes_per_node', no: 2, type: 'int64' },
    { name: 'accessible_topology', no: 3, type: 'message', message: { name: 'Topology', fields: [STRING_MAP('segments', 1)] } },
  ],
};

/** The schemas, by message name, for tests that compare them with the .proto. */
export const CSI_SCHEMAS: Readonly<Record<string, MessageSchema>> = Object.fromEntries(
  [
    NODE_PUBLISH_VOLUME_REQUEST,
    NODE_UNPUBLISH_VOLUME_REQUEST,
    NODE_GET_VOLUME_STATS_REQUEST,
    NODE_GET_VOLUME_STATS_RESPONSE,
    GET_PLUGIN_INFO_RESPONSE,
    GET_PLUGIN_CAPABILITIES_RESPONSE,
    PROBE_RESPONSE,
    NODE_GET_CAPABILITIES_RESPONSE,
    NODE_GET_INFO_RESPONSE,
  ].map((schema) => [schema.name, schema]),
);

function unary(service: string, method: string, request: MessageSchema, response: MessageSchema): UnaryCodec {
  return {
    path: `/${service}/${method}`,
    decodeRequest: (bytes) => decodeMessage(request, bytes),
    encodeResponse: (value) => encodeMessage(response, value),
  };
}

/** The methods the driver serves; any other is UNIMPLEMENTED. */
export const CSI_IDENTITY_METHODS: Readonly<Record<string, UnaryCodec>> = {
  GetPluginInfo: unary(CSI_IDENTITY_SERVICE_NAME, 'GetPluginInfo', EMPTY, GET_PLUGIN_INFO_RESPONSE),
  GetPluginCapabilities: unary(CSI_IDENTITY_SERVICE_NAME, 'GetPluginCapabilities', EMPTY, GET_PLUGIN_CAPABILITIES_RESPONSE),
  Probe: unary(CSI_IDENTITY_SERVICE_NAME, 'Probe', EMPTY, PROBE_RESPONSE),
};

export const CSI_NODE_METHODS: Readonly<Record<string, UnaryCodec>> = {
  NodeGetInfo: unary(CSI_NODE_SERVICE_NAME, 'NodeGetInfo', EMPTY, NODE_GET_INFO_RESPONSE),
  NodeGetCapabilities: unary(CSI_NODE_SERVICE_NAME, 'NodeGetCapabilities', EMPTY, NODE_GET_CAPABILITIES_RESPONSE),
  NodeGetVolumeStats: unary(CSI_NODE_SERVICE_NAME, 'NodeGetVolumeStats', NODE_GET_VOLUME_STATS_REQUEST, NODE_GET_VOLUME_STATS_RESPONSE),
  NodePublishVolume: unary(CSI_NODE_SERVICE_NAME, 'NodePublishVolume', NODE_PUBLISH_VOLUME_REQUEST, EMPTY),
  NodeUnpublishVolume: unary(CSI_NODE_SERVICE_NAME, 'NodeUnpublishVolume', NODE_UNPUBLISH_VOLUME_REQUEST, EMPTY),
};
