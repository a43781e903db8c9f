/**
 * TypeScript shapes of the CSI messages we serve, as decoded with
 * PROTO_LOADER_OPTIONS (see csi-proto/, our subset of
 * https://github.com/container-storage-interface/spec/blob/v1.12.0/csi.proto).
 */
import type { ServiceDefinition } from '@grpc/proto-loader';
import { loadServiceDefinition } from '../proto-loading.js';

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

let identityDefinition: ServiceDefinition | undefined;
let nodeDefinition: ServiceDefinition | undefined;

export function csiIdentityServiceDefinition(): ServiceDefinition {
  identityDefinition ??= loadServiceDefinition('csi-proto', 'csi/v1/csi.proto', CSI_IDENTITY_SERVICE_NAME);
  return identityDefinition;
}

export function csiNodeServiceDefinition(): ServiceDefinition {
  nodeDefinition ??= loadServiceDefinition('csi-proto', 'csi/v1/csi.proto', CSI_NODE_SERVICE_NAME);
  return nodeDefinition;
}
