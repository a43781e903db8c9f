/**
 * docs/design.md invariant 2: a publish request is bound to the pod kubelet
 * named in it. kubelet derives both the target path and the volume id from the
 * pod UID and the volume's name (makeVolumeHandle and GetPath in
 * https://github.com/kubernetes/kubernetes/blob/4a0608cb77f6a53af41cb4a453af104a4d4a0610/pkg/volume/csi/csi_mounter.go),
 * so a request whose path or id belongs to another pod — or to no pod at all —
 * was not sent by kubelet for this pod and is refused before anything is touched.
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import { invalidArgument } from '../errors.js';

export interface PodInfo {
  uid: string;
  name: string;
  namespace: string;
  serviceAccount: string;
}

export const POD_INFO_KEYS = {
  name: 'csi.storage.k8s.io/pod.name',
  namespace: 'csi.storage.k8s.io/pod.namespace',
  uid: 'csi.storage.k8s.io/pod.uid',
  serviceAccount: 'csi.storage.k8s.io/serviceAccount.name',
  ephemeral: 'csi.storage.k8s.io/ephemeral',
} as const;

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
/** UUIDs for API pods, hex hashes for static pods: never a '/', '.' or upper case. */
const POD_UID = /^[a-z0-9]([-a-z0-9]{0,62}[a-z0-9])?$/;

const PODINFO_REMEDY = 'the CSIDriver object for this driver must have podInfoOnMount: true and volumeLifecycleModes: [Ephemeral]';

export function readPodInfo(volumeContext: Readonly<Record<string, string>>): PodInfo {
  const ephemeral = volumeContext[POD_INFO_KEYS.ephemeral];
  if (ephemeral === undefined) {
    throw invalidArgument(`volume_context has no ${POD_INFO_KEYS.ephemeral}: ${PODINFO_REMEDY}`);
  }
  if (ephemeral !== 'true') {
    throw invalidArgument(
      `${POD_INFO_KEYS.ephemeral} is "${ephemeral}": only inline ephemeral volumes (pod.spec.volumes[].csi) are supported, not PersistentVolumes`,
    );
  }
  const fields: [keyof PodInfo, RegExp, string][] = [
    ['uid', POD_UID, 'a pod UID'],
    ['namespace', DNS1123_LABEL, 'a namespace name'],
    ['name', DNS1123_SUBDOMAIN, 'a pod name'],
    ['serviceAccount', DNS1123_SUBDOMAIN, 'a service account name'],
  ];
  const info: Partial<PodInfo> = {};
  for (const [field, pattern, what] of fields) {
    const key = POD_INFO_KEYS[field];
    const value = volumeContext[key];
    if (value === undefined || value === '') throw invalidArgument(`volume_context has no ${key}: ${PODINFO_REMEDY}`);
    if (!pattern.test(value)) throw invalidArgument(`${key}=${JSON.stringify(value)} is not ${what}`);
    info[field] = value;
  }
  return info as PodInfo;
}

/** kubelet's makeVolumeHandle for inline volumes: "csi-" + hex(sha256(podUID + volumeName)). */
export function inlineVolumeId(podUid: string, volumeName: string): string {
  return `csi-${createHash('sha256')
    .update(podUid + volumeName)
    .digest('hex')}`;
}

export function expectedTargetPath(kubeletRootDir: string, podUid: string, volumeName: string): string {
  return path.join(kubeletRootDir, 'pods', podUid, 'volumes', 'kubernetes.io~csi', volumeName, 'mount');
}

/**
 * The pod UID and volume name of a target path in kubelet's layout for inline
 * CSI volumes, or undefined for any other path.
 */
export function kubeletVolumeAt(kubeletRootDir: string, targetPath: string): { podUid: string; volumeName: string } | undefined {
  if (path.normalize(targetPath) !== targetPath) return undefined;
  const podsDir = path.join(kubeletRootDir, 'pods') + '/';
  if (!targetPath.startsWith(podsDir)) return undefined;
  const [podUid, volumes, plugin, volumeName, mount, ...rest] = targetPath.slice(podsDir.length).split('/');
  if (podUid === undefined || volumeName === undefined || rest.length > 0) return undefined;
  if (volumes !== 'volumes' || plugin !== 'kubernetes.io~csi' || mount !== 'mount') return undefined;
  if (!POD_UID.test(podUid) || !DNS1123_LABEL.test(volumeName)) return undefined;
  return { podUid, volumeName };
}

/**
 * Checks target_path and volume_id against the pod UID and returns the volume's
 * name (pod.spec.volumes[].name) read from the path.
 */
export function checkPodBinding(request: { volumeId: string; targetPath: string; podUid: string; kubeletRootDir: string }): string {
  const { volumeId, targetPath, podUid, kubeletRootDir } = request;
  const prefix = path.join(kubeletRootDir, 'pods', podUid, 'volumes', 'kubernetes.io~csi') + '/';
  const volumeName = targetPath.startsWith(prefix) ? targetPath.slice(prefix.length, -'/mount'.length) : '';
  if (
    path.normalize(targetPath) !== targetPath ||
    !targetPath.endsWith('/mount') ||
    !DNS1123_LABEL.test(volumeName) ||
    targetPath !== expectedTargetPath(kubeletRootDir, podUid, volumeName)
  ) {
    throw invalidArgument(
      `target_path ${JSON.stringify(targetPath)} does not belong to pod ${podUid}: expected ` +
        `${expectedTargetPath(kubeletRootDir, podUid, '<volume-name>')}; if kubelet uses another root directory, set --kubelet-root-dir`,
    );
  }
  const expectedId = inlineVolumeId(podUid, volumeName);
  if (volumeId !== expectedId) {
    throw invalidArgument(
      `volume_id ${JSON.stringify(volumeId)} does not belong to volume "${volumeName}" of pod ${podUid} (kubelet would send ${expectedId})`,
    );
  }
  return volumeName;
}
