/**
 * Volume directories, their tmpfs mounts and their files in memory: what
 * VolumeStorage and AtomicWriter do on the node, reduced to what the lifecycle
 * can observe. Each target path is a directory (maybe "mounted"), a symbolic
 * link or a file; a directory holds at most one complete version of the files.
 * Writes can fail on demand (with AtomicWriter's error shape), be held in
 * progress, and are recorded.
 */
import { status } from '@grpc/grpc-js';
import { DriverError } from '../../../src/errors.js';
import type { FileSpec, WriteOptions, WriteResult } from '../../../src/fs/atomic-writer.js';
import type { VolumeWriter } from '../../../src/volumes/managed-volume.js';
import type { TargetState, UnrecordedRemoval, VolumeStorageBackend } from '../../../src/volumes/volume-storage.js';

export interface StoredFile {
  data: Buffer;
  mode: number;
  gid: number | undefined;
}

export interface MemoryTarget {
  kind: 'directory' | 'symlink' | 'file';
  /** Our tmpfs is mounted there. */
  tmpfs: boolean;
  /** The current version of the files, or undefined when none was written. */
  files: Map<string, StoredFile> | undefined;
  /** How many versions were written there. */
  versions: number;
}

export interface WriteAttempt {
  targetPath: string;
  files: FileSpec[];
  /** What became of it; `pending` while it is held or in progress. */
  outcome: 'pending' | 'written' | 'unchanged' | 'failed';
}

/** An error shaped like AtomicWriter's: the file-system error, with its errno code, as the cause. */
export function atomicWriterError(targetPath: string, code: string): Error {
  const cause = Object.assign(new Error(`${code}: simulated failure, write`), { code, syscall: 'write' });
  return new Error(`atomic writer for ${targetPath}: writing files into ..v failed: ${cause.message}`, { cause });
}

export class MemoryVolumeStorage implements VolumeStorageBackend {
  readonly targets = new Map<string, MemoryTarget>();
  /** Volume id → target path of the inline volumes kubelet's pods directory still has. */
  readonly kubeletVolumes = new Map<string, string>();
  /** Every call, as `<method> <target path>`, in order. */
  readonly calls: string[] = [];
  /** Every write, in order. */
  readonly attempts: WriteAttempt[] = [];
  /** When set, prepare() rejects with it (after creating the directory, as a failed mount would). */
  failPrepare: Error | undefined;
  /** Runs inside prepare() and write(), before they complete: a test advances its clock there to make a step take time. */
  onPrepare: ((targetPath: string) => void | Promise<void>) | undefined;
  onWrite: ((targetPath: string) => void | Promise<void>) | undefined;
  private failuresLeft = 0;
  private failureCode = 'ENOSPC';
  private gate: Promise<void> | undefined;

  constructor(readonly usesTmpfs = true) {}

  /** The writer a ManagedVolume gets for its target path (ManagedVolumeDeps.createWriter). */
  readonly createWriter = (targetPath: string): VolumeWriter => ({
    write: (files, options) => this.write(targetPath, files, options),
  });

  /** Fails the next `count` writes (Infinity: all) with `code`, AtomicWriter-shaped. */
  failWrites(count: number, code = 'ENOSPC'): void {
    this.failuresLeft = count;
    this.failureCode = code;
  }

  /** Holds every write that starts from now on in progress until the returned function is called. */
  holdWrites(): () => void {
    let release: () => void = () => undefined;
    this.gate = new Promise<void>((resolve) => {
      release = () => {
        this.gate = undefined;
        resolve();
      };
    });
    return release;
  }

  /** Writes that changed the files. */
  written(targetPath?: string): WriteAttempt[] {
    return this.attempts.filter((a) => a.outcome === 'written' && (targetPath === undefined || a.targetPath === targetPath));
  }

  /** A directory as a previous run left it, with a version of `files` when given. */
  seedDirectory(targetPath: string, options: { tmpfs?: boolean; files?: readonly FileSpec[] } = {}): void {
    this.targets.set(targetPath, {
      kind: 'directory',
      tmpfs: options.tmpfs ?? this.usesTmpfs,
      files: options.files === undefined ? undefined : toStored(options.files, undefined),
      versions: options.files === undefined ? 0 : 1,
    });
  }

  seedSymlink(targetPath: string): void {
    this.targets.set(targetPath, { kind: 'symlink', tmpfs: false, files: undefined, versions: 0 });
  }

  /** The current files at a target path, by name, or undefined. */
  filesAt(targetPath: string): Map<string, StoredFile> | undefined {
    return this.targets.get(targetPath)?.files;
  }

  async prepare(targetPath: string, useTmpfs: boolean): Promise<void> {
    this.calls.push(`prepare ${targetPath}`);
    const existing = this.targets.get(targetPath);
    if (existing !== undefined && existing.kind !== 'directory') {
      throw new DriverError(
        status.FAILED_PRECONDITION,
        `target_path ${targetPath} is ${existing.kind === 'symlink' ? 'a symbolic link' : 'a regular file'}, not a directory; the driver never mounts or writes through it`,
      );
    }
    const target: MemoryTarget = existing ?? { kind: 'directory', tmpfs: false, files: undefined, versions: 0 };
    this.targets.set(targetPath, target);
    await this.onPrepare?.(targetPath);
    if (this.failPrepare) throw this.failPrepare;
    if (useTmpfs) target.tmpfs = true;
  }

  async remove(targetPath: string): Promise<void> {
    this.calls.push(`remove ${targetPath}`);
    this.targets.delete(targetPath);
  }

  async removeUnrecordedVolume(volumeId: string, targetPath: string, knownAsOurs: boolean): Promise<UnrecordedRemoval> {
    this.calls.push(`removeUnrecordedVolume ${targetPath}`);
    if (this.kubeletVolumes.get(volumeId) !== targetPath) {
      await this.removeIfEmptyKubeletDir(targetPath);
      return 'not-ours';
    }
    const target = this.targets.get(targetPath);
    if (target === undefined) return 'absent';
    const ours = target.kind === 'directory' && (target.tmpfs || target.files !== undefined);
    if (!knownAsOurs && !ours) {
      await this.removeIfEmptyKubeletDir(targetPath);
      return 'not-ours';
    }
    await this.remove(targetPath);
    return 'removed';
  }

  async removeIfEmptyKubeletDir(targetPath: string): Promise<void> {
    this.calls.push(`removeIfEmptyKubeletDir ${targetPath}`);
    const target = this.targets.get(targetPath);
    if (target?.kind === 'directory' && !target.tmpfs && target.files === undefined) this.targets.delete(targetPath);
  }

  async findKubeletTargetPath(volumeId: string): Promise<string | undefined> {
    return this.kubeletVolumes.get(volumeId);
  }

  async inspect(targetPath: string): Promise<TargetState> {
    const target = this.targets.get(targetPath);
    if (target === undefined) return 'gone';
    if (target.kind !== 'directory') return 'not-a-directory';
    return target.files === undefined ? 'no-files' : 'has-files';
  }

  private async write(targetPath: string, files: readonly FileSpec[], options: WriteOptions = {}): Promise<WriteResult> {
    const attempt: WriteAttempt = { targetPath, files: [...files], outcome: 'pending' };
    this.attempts.push(attempt);
    await this.gate;
    await this.onWrite?.(targetPath);
    if (this.failuresLeft > 0) {
      this.failuresLeft -= 1;
      attempt.outcome = 'failed';
      throw atomicWriterError(targetPath, this.failureCode);
    }
    const target = this.targets.get(targetPath);
    if (target === undefined || target.kind !== 'directory') {
      attempt.outcome = 'failed';
      throw atomicWriterError(targetPath, 'ENOENT');
    }
    const next = toStored(files, options.gid);
    if (target.files !== undefined && sameFiles(target.files, next)) {
      attempt.outcome = 'unchanged';
      return { changed: false, version: `..v${target.versions}` };
    }
    target.files = next;
    target.versions += 1;
    attempt.outcome = 'written';
    return { changed: true, version: `..v${target.versions}` };
  }
}

function toStored(files: readonly FileSpec[], gid: number | undefined): Map<string, StoredFile> {
  return new Map(files.map((file) => [file.name, { data: Buffer.from(file.data), mode: file.mode, gid }]));
}

function sameFiles(a: Map<string, StoredFile>, b: Map<string, StoredFile>): boolean {
  if (a.size !== b.size) return false;
  for (const [name, file] of a) {
    const other = b.get(name);
    if (other === undefined || other.mode !== file.mode || other.gid !== file.gid || !other.data.equals(file.data)) return false;
  }
  return true;
}
