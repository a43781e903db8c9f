import type { VolumeAttributes } from './attributes.js';
import type { PodInfo } from './pod-binding.js';

/** A NodePublishVolume request after validation: everything the volume lifecycle needs. */
export interface PublishSpec {
  volumeId: string;
  targetPath: string;
  /** pod.spec.volumes[].name, read from the target path. */
  volumeName: string;
  pod: PodInfo;
  attributes: VolumeAttributes;
  /** csi.spire.io/fs-group, else kubelet's volume_mount_group (the pod's fsGroup), else none. */
  fsGroup: number | null;
}
