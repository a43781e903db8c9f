import { execFile } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { errnoName, loadLibc as defaultLoadLibc, MS_NODEV, MS_NOEXEC, MS_NOSUID, UMOUNT_NOFOLLOW, type Libc } from './libc.js';
import type { MountEntry } from './mountinfo.js';

const execFileAsync = promisify(execFile);

/** A hung mount(8)/umount(8) (the fallback) must not hold a CSI call until kubelet gives up. */
const COMMAND_TIMEOUT_MS = 30_000;

export interface TmpfsOptions {
  /** Upper bound of the tmpfs; the kernel rounds it up to whole pages. */
  sizeBytes: number;
  /** Mode of the tmpfs root directory. Default 0o755. */
  mode?: number;
  /**
   * Shown as the mount source in mountinfo (e.g. the driver name), so the
   * driver can tell its own mounts from anything else at a path.
   */
  source: string;
}

/**
 * How mounts are made: mount(2)/umount2(2) through koffi (`syscall`), or, when
 * koffi cannot load here, by running mount(8)/umount(8) (`mount(8)`), which
 * costs a process spawn, about 8 ms, per publish and unpublish.
 */
export type MountMechanism = 'syscall' | 'mount(8)';

export interface MountMechanismChoice {
  mechanism: MountMechanism;
  /** With `mount(8)`: why the syscalls are unavailable (koffi's load error). */
  reason?: string;
  /** The C library, with `syscall`. */
  libc?: Libc;
}

export interface TmpfsCallOptions {
  /** For tests: the C library binding (default: koffi's, loaded once). */
  loadLibc?: () => Promise<Libc>;
}

/**
 * Which mechanism mounts use: the syscalls when the C library loads (it is
 * loaded once per process and the outcome, failure included, is kept), else
 * mount(8)/umount(8).
 */
export async function chooseMountMechanism(options: TmpfsCallOptions = {}): Promise<MountMechanismChoice> {
  try {
    return { mechanism: 'syscall', libc: await (options.loadLibc ?? defaultLoadLibc)() };
  } catch (err) {
    return { mechanism: 'mount(8)', reason: err instanceof Error ? err.message : String(err) };
  }
}

/**
 * Mounts a size-limited tmpfs at `target`: private keys then live in memory
 * only (docs/design.md invariant 8), and a `size=` keeps a runaway payload from
 * eating half the node's RAM, the kernel default that cert-manager/csi-lib's
 * shared tmpfs keeps (docs/design.md fact F18). nosuid,nodev,noexec because
 * the volume only ever holds PEM files.
 */
export async function mountTmpfs(target: string, opts: TmpfsOptions, callOptions: TmpfsCallOptions = {}): Promise<void> {
  const mode = opts.mode ?? 0o755;
  if (!path.isAbsolute(target)) throw new Error(`tmpfs mount target must be an absolute path, got ${JSON.stringify(target)}`);
  if (!Number.isSafeInteger(opts.sizeBytes) || opts.sizeBytes <= 0) {
    throw new Error(`tmpfs size must be a positive whole number of bytes, got ${String(opts.sizeBytes)}`);
  }
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
    throw new Error(`tmpfs mode must be between 0 and 0o7777, got ${String(mode)}`);
  }
  // execFile passes no shell, but mount(8), the fallback, still parses its
  // arguments: a source starting with "-" would be read as an option, and a
  // blank one would make our mounts unrecognisable. The same rule for the
  // syscall, so that both show the same sources.
  if (opts.source === '' || opts.source.startsWith('-') || /\s/.test(opts.source)) {
    throw new Error(`tmpfs source must be a non-empty word not starting with "-", got ${JSON.stringify(opts.source)}`);
  }
  const data = `size=${opts.sizeBytes},mode=${mode.toString(8).padStart(4, '0')}`;
  const what = `mounting a tmpfs at ${target}`;
  const { libc } = await chooseMountMechanism(callOptions);
  if (libc === undefined) {
    await run('mount', ['-t', 'tmpfs', '-o', `${data},nosuid,nodev,noexec`, opts.source, path.resolve(target)], what);
    return;
  }
  // What mount(8) does with these options: nosuid,nodev,noexec become flags,
  // the rest goes to tmpfs as its data string. No atime flag, so the kernel
  // applies relatime, as it did for mount(8).
  const errno = libc.mount(opts.source, path.resolve(target), 'tmpfs', MS_NOSUID | MS_NODEV | MS_NOEXEC, data);
  if (errno !== 0) {
    throw new Error(`${what} failed: mount(2) of tmpfs ${opts.source} with ${data},nosuid,nodev,noexec: ${describeErrno(errno, MOUNT_ERRORS)}`);
  }
}

/**
 * Unmounts whatever is mounted on top at `target`. With the syscall, a
 * symbolic link at `target` is never followed (UMOUNT_NOFOLLOW): unmounting
 * it fails as not mounted.
 */
export async function unmount(target: string, callOptions: TmpfsCallOptions = {}): Promise<void> {
  if (!path.isAbsolute(target)) throw new Error(`unmount target must be an absolute path, got ${JSON.stringify(target)}`);
  const what = `unmounting ${target}`;
  const { libc } = await chooseMountMechanism(callOptions);
  if (libc === undefined) {
    await run('umount', [path.resolve(target)], what);
    return;
  }
  const errno = libc.umount2(path.resolve(target), UMOUNT_NOFOLLOW);
  if (errno !== 0) throw new Error(`${what} failed: umount2(2): ${describeErrno(errno, UNMOUNT_ERRORS)}`);
}

const { errno: E } = os.constants;

/** What an errno from mount(2) means here, in the words mount(8) would use, and what to do. */
const MOUNT_ERRORS: ReadonlyMap<number, string> = new Map([
  [E.EPERM, 'permission denied: mounting needs CAP_SYS_ADMIN (run the driver in a privileged container) or set --tmpfs=false'],
  [E.EACCES, 'permission denied: mounting needs CAP_SYS_ADMIN (run the driver in a privileged container) or set --tmpfs=false'],
  [E.ENOENT, 'mount point does not exist'],
  [E.ENOTDIR, 'mount point is not a directory'],
  [E.ENODEV, 'the kernel does not support tmpfs'],
  [E.ENOMEM, 'out of memory'],
  [E.EINVAL, 'invalid argument (the kernel refused the tmpfs options)'],
  [E.ELOOP, 'too many levels of symbolic links in the mount point'],
]);

/** What an errno from umount2(2) means here, in the words umount(8) would use. */
const UNMOUNT_ERRORS: ReadonlyMap<number, string> = new Map([
  [E.EBUSY, 'target is busy (a process has a file open or its working directory there, or something is mounted below it)'],
  [E.EINVAL, 'not mounted (or a symbolic link, which is never followed)'],
  [E.EPERM, 'permission denied: unmounting needs CAP_SYS_ADMIN (run the driver in a privileged container)'],
  [E.ENOENT, 'no such file or directory'],
  [E.ENOTDIR, 'a path component is not a directory'],
]);

function describeErrno(errno: number, meanings: ReadonlyMap<number, string>): string {
  const meaning = meanings.get(errno);
  return meaning === undefined ? errnoName(errno) : `${errnoName(errno)}, ${meaning}`;
}

/** True for a tmpfs this driver mounted (its source is our name). */
export function isOurTmpfs(entry: MountEntry, source: string): boolean {
  return entry.fsType === 'tmpfs' && entry.source === source;
}

async function run(command: string, args: string[], what: string): Promise<void> {
  try {
    await execFileAsync(command, args, { timeout: COMMAND_TIMEOUT_MS, encoding: 'utf8' });
  } catch (err) {
    throw new Error(`${what} failed: ${describeCommandFailure(command, args, err)}`, { cause: err });
  }
}

function describeCommandFailure(command: string, args: readonly string[], err: unknown): string {
  const commandLine = [command, ...args].join(' ');
  if (typeof err !== 'object' || err === null) return `${commandLine}: ${String(err)}`;
  const failure = err as { code?: unknown; signal?: unknown; killed?: unknown; stderr?: unknown; message?: unknown };
  if (failure.code === 'ENOENT') return `${command} is not installed or not on PATH`;
  const stderr = typeof failure.stderr === 'string' ? failure.stderr.trim() : '';
  let outcome: string;
  if (failure.killed === true && failure.signal !== null && failure.signal !== undefined) {
    outcome = `was killed by ${typeof failure.signal === 'string' ? failure.signal : 'a signal'} (timeout ${COMMAND_TIMEOUT_MS} ms)`;
  } else if (typeof failure.code === 'number') {
    outcome = `exited with status ${failure.code}`;
  } else {
    outcome = `failed: ${String(failure.message)}`;
  }
  return `\`${commandLine}\` ${outcome}${stderr === '' ? '' : `: ${stderr}`}`;
}
