/**
 * Plays kubelet against the driver's CSI socket, sending exactly what kubelet
 * sends for an inline ephemeral volume (docs/design.md facts F10, F11): the pod volume
 * directory layout, the volume id formula, the podInfoOnMount keys merged over
 * the user's volumeAttributes, SINGLE_NODE_WRITER, volume_mount_group from the
 * pod's fsGroup, NodeGetCapabilities before every publish, and removal of the
 * mount directory after a final error or a successful unpublish.
 */
import { createHash, randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { NodePublishVolumeRequest } from '../../src/csi/messages.js';
import { csiIdentityService, csiNodeService } from './grpc-services.js';

export interface Pod {
  uid: string;
  name: string;
  namespace: string;
  serviceAccount: string;
}

export interface PublishedVolume {
  volumeId: string;
  targetPath: string;
}

export interface PublishOptions {
  volumeName?: string;
  attributes?: Record<string, string>;
  /** pod.spec.securityContext.fsGroup */
  fsGroup?: number;
  readOnly?: boolean;
  /** Call deadline; kubelet uses 2 minutes. */
  timeoutMs?: number;
}

/** gRPC codes kubelet treats as "uncertain" rather than final (csi_client.go isFinalError). */
const NON_FINAL_CODES = new Set([
  grpc.status.CANCELLED,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.UNAVAILABLE,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.ABORTED,
]);

type UnaryMethod = (request: unknown, options: grpc.CallOptions, callback: (err: grpc.ServiceError | null, response: unknown) => void) => void;

export class KubeletSimulator {
  private readonly node: grpc.Client;
  private readonly identity: grpc.Client;

  constructor(readonly options: { csiSocketPath: string; kubeletRootDir: string }) {
    const NodeClient = csiNodeService();
    const IdentityClient = csiIdentityService();
    // kubelet dials the CSI socket afresh for its calls; a long-lived grpc-js
    // channel would instead wait out its reconnect backoff (1 s, growing) after
    // a driver restart, and every restart test and benchmark would measure that.
    const reconnectQuickly = { 'grpc.initial_reconnect_backoff_ms': 50, 'grpc.max_reconnect_backoff_ms': 250 };
    this.node = new NodeClient(`unix:${options.csiSocketPath}`, grpc.credentials.createInsecure(), reconnectQuickly);
    this.identity = new IdentityClient(`unix:${options.csiSocketPath}`, grpc.credentials.createInsecure(), reconnectQuickly);
  }

  createPod(overrides: Partial<Pod> = {}): Pod {
    const uid = overrides.uid ?? randomUUID();
    return {
      uid,
      name: overrides.name ?? `app-${uid.slice(0, 8)}`,
      namespace: overrides.namespace ?? 'default',
      serviceAccount: overrides.serviceAccount ?? 'app',
    };
  }

  volumeFor(pod: Pod, volumeName = 'svid'): PublishedVolume {
    return {
      volumeId: `csi-${createHash('sha256')
        .update(pod.uid + volumeName)
        .digest('hex')}`,
      targetPath: path.join(this.options.kubeletRootDir, 'pods', pod.uid, 'volumes', 'kubernetes.io~csi', volumeName, 'mount'),
    };
  }

  /** The NodePublishVolumeRequest kubelet would send for this pod and volume. */
  publishRequest(pod: Pod, options: PublishOptions = {}): NodePublishVolumeRequest {
    const volume = this.volumeFor(pod, options.volumeName);
    return {
      volume_id: volume.volumeId,
      publish_context: {},
      staging_target_path: '',
      target_path: volume.targetPath,
      volume_capability: {
        mount: {
          fs_type: '',
          mount_flags: [],
          volume_mount_group: options.fsGroup === undefined ? '' : String(options.fsGroup),
        },
        access_mode: { mode: 'SINGLE_NODE_WRITER' },
      },
      readonly: options.readOnly ?? true,
      secrets: {},
      // mergeMap(user attributes, pod info): kubelet's keys overwrite the user's.
      volume_context: {
        ...(options.attributes ?? {}),
        'csi.storage.k8s.io/pod.name': pod.name,
        'csi.storage.k8s.io/pod.namespace': pod.namespace,
        'csi.storage.k8s.io/pod.uid': pod.uid,
        'csi.storage.k8s.io/serviceAccount.name': pod.serviceAccount,
        'csi.storage.k8s.io/ephemeral': 'true',
      },
    };
  }

  async publish(pod: Pod, options: PublishOptions = {}): Promise<PublishedVolume> {
    const request = this.publishRequest(pod, options);
    return this.sendPublish(request, options.timeoutMs, options.volumeName ?? 'svid');
  }

  /** Sends a (possibly tampered) publish request with kubelet's directory handling around it. */
  async sendPublish(request: NodePublishVolumeRequest, timeoutMs = 120_000, volumeName = 'svid'): Promise<PublishedVolume> {
    const volumeDir = path.dirname(request.target_path);
    await fs.mkdir(volumeDir, { recursive: true, mode: 0o750 });
    await fs.writeFile(
      path.join(volumeDir, 'vol_data.json'),
      JSON.stringify({ driverName: 'csi.spire.io', volumeHandle: request.volume_id, specVolID: volumeName, volumeLifecycleMode: 'Ephemeral' }),
    );
    await this.call(this.node, 'NodeGetCapabilities', {});
    try {
      await this.call(this.node, 'NodePublishVolume', request, timeoutMs);
    } catch (err) {
      if (isServiceError(err) && !NON_FINAL_CODES.has(err.code)) await this.removeMountDir(request.target_path);
      throw err;
    }
    return { volumeId: request.volume_id, targetPath: request.target_path };
  }

  async unpublish(volume: PublishedVolume): Promise<void> {
    await this.call(this.node, 'NodeUnpublishVolume', { volume_id: volume.volumeId, target_path: volume.targetPath });
    await this.removeMountDir(volume.targetPath);
  }

  nodeCall(method: string, request: object, timeoutMs?: number): Promise<unknown> {
    return this.call(this.node, method, request, timeoutMs);
  }

  identityCall(method: string, request: object = {}): Promise<unknown> {
    return this.call(this.identity, method, request);
  }

  /** Probe as livenessprobe does: true when the driver answers ready, false when not (yet) or not listening. */
  async probeReady(): Promise<boolean> {
    try {
      const response = (await this.identityCall('Probe')) as { ready: { value: boolean } | null };
      return response.ready?.value === true;
    } catch {
      return false;
    }
  }

  close(): void {
    this.node.close();
    this.identity.close();
  }

  /** kubelet's removeMountDir: remove the mount dir if it is an empty, unmounted directory, then vol_data.json. */
  private async removeMountDir(targetPath: string): Promise<void> {
    await fs.rmdir(targetPath).catch(() => undefined);
    await fs.rm(path.join(path.dirname(targetPath), 'vol_data.json'), { force: true });
    await fs.rmdir(path.dirname(targetPath)).catch(() => undefined);
  }

  private call(client: grpc.Client, method: string, request: object, timeoutMs = 120_000): Promise<unknown> {
    const fn = (client as unknown as Record<string, UnaryMethod>)[method];
    if (!fn) throw new Error(`no such CSI method ${method}`);
    return new Promise((resolve, reject) => {
      fn.call(client, request, { deadline: Date.now() + timeoutMs }, (err, response) => (err ? reject(err) : resolve(response)));
    });
  }
}

export function isServiceError(err: unknown): err is grpc.ServiceError {
  return typeof err === 'object' && err !== null && 'code' in err && 'details' in err;
}
