/**
 * Where a volume's files live: a per-volume, size-limited tmpfs mounted
 * directly at target_path (secrets-store's model: nothing to go stale after a
 * driver restart, unlike a shared tmpfs bind-mounted into pods, csi-lib#74), or
 * on hosts where the driver cannot mount, the target directory itself.
 */
import fsSync, { constants as fsConstants, type Stats } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { status } from '../grpc-status.js';
import { DriverError, errorMessage } from '../errors.js';
import { AtomicWriter, holdsOnlyWriterFiles } from '../fs/atomic-writer.js';
import { inlineFs } from '../fs/writer-fs.js';
import { findMount, mountsAtAndBelow, mountsUnder, topmostMount } from '../fs/mountinfo.js';
import type { Libc } from '../fs/libc.js';
import { isOurTmpfs, mountTmpfs, unmount, type TmpfsCallOptions } from '../fs/tmpfs.js';
import type { Logger } from '../observability/logger.js';
import { inlineVolumeId, kubeletVolumeAt } from './pod-binding.js';

export interface VolumeStorageOptions {
  useTmpfs: boolean;
  tmpfsSizeBytes: number;
  /** The mount source our tmpfs mounts carry (the driver name), to recognise them. */
  mountSource: string;
  kubeletRootDir: string;
  logger: Logger;
  /** For tests: the C library binding for mount(2)/umount2(2) (default: koffi's; when it fails, mount(8)/umount(8)). */
  loadLibc?: () => Promise<Libc>;
}

/** kubelet stacks nothing at an inline volume's target path, but a crash can leave our own mounts stacked. */
const MAX_STACKED_MOUNTS = 16;

/**
 * The volume root, tmpfs or plain directory: owned by the driver, which alone
 * writes there, and enterable by every user, because the container user is
 * not root and, without an fsGroup, in no group of ours. It holds only links,
 * version directories (0755) and the files, whose own modes guard the key
 * (0600, or 0640 group-owned with an fsGroup; volume-files.ts).
 */
export const VOLUME_ROOT_MODE = 0o755;

/** What unpublish of a volume without a record found: it removed our volume, found nothing, or left what is there. */
export type UnrecordedRemoval = 'removed' | 'absent' | 'not-ours';

/**
 * What a recorded volume's target path holds when the driver starts: nothing
 * (`gone`), something that is not a real directory (a symbolic link or a file),
 * a directory without a complete version of the files, or one with files.
 */
export type TargetState = 'gone' | 'not-a-directory' | 'no-files' | 'has-files';

/**
 * What the VolumeManager needs of the volumes' directories and mounts:
 * VolumeStorage implements it on the node; the unit tests use an in-memory one
 * (test/support/fakes/memory-volume-storage.ts).
 */
export interface VolumeStorageBackend {
  /** Whether new volumes get their own tmpfs (recorded per volume). */
  readonly usesTmpfs: boolean;
  /** Creates target_path, refuses anything but a real directory, mounts the tmpfs. */
  prepare(targetPath: string, useTmpfs: boolean): Promise<void>;
  /** Unmounts our tmpfs and removes target_path with all it holds (a symbolic link itself, never its target). */
  remove(targetPath: string): Promise<void>;
  removeUnrecordedVolume(volumeId: string, targetPath: string, knownAsOurs: boolean): Promise<UnrecordedRemoval>;
  removeIfEmptyKubeletDir(targetPath: string): Promise<void>;
  findKubeletTargetPath(volumeId: string): Promise<string | undefined>;
  /** What a recorded volume's target path holds, for resume (docs/design.md §1 Start-up). */
  inspect(targetPath: string): Promise<TargetState>;
}

export class VolumeStorage implements VolumeStorageBackend {
  private readonly mountOptions: TmpfsCallOptions;

  constructor(private readonly options: VolumeStorageOptions) {
    this.mountOptions = options.loadLibc ? { loadLibc: options.loadLibc } : {};
  }

  get usesTmpfs(): boolean {
    return this.options.useTmpfs;
  }

  /**
   * Creates target_path (the SP's job since Kubernetes 1.20), makes sure it is
   * a real directory, and mounts the tmpfs unless one of ours is there already;
   * without a tmpfs, gives the directory the ownership and mode a tmpfs root has.
   *
   * The usual case makes its few system calls (mkdir, lstat, mount) on the
   * event loop's thread, not in libuv's thread pool, as the metadata store
   * writes the record: each takes microseconds on a directory kubelet has just
   * made, while a thread-pool round trip waits for a free thread and then for
   * the event loop to take the result, and that wait, milliseconds on a busy
   * node, was most of the slowest publishes' overhead (README "Benchmarks").
   */
  async prepare(targetPath: string, useTmpfs: boolean): Promise<void> {
    const created = createTargetDir(targetPath);
    await refuseAnythingButADirectory(targetPath);
    if (!useTmpfs) {
      makeVolumeRoot(targetPath);
      return;
    }
    // A directory this call has just created cannot have a mount on it yet,
    // so the usual case (kubelet leaves target_path to the driver) skips
    // reading the node's whole mount table; only a directory found in place,
    // from an interrupted publish or somebody else, is looked up.
    const mounted = created ? undefined : await findMount(targetPath);
    if (mounted && isOurTmpfs(mounted, this.options.mountSource)) return;
    if (mounted) {
      throw new DriverError(
        status.FAILED_PRECONDITION,
        `target_path ${targetPath} already has a ${mounted.fsType} mount from ${mounted.source} that this driver did not make`,
      );
    }
    try {
      await mountTmpfs(
        targetPath,
        { sizeBytes: this.options.tmpfsSizeBytes, source: this.options.mountSource, mode: VOLUME_ROOT_MODE },
        this.mountOptions,
      );
    } catch (err) {
      const message = errorMessage(err);
      // A refused mount(2) already says what to do; every other failure gets the same advice once.
      const advice = message.includes('CAP_SYS_ADMIN')
        ? ''
        : '. The driver needs CAP_SYS_ADMIN (a privileged container) to mount the per-volume tmpfs; set --tmpfs=false to write into the directory instead';
      throw new DriverError(status.INTERNAL, `${message}${advice}`);
    }
  }

  /**
   * Unmounts our tmpfs (every stacked copy) and removes target_path with all it
   * holds. Refuses when a mount that is not ours sits at or below the path, so a
   * recursive delete can never reach into somebody else's filesystem.
   */
  async remove(targetPath: string): Promise<void> {
    if (await removeIfSymlink(targetPath)) return;
    // One read of the mount table (thousands of lines on a busy node): each
    // umount2 takes the topmost mount at the path off this list as it does
    // off the kernel's, and what is left at or below the path is not ours.
    const { at, below } = await mountsAtAndBelow(targetPath);
    for (let i = 0; i < MAX_STACKED_MOUNTS; i++) {
      const mounted = topmostMount(at);
      if (mounted === undefined || !isOurTmpfs(mounted, this.options.mountSource)) break;
      try {
        await unmount(targetPath, this.mountOptions);
      } catch (err) {
        throw new DriverError(status.INTERNAL, errorMessage(err));
      }
      at.splice(at.indexOf(mounted), 1);
    }
    const left = [...at, ...below];
    if (left.length > 0) {
      // Ours can remain only under somebody else's (umount2 takes the top one): name theirs.
      const ours = left.filter((m) => isOurTmpfs(m, this.options.mountSource));
      const theirs = left.filter((m) => !ours.includes(m));
      throw new DriverError(
        status.INTERNAL,
        `refusing to delete ${targetPath}: ${(theirs.length > 0 ? theirs : left).map((m) => `${m.fsType} from ${m.source} at ${m.mountPoint}`).join(', ')} ` +
          `is mounted there and was not made by this driver${theirs.length > 0 && ours.length > 0 ? ` (under it: ${ours.length} tmpfs of ours)` : ''}`,
      );
    }
    await fs.rm(targetPath, { recursive: true, force: true });
  }

  /**
   * Never follows a symbolic link: lstat, and the files are looked for only in
   * a real directory. An error reading the version link propagates (the volume
   * is then not resumed, and its record stays for the next start).
   */
  async inspect(targetPath: string): Promise<TargetState> {
    // Synchronous calls, as in prepare: a restart inspects every volume before
    // re-opening its stream, and a thread-pool round trip per call kept 500
    // streams waiting on each other's lstat and readlink.
    let found: Stats;
    try {
      found = fsSync.lstatSync(targetPath);
    } catch (err) {
      // Only a path that is not there is gone. Any other failure (EACCES, EIO)
      // says nothing about the volume, whose record must then stay: resume
      // reports it and the next start, or NodeUnpublishVolume, tries again.
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return 'gone';
      throw new Error(`cannot inspect target_path ${targetPath}: ${errorMessage(err)}`, { cause: err });
    }
    if (!found.isDirectory()) return 'not-a-directory';
    return (await new AtomicWriter(targetPath, { fs: inlineFs }).currentVersion()) === null ? 'no-files' : 'has-files';
  }

  /**
   * Unpublish of a volume without a usable record (quarantined as corrupt,
   * written by a newer driver version, or the state directory lost): the
   * volume is recognised from what is on disk and removed like any other.
   * kubelet's word alone is not enough, as an error here would be retried
   * forever and a wrong guess deletes somebody's files: target_path must be
   * in kubelet's pod layout with volume_id = kubelet's id for that pod and
   * volume, and it must hold our tmpfs or our writer's files and nothing else
   * — or the state directory still knows the id (`knownAsOurs`: a tombstone
   * or a record in a newer format). Anything else is left as
   * removeIfEmptyKubeletDir leaves it.
   */
  async removeUnrecordedVolume(volumeId: string, targetPath: string, knownAsOurs: boolean): Promise<UnrecordedRemoval> {
    const binding = kubeletVolumeAt(this.options.kubeletRootDir, targetPath);
    if (binding === undefined || inlineVolumeId(binding.podUid, binding.volumeName) !== volumeId) {
      await this.removeIfEmptyKubeletDir(targetPath);
      return 'not-ours';
    }
    try {
      await fs.lstat(targetPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'absent';
      throw new DriverError(status.INTERNAL, `checking target_path ${targetPath} failed: ${errorMessage(err)}`);
    }
    if (!knownAsOurs && !(await this.holdsOurVolume(targetPath))) {
      await this.removeIfEmptyKubeletDir(targetPath);
      return 'not-ours';
    }
    await this.remove(targetPath);
    return 'removed';
  }

  private async holdsOurVolume(targetPath: string): Promise<boolean> {
    const mounted = await findMount(targetPath);
    if (mounted) return isOurTmpfs(mounted, this.options.mountSource);
    return holdsOnlyWriterFiles(targetPath);
  }

  /**
   * The target path kubelet would use for an inline volume id, found by
   * scanning its pods directory, or undefined when no pod has that volume
   * any more. Only for tombstones, whose records no longer say where they were.
   */
  async findKubeletTargetPath(volumeId: string): Promise<string | undefined> {
    const podsDir = path.join(this.options.kubeletRootDir, 'pods');
    for (const podUid of await readdirOrEmpty(podsDir)) {
      const pluginDir = path.join(podsDir, podUid, 'volumes', 'kubernetes.io~csi');
      for (const volumeName of await readdirOrEmpty(pluginDir)) {
        if (inlineVolumeId(podUid, volumeName) === volumeId) return path.join(pluginDir, volumeName, 'mount');
      }
    }
    return undefined;
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

/** True when this call created the directory, false when something was already at the path. */
function createTargetDir(targetPath: string): boolean {
  try {
    // mkdir's mode is filtered by the umask; makeVolumeRoot sets the real one.
    fsSync.mkdirSync(targetPath, { mode: VOLUME_ROOT_MODE });
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      throw new DriverError(
        status.FAILED_PRECONDITION,
        `the parent directory of target_path ${targetPath} does not exist; kubelet creates it before NodePublishVolume`,
      );
    }
    if (code !== 'EEXIST') throw new DriverError(status.INTERNAL, `creating target_path ${targetPath} failed: ${errorMessage(err)}`);
    return false;
  }
}

/**
 * mkdir succeeds with EEXIST on anything already at the path, and both mount(8)
 * and the file writes follow a symlink: a link at target_path would put the
 * tmpfs or the key wherever it points, out of reach of unpublish. Only a real
 * directory (which an earlier, interrupted publish of ours may have left) is
 * used. FAILED_PRECONDITION, not INTERNAL: the driver works as designed, the
 * node's state at target_path is wrong and must be looked at, as with a
 * foreign mount there. The failed publish then removes what is there, a link
 * itself and never what it points to, so kubelet's retry starts afresh.
 */
async function refuseAnythingButADirectory(targetPath: string): Promise<void> {
  let stat: Stats;
  try {
    stat = fsSync.lstatSync(targetPath);
  } catch (err) {
    throw new DriverError(status.INTERNAL, `checking target_path ${targetPath} failed: ${errorMessage(err)}`);
  }
  if (stat.isDirectory()) return;
  throw new DriverError(
    status.FAILED_PRECONDITION,
    `target_path ${targetPath} is ${await describeNonDirectory(targetPath, stat)}, not a directory; the driver never mounts or writes through it. ` +
      'Only kubelet and this driver should create anything there: find what put it there',
  );
}

async function describeNonDirectory(targetPath: string, stat: Stats): Promise<string> {
  if (stat.isSymbolicLink()) {
    const destination = await fs.readlink(targetPath).catch(() => '?');
    return `a symbolic link (to ${destination})`;
  }
  if (stat.isFile()) return 'a regular file';
  if (stat.isSocket()) return 'a socket';
  if (stat.isFIFO()) return 'a named pipe';
  if (stat.isBlockDevice() || stat.isCharacterDevice()) return 'a device node';
  return 'not a regular file or directory';
}

/**
 * Without a tmpfs the directory itself is the volume root: give it the owner
 * and mode a tmpfs root gets. Through a handle opened without following a
 * symlink, so the directory checked is the one changed; chown before chmod, as
 * chown may clear bits.
 */
function makeVolumeRoot(targetPath: string): void {
  let fd: number | undefined;
  try {
    fd = fsSync.openSync(targetPath, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY | fsConstants.O_NOFOLLOW);
    fsSync.fchownSync(fd, process.geteuid?.() ?? -1, process.getegid?.() ?? -1);
    fsSync.fchmodSync(fd, VOLUME_ROOT_MODE);
  } catch (err) {
    throw new DriverError(
      status.INTERNAL,
      `setting the owner and mode ${VOLUME_ROOT_MODE.toString(8)} of target_path ${targetPath} failed: ${errorMessage(err)}`,
    );
  } finally {
    if (fd !== undefined) fsSync.closeSync(fd);
  }
}

/**
 * A symlink at target_path is never our volume (prepare refuses them), and no
 * mount is ever at a symlink: remove the link itself, never what it points to.
 * False when there is no symlink, and remove carries on.
 */
async function removeIfSymlink(targetPath: string): Promise<boolean> {
  try {
    if (!(await fs.lstat(targetPath)).isSymbolicLink()) return false;
    await fs.unlink(targetPath);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new DriverError(status.INTERNAL, `removing the symbolic link at target_path ${targetPath} failed: ${errorMessage(err)}`);
  }
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return await fs.readdir(dir);
  } catch {
    return [];
  }
}
