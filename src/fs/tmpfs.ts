import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import type { MountEntry } from './mountinfo.js';

const execFileAsync = promisify(execFile);

/** A hung mount(8)/umount(8) must not hold a CSI call until kubelet gives up. */
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
 * Mounts a size-limited tmpfs at `target`: private keys then live in memory
 * only (docs/design.md invariant 8), and a `size=` keeps a runaway payload from
 * eating half the node's RAM, the kernel default that cert-manager/csi-lib's
 * shared tmpfs keeps (docs/design.md fact F18). nosuid,nodev,noexec because
 * the volume only ever holds PEM files.
 */
export async function mountTmpfs(target: string, opts: TmpfsOptions): Promise<void> {
  const mode = opts.mode ?? 0o755;
  if (!path.isAbsolute(target)) throw new Error(`tmpfs mount target must be an absolute path, got ${JSON.stringify(target)}`);
  if (!Number.isSafeInteger(opts.sizeBytes) || opts.sizeBytes <= 0) {
    throw new Error(`tmpfs size must be a positive whole number of bytes, got ${String(opts.sizeBytes)}`);
  }
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
    throw new Error(`tmpfs mode must be between 0 and 0o7777, got ${String(mode)}`);
  }
  // execFile passes no shell, but mount(8) still parses its arguments: a
  // source starting with "-" would be read as an option, and a blank one
  // would make our mounts unrecognisable.
  if (opts.source === '' || opts.source.startsWith('-') || /\s/.test(opts.source)) {
    throw new Error(`tmpfs source must be a non-empty word not starting with "-", got ${JSON.stringify(opts.source)}`);
  }
  const options = `size=${opts.sizeBytes},mode=${mode.toString(8).padStart(4, '0')},nosuid,nodev,noexec`;
  await run('mount', ['-t', 'tmpfs', '-o', options, opts.source, path.resolve(target)], `mounting a tmpfs at ${target}`);
}

/** Unmounts whatever is mounted on top at `target`. */
export async function unmount(target: string): Promise<void> {
  if (!path.isAbsolute(target)) throw new Error(`unmount target must be an absolute path, got ${JSON.stringify(target)}`);
  await run('umount', [path.resolve(target)], `unmounting ${target}`);
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
