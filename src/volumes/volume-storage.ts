/**
 * Where a volume's files live: a per-volume, size-limited tmpfs mounted
 * directly at target_path (secrets-store's model: nothing to go stale after a
 * driver restart, unlike a shared tmpfs bind-mounted into pods, csi-lib#74), or
 * on hosts where the driver cannot mount, the target directory itself.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { DriverError, errorMessage } from '../errors.js';
import { findMount, mountsUnder } from '../fs/mountinfo.js';
import { isOurTmpfs, mountTmpfs, unmount } from '../fs/tmpfs.js';
import type { Logger } from '../observability/logger.js';

export interface VolumeStorageOptions {
  useTmpfs: boolean;
  tmpfsSizeBytes: number;
  /** The mount source our tmpfs mounts carry (the driver name), to recognise them. */
  mountSource: string;
  kubeletRootDir: string;
  logger: Logger;
}

/** kubelet stacks nothing at an inline volume's target path, but a crash can leave our own mounts stacked. */
const MAX_STACKED_MOUNTS = 16;

export class VolumeStorage {
  constructor(private readonly options: VolumeStorageOptions) {}

  get usesTmpfs(): boolean {
    return this.options.useTmpfs;
  }

  /** Creates target_path (the SP's job since Kubernetes 1.20) and mounts the tmpfs unless one of ours is there already. */
  async prepare(targetPath: string, useTmpfs: boolean): Promise<void> {
    try {
      await fs.mkdir(targetPath, { mode: 0o750 });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        throw new DriverError(status.FAILED_PRECONDITION, `the parent directory of target_path ${targetPath} does not exist; kubelet creates it before NodePublishVolume`);
      }
      if (code !== 'EEXIST') throw new DriverError(status.INTERNAL, `creating target_path ${targetPath} failed: ${errorMessage(err)}`);
    }
    if (!useTmpfs) return;
    const mounted = await findMount(targetPath);
    if (mounted && isOurTmpfs(mounted, this.options.mountSource)) return;
    if (mounted) {
      throw new DriverError(
        status.FAILED_PRECONDITION,
        `target_path ${targetPath} already has a ${mounted.fsType} mount from ${mounted.source} that this driver did not make`,
      );
    }
    try {
      await mountTmpfs(targetPath, { sizeBytes: this.options.tmpfsSizeBytes, source: this.options.mountSource });
    } catch (err) {
      throw new DriverError(
        status.INTERNAL,
        `${errorMessage(err)}. The driver needs CAP_SYS_ADMIN (a privileged container) and mount(8) to mount the per-volume tmpfs; set --tmpfs=false to write into the directory instead`,
      );
    }
  }

  /**
   * Unmounts our tmpfs (every stacked copy) and removes target_path with all it
   * holds. Refuses when a mount that is not ours sits at or below the path, so a
   * recursive delete can never reach into somebody else's filesystem.
   */
  async remove(targetPath: string): Promise<void> {
    for (let i = 0; i < MAX_STACKED_MOUNTS; i++) {
      const mounted = await findMount(targetPath);
      if (mounted === undefined || !isOurTmpfs(mounted, this.options.mountSource)) break;
      try {
        await unmount(targetPath);
      } catch (err) {
        throw new DriverError(status.INTERNAL, errorMessage(err));
      }
    }
    const foreign = await mountsUnder(targetPath);
    if (foreign.length > 0) {
      throw new DriverError(
        status.INTERNAL,
        `refusing to delete ${targetPath}: ${foreign.map((m) => `${m.fsType} from ${m.source} at ${m.mountPoint}`).join(', ')} is mounted there and was not made by this driver`,
      );
    }
    await fs.rm(targetPath, { recursive: true, force: true });
  }

  /**
   * Unpublish of a volume this driver does not know: kubelet retries any error
   * forever, so this succeeds. It removes target_path only if it is an empty,
   * unmounted directory in kubelet's pod layout — the most an earlier attempt
   * of ours could have left.
   */
  async removeIfEmptyKubeletDir(targetPath: string): Promise<void> {
    const podsDir = path.join(this.options.kubeletRootDir, 'pods') + '/';
    if (!targetPath.startsWith(podsDir) || path.normalize(targetPath) !== targetPath) return;
    if ((await mountsUnder(targetPath)).length > 0) return;
    try {
      await fs.rmdir(targetPath);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTEMPTY' && code !== 'ENOTDIR' && code !== 'EEXIST') {
        this.options.logger.warn({ target_path: targetPath, err: errorMessage(err) }, 'could not remove the target path of an unknown volume');
      }
    }
  }
}
