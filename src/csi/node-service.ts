/**
 * csi.v1.Node: validate, hand over to the VolumeManager, map errors. Methods
 * not listed here are answered UNIMPLEMENTED by grpc-js.
 */
import * as grpc from '@grpc/grpc-js';
import { invalidArgument } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { DriverMetrics } from '../observability/metrics.js';
import type { VolumeManager } from '../volumes/volume-manager.js';
import { callSignal, unaryHandler } from './handler.js';
import type { NodePublishVolumeRequest, NodeUnpublishVolumeRequest } from './messages.js';
import { parsePublishRequest } from './publish-request.js';

export interface NodeServiceOptions {
  nodeName: string;
  kubeletRootDir: string;
  volumes: VolumeManager;
  logger: Logger;
  metrics: DriverMetrics;
}

export function nodeService(options: NodeServiceOptions): grpc.UntypedServiceImplementation {
  const { logger, metrics, volumes } = options;
  const codeName = (code: grpc.status): string => grpc.status[code] ?? String(code);
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
    NodeGetCapabilities: unaryHandler('NodeGetCapabilities', logger, async () => ({
      capabilities: [{ rpc: { type: 'VOLUME_MOUNT_GROUP' } }],
    })),

    NodePublishVolume: unaryHandler<NodePublishVolumeRequest, Record<string, never>>(
      'NodePublishVolume',
      logger,
      async (request, call) => {
        const stopTimer = metrics.publishDuration.startTimer();
        try {
          const spec = parsePublishRequest(request, { kubeletRootDir: options.kubeletRootDir });
          await volumes.publish(spec, callSignal(call));
          return {};
        } finally {
          stopTimer();
        }
      },
      (code) => metrics.publishTotal.inc({ result: codeName(code) }),
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
      (code) => metrics.unpublishTotal.inc({ result: codeName(code) }),
    ),
  };
}
