/**
 * csi.v1.Node: validate, hand over to the VolumeManager, map errors. Methods
 * not listed here are answered UNIMPLEMENTED by the server (h2-grpc-server.ts).
 */
import fs from 'node:fs/promises';
import { DriverError, errorMessage, invalidArgument } from '../errors.js';
import { status, statusName } from '../grpc-status.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics-api.js';
import type { VolumeManager } from '../volumes/volume-manager.js';
import type { UnaryMethodHandler } from './h2-grpc-server.js';
import { unaryHandler } from './handler.js';
import type {
  NodeGetVolumeStatsRequest,
  NodeGetVolumeStatsResponse,
  NodePublishVolumeRequest,
  NodeUnpublishVolumeRequest,
  VolumeUsage,
} from './messages.js';
import { parsePublishRequest } from './publish-request.js';

export interface NodeServiceOptions {
  nodeName: string;
  kubeletRootDir: string;
  volumes: VolumeManager;
  logger: Logger;
  metrics: Metrics;
}

export function nodeService(options: NodeServiceOptions): Record<string, UnaryMethodHandler> {
  const { logger, metrics, volumes } = options;
  return {
    // CSI spec, NodeGetInfoResponse.max_volumes_per_node: "Maximum number of
    // volumes that controller can publish to the node. If value is not set or
    // zero CO SHALL decide how many volumes of this type can be published by
    // the controller to the node." kubelet copies it into the CSINode object
    // (allocatable.count), where the scheduler counts it against the node's
    // attachable volumes, those that come from PVCs. Inline ephemeral volumes
    // (pod.spec.volumes[].csi) are counted by neither the scheduler nor kubelet,
    // so the VolumeManager enforces the same number itself in NodePublishVolume.
    NodeGetInfo: unaryHandler('NodeGetInfo', logger, async () => ({ node_id: options.nodeName, max_volumes_per_node: volumes.maxVolumes })),

    // VOLUME_MOUNT_GROUP: kubelet hands us the pod's fsGroup instead of
    // chowning the read-only volume itself, which it would not do anyway.
    // GET_VOLUME_STATS and VOLUME_CONDITION: kubelet's volume stats collector
    // calls NodeGetVolumeStats for mounted volumes (usage goes into its stats
    // summary; the condition too with the CSIVolumeHealth feature gate), and the
    // same condition feeds spire_csi_volumes_abnormal, so an SVID that stopped
    // rotating is visible before it expires.
    NodeGetCapabilities: unaryHandler('NodeGetCapabilities', logger, async () => ({
      capabilities: [{ rpc: { type: 'GET_VOLUME_STATS' } }, { rpc: { type: 'VOLUME_CONDITION' } }, { rpc: { type: 'VOLUME_MOUNT_GROUP' } }],
    })),

    // CSI spec v1.12.0 NodeGetVolumeStats: INVALID_ARGUMENT without volume_id or
    // volume_path; NOT_FOUND for an unknown volume or a path it is not published at.
    NodeGetVolumeStats: unaryHandler<NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse>('NodeGetVolumeStats', logger, async (request) => {
      if (!request.volume_id) throw invalidArgument('volume_id is required');
      if (!request.volume_path) throw invalidArgument('volume_path is required');
      const volume = volumes.liveVolume(request.volume_id, request.volume_path);
      return { usage: await volumeUsage(volume.record.targetPath), volume_condition: volume.health() };
    }),

    NodePublishVolume: unaryHandler<NodePublishVolumeRequest, Record<string, never>>(
      'NodePublishVolume',
      logger,
      async (request, signal) => {
        const stopTimer = metrics.publishDuration.startTimer();
        try {
          const spec = parsePublishRequest(request, { kubeletRootDir: options.kubeletRootDir });
          await volumes.publish(spec, signal);
          return {};
        } finally {
          stopTimer();
        }
      },
      (code) => metrics.publishTotal.inc({ result: statusName(code) }),
    ),

    NodeUnpublishVolume: unaryHandler<NodeUnpublishVolumeRequest, Record<string, never>>(
      'NodeUnpublishVolume',
      logger,
      async (request) => {
        if (!request.volume_id) throw invalidArgument('volume_id is required');
        if (!request.target_path) throw invalidArgument('target_path is required');
        await volumes.unpublish(request.volume_id, request.target_path);
        return {};
      },
      (code) => metrics.unpublishTotal.inc({ result: statusName(code) }),
    ),
  };
}

/**
 * Bytes and inodes of the volume's filesystem (its own tmpfs on a node, so the
 * numbers are the volume's alone). The path was checked to be the volume's,
 * a directory the driver made; a statfs failure there means the mount is gone.
 */
async function volumeUsage(targetPath: string): Promise<VolumeUsage[]> {
  let stats: Awaited<ReturnType<typeof fs.statfs>>;
  try {
    stats = await fs.statfs(targetPath);
  } catch (err) {
    throw new DriverError(status.NOT_FOUND, `cannot read the usage of ${targetPath}: ${errorMessage(err)}`);
  }
  return [
    {
      unit: 'BYTES',
      total: stats.blocks * stats.bsize,
      used: (stats.blocks - stats.bfree) * stats.bsize,
      available: stats.bavail * stats.bsize,
    },
    { unit: 'INODES', total: stats.files, used: stats.files - stats.ffree, available: stats.ffree },
  ];
}
