/**
 * The one block of NodePublishVolume validation (spiffe-csi style): every case
 * returns INVALID_ARGUMENT with a message that says what to change in the pod
 * spec or the CSIDriver object. Runs before anything is touched on disk or
 * asked of the agent. The order puts the checks csi-sanity exercises first, as
 * it sends no volume_context.
 */
import { invalidArgument } from '../errors.js';
import { fsGroupSchema, parseVolumeAttributes } from '../volumes/attributes.js';
import { checkPodBinding, readPodInfo } from '../volumes/pod-binding.js';
import type { PublishSpec } from '../volumes/publish-spec.js';
import type { NodePublishVolumeRequest } from './messages.js';

const SINGLE_NODE_MODES = new Set(['SINGLE_NODE_WRITER', 'SINGLE_NODE_READER_ONLY', 'SINGLE_NODE_SINGLE_WRITER', 'SINGLE_NODE_MULTI_WRITER']);

export function parsePublishRequest(request: NodePublishVolumeRequest, options: { kubeletRootDir: string }): PublishSpec {
  const capability = request.volume_capability;
  if (!request.volume_id) throw invalidArgument('volume_id is required');
  if (!request.target_path) throw invalidArgument('target_path is required');
  if (!capability) throw invalidArgument('volume_capability is required');
  if (capability.access_type === 'block' || capability.block) {
    throw invalidArgument(
      'block access is not supported: csi.spire.io volumes are filesystem volumes (use pod.spec.volumes[].csi, not volumeDevices)',
    );
  }
  const mount = capability.mount;
  if (!mount) throw invalidArgument('volume_capability must be a mount capability');
  if (!capability.access_mode || !SINGLE_NODE_MODES.has(capability.access_mode.mode)) {
    throw invalidArgument(
      `volume_capability.access_mode ${capability.access_mode?.mode ?? 'UNKNOWN'} is not supported: inline volumes are node-local (kubelet sends SINGLE_NODE_WRITER)`,
    );
  }
  if (mount.fs_type !== '' && mount.fs_type !== 'tmpfs') {
    throw invalidArgument(`fsType "${mount.fs_type}" is not supported: remove fsType from pod.spec.volumes[].csi`);
  }
  if (mount.mount_flags.length > 0) {
    throw invalidArgument('mount flags are not supported: the CSIDriver object must not set seLinuxMount: true');
  }
  if (!request.readonly) throw invalidArgument('pod.spec.volumes[].csi.readOnly must be set to true');

  const volumeContext = request.volume_context ?? {};
  const pod = readPodInfo(volumeContext);
  const volumeName = checkPodBinding({
    volumeId: request.volume_id,
    targetPath: request.target_path,
    podUid: pod.uid,
    kubeletRootDir: options.kubeletRootDir,
  });
  const attributes = parseVolumeAttributes(volumeContext);
  return {
    volumeId: request.volume_id,
    targetPath: request.target_path,
    volumeName,
    pod,
    attributes,
    fsGroup: attributes.fsGroup ?? parseVolumeMountGroup(mount.volume_mount_group),
  };
}

/** kubelet passes the pod's fsGroup as a decimal string when we advertise VOLUME_MOUNT_GROUP. */
function parseVolumeMountGroup(value: string): number | null {
  if (value === '') return null;
  const result = fsGroupSchema.safeParse(value);
  if (!result.success) {
    throw invalidArgument(
      `volume_mount_group ${JSON.stringify(value)} (pod.spec.securityContext.fsGroup) ${result.error.issues[0]?.message ?? 'is invalid'}`,
    );
  }
  return result.data;
}
