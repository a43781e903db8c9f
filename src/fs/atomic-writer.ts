import { createHash } from 'node:crypto';
import type { Dirent } from 'node:fs';
import path from 'node:path';
import { describeFileNameProblem } from './file-names.js';
import { threadPoolFs, type WriterFs } from './writer-fs.js';

/**
 * The Kubernetes AtomicWriter layout
 * (https://github.com/kubernetes/kubernetes/blob/master/pkg/volume/util/atomic_writer.go),
 * for one volume directory:
 *
 * ```
 * targetDir/
 *   ..2026_08_22_10_00_00.Ab12Cd/   real files, one directory per version
 *   ..data -> ..2026_08_22_10_00_00.Ab12Cd
 *   svid.pem -> ..data/svid.pem     visible names, relative links, made once
 * ```
 *
 * Why this layout and not a `tmp + rename` per file: Envoy's file SDS only
 * reacts to IN_MOVED_TO in the parent directory of each file, and it loads the
 * certificate and key together, re-reading until two consecutive hashes match
 * (https://www.envoyproxy.io/docs/envoy/latest/configuration/security/secret#key-rotation).
 * Renaming the one `..data` link flips every file at
 * once and produces exactly one IN_MOVED_TO in the volume root. Per-file renames
 * give Envoy a window with a new certificate and the old key, which it rejects
 * ("Failed to reload certificates") and may not retry until the next event.
 *
 * The link names are relative so that they keep working inside the pod, where
 * the volume is mounted at a different path than on the node.
 */

export interface FileSpec {
  /** A plain file name at the volume root; see describeFileNameProblem. */
  name: string;
  data: Buffer;
  /** Permission bits, 0..0o777. Applied with chmod, so the umask has no say. */
  mode: number;
}

export interface WriteOptions {
  /** Group that owns every file (the pod's fsGroup); applied before the swap. */
  gid?: number;
}

export interface WriteResult {
  /** False when the payload equals the current version and nothing was written. */
  changed: boolean;
  /** The name of the version directory `..data` points to after the call. */
  version: string;
}

/** The link whose rename is the unit of atomicity. */
export const DATA_LINK_NAME = '..data';
const DATA_TMP_LINK_NAME = '..data_tmp';
/** Scratch name used when a visible link has to be repaired in place. */
const VISIBLE_TMP_LINK_NAME = '..visible_tmp';
/** `..YYYY_MM_DD_HH_MM_SS.<random>`, as made by versionDirPrefix + mkdtemp. */
const VERSION_DIR_PATTERN = /^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.[^/]+$/;
const VERSION_DIR_MODE = 0o755;
/** gid_t is 32 bits and (gid_t)-1 means "leave unchanged" to chown(2). */
const MAX_GID = 0xfffffffe;

interface ValidatedPayload {
  files: FileSpec[];
  gid: number | undefined;
}

interface LastWrite {
  version: string;
  names: string[];
  digest: string;
}

/**
 * SHA-256 of every name, mode and content in order, and of the group when one
 * is given, in hex: what a volume and its writer remember of a write instead
 * of its bytes. Each file is one header line (the name JSON-quoted, so no
 * name can run into the fields after it, then the mode and the length of the
 * data) and its data: two hash updates a file. A bundle change hashes every
 * volume's files, twice with the writer's own check, and this was ~15 µs of
 * it per volume with `--jitless` as a list of length-prefixed Buffers.
 */
export function digestOfFiles(files: readonly FileSpec[], gid?: number): string {
  const hash = createHash('sha256');
  if (gid !== undefined) hash.update(`gid ${gid}\n`);
  for (const file of files) hash.update(`${JSON.stringify(file.name)} ${file.mode.toString(8)} ${file.data.length}\n`).update(file.data);
  return hash.digest('hex');
}

/**
 * Writes the files of one volume so that readers always see one complete
 * version. Calls on one instance are serialised; there must be no other writer
 * for the same directory ("AtomicWriter offers no concurrency guarantees and
 * must be synchronized by the caller", upstream's atomic_writer.go).
 */
export class AtomicWriter {
  readonly targetDir: string;
  /** The promise chain that makes write() calls run one after another. */
  private tail: Promise<unknown> = Promise.resolve();
  /**
   * The last write of this instance that completed, cleanly: its version, its
   * names in order and digestOfFiles of its payload. Unset at first, after a failure
   * and after an old version could not be removed; a new instance (a restarted
   * driver) knows nothing and compares with the disk.
   */
  private lastWrite: LastWrite | undefined;

  /** How the system calls are made: writer-fs.ts says which suits which file system. */
  private readonly fs: WriterFs;

  constructor(targetDir: string, options: { fs?: WriterFs } = {}) {
    if (!path.isAbsolute(targetDir)) throw new Error(`atomic writer needs an absolute directory, got ${JSON.stringify(targetDir)}`);
    // The caller's string when it is already normal (a target path always
    // is): path.resolve builds a new one, a second copy per volume.
    const resolved = path.resolve(targetDir);
    this.targetDir = resolved === targetDir ? targetDir : resolved;
    this.fs = options.fs ?? threadPoolFs;
  }

  /**
   * Makes `files` the volume's content in one `..data` rename. Rejects before
   * anything on disk is touched when a name, mode or gid is invalid. The
   * buffers are not copied (a bundle change would copy every volume's files):
   * the caller must not change them until the returned promise settles.
   */
  async write(files: readonly FileSpec[], options: WriteOptions = {}): Promise<WriteResult> {
    const payload = validatePayload(files, options);
    const run = this.tail.then(() => this.writeNow(payload));
    // A failed write must not block the ones queued behind it.
    this.tail = run.catch(() => undefined);
    return run;
  }

  /**
   * True when `files` (with `options.gid`) are exactly the current version and
   * every visible link is in place, so a write of them would change nothing.
   * Reads; never writes. Queued behind writes in progress.
   */
  async holds(files: readonly FileSpec[], options: WriteOptions = {}): Promise<boolean> {
    const { files: wanted, gid } = validatePayload(files, options);
    const check = this.tail.then(async () => {
      const current = await readDataLink(this.targetDir, this.fs);
      if (current === null) return false;
      if (!(await versionMatches(inDir(this.targetDir, current), wanted, gid ?? process.getegid?.(), this.fs))) return false;
      const links = await Promise.all(wanted.map((f) => this.fs.readlink(inDir(this.targetDir, f.name)).catch(() => null)));
      if (!links.every((target, i) => target === `${DATA_LINK_NAME}/${wanted[i]?.name ?? ''}`)) return false;
      // No visible name besides these (a link left by a payload with more files is removed by a write).
      const names = new Set(wanted.map((f) => f.name));
      return (await this.listVolumeDir()).every((entry) => entry.startsWith('.') || names.has(entry));
    });
    this.tail = check.catch(() => undefined);
    return check;
  }

  /** The version directory `..data` points to, or null before the first write. */
  async currentVersion(): Promise<string | null> {
    return readDataLink(this.targetDir, this.fs);
  }

  /** The current bytes of `name` (through `..data`), or null if there is none. */
  async readCurrent(name: string): Promise<Buffer | null> {
    const problem = describeFileNameProblem(name);
    if (problem !== undefined) throw new Error(`cannot read volume file: ${problem}`);
    try {
      return await this.fs.readFile(inDir(this.targetDir, DATA_LINK_NAME, name));
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return null;
      throw this.failure(`reading ${name}`, err);
    }
  }

  private async writeNow(payload: ValidatedPayload): Promise<WriteResult> {
    const digest = digestOfFiles(payload.files, payload.gid);
    const known = this.lastWrite;
    // Until it succeeds, the next write takes the full path (leftovers, comparison with the disk).
    this.lastWrite = undefined;
    if (known !== undefined) {
      // The version this instance made is still the one in place: nobody else
      // writes here (the class comment), so the directory holds exactly that
      // write's files and links and no leftovers. Skipping the comparison with
      // the disk, the leftover scan and the link checks halves the system calls
      // of a write, which is what a bundle change costs on every volume.
      const current = await readDataLink(this.targetDir, this.fs).catch(() => null);
      if (current === known.version) {
        if (digest === known.digest) {
          this.lastWrite = known;
          return { changed: false, version: current };
        }
        return this.writeKnownSuccessor(payload, digest, known);
      }
    }
    const { result, clean } = await this.writeChecked(payload);
    // Only a clean directory is trusted: an old version that could not go
    // (it may hold an old key) is for the next write's full path to remove.
    if (clean) this.lastWrite = { version: result.version, names: payload.files.map((f) => f.name), digest };
    return result;
  }

  /** A new version after one this instance wrote: swap, then only the links for names that are new. */
  private async writeKnownSuccessor({ files, gid }: ValidatedPayload, digest: string, known: LastWrite): Promise<WriteResult> {
    const names = files.map((f) => f.name);
    const version = await this.swapInNewVersion(files, gid);
    if (names.length !== known.names.length || names.some((name, i) => name !== known.names[i])) await this.syncVisibleLinks(names);
    const removed = await this.removeVersion(known.version, known.names);
    // A version that could not go is a leftover: the next write takes the full path and removes it.
    if (removed) this.lastWrite = { version, names, digest };
    return { changed: true, version };
  }

  /**
   * The full write: checks the directory, clears crash leftovers, compares
   * with what is on disk. `clean`: nothing but the current version is left.
   */
  private async writeChecked({ files, gid }: ValidatedPayload): Promise<{ result: WriteResult; clean: boolean }> {
    const dir = this.targetDir;
    try {
      const stat = await this.fs.stat(dir);
      if (!stat.isDirectory()) throw new Error('it is not a directory');
    } catch (err) {
      throw this.failure('checking the volume directory', err);
    }

    const current = await readDataLink(dir, this.fs);
    await this.removeCrashLeftovers(current);

    const names = files.map((f) => f.name);
    // Without an explicit gid a fresh file would belong to our effective group,
    // so a version still owned by an fsGroup from an earlier call is rewritten.
    const expectedGid = gid ?? process.getegid?.();
    let unchanged = false;
    if (current !== null) {
      try {
        unchanged = await versionMatches(inDir(dir, current), files, expectedGid, this.fs);
      } catch (err) {
        throw this.failure(`comparing with the current version ${current}`, err);
      }
    }
    if (current !== null && unchanged) {
      // Nothing to write, but kubernetes#121472: a crash between the swap and
      // the link step leaves visible names missing, so make sure they exist.
      await this.syncVisibleLinks(names);
      return { result: { changed: false, version: current }, clean: true };
    }

    const version = await this.swapInNewVersion(files, gid);
    // After the swap, as upstream does: on the first write the visible names
    // appear a moment after ..data; later writes normally find them in place.
    await this.syncVisibleLinks(names);
    const clean = current === null || current === version || (await this.removeVersion(current));
    return { result: { changed: true, version }, clean };
  }

  /** Writes the files into a new version directory and renames `..data` to it; returns its name. */
  private async swapInNewVersion(files: readonly FileSpec[], gid: number | undefined): Promise<string> {
    const dir = this.targetDir;
    const version = await this.createVersionDir(files, gid);
    const tmpLink = inDir(dir, DATA_TMP_LINK_NAME);
    try {
      await this.fs.symlink(version, tmpLink);
    } catch (err) {
      await removeQuietly(inDir(dir, version), this.fs);
      throw this.failure(`linking ${DATA_TMP_LINK_NAME} to the new version`, err);
    }
    try {
      // rename(2) replaces the old link in one step: a reader resolving ..data
      // sees either the old or the new version, never neither. This is the
      // IN_MOVED_TO ..data event that Envoy reloads on.
      await this.fs.rename(tmpLink, inDir(dir, DATA_LINK_NAME));
    } catch (err) {
      await removeQuietly(tmpLink, this.fs);
      await removeQuietly(inDir(dir, version), this.fs);
      throw this.failure(`renaming ${DATA_TMP_LINK_NAME} to ${DATA_LINK_NAME}`, err);
    }
    return version;
  }

  /**
   * Deletes the version `..data` no longer points to, at once rather than
   * after a grace period, as upstream does. A reader that resolved ..data just
   * before the swap may get ENOENT and has to retry; Envoy treats that as a
   * failed load and waits for the next event, which the swap has already
   * delivered (docs/design.md facts F16, F17). The new files are live at this
   * point, so a failure here is not a failed write: false, and the directory
   * goes with the next write's crash-leftover cleanup. `names`: the files this
   * instance wrote into it, when it made that version itself.
   */
  private async removeVersion(version: string, names?: readonly string[]): Promise<boolean> {
    const versionPath = inDir(this.targetDir, version);
    if (names !== undefined && (await this.removeKnownVersion(versionPath, names))) return true;
    return this.fs.removeTree(versionPath).then(
      () => true,
      () => false,
    );
  }

  /**
   * Removes a version directory this instance made by unlinking the names it
   * wrote and then the directory: a quarter of the system calls of rm -rf,
   * which lists the directory and lstats every entry, and a bundle change does
   * this on every volume. False, with the rest left to rm -rf, when anything
   * differs from that write: the directory is not one any more (rm -rf's own
   * first check; a link is never followed), a name is missing, or something
   * else is in it (rmdir fails).
   */
  private async removeKnownVersion(versionPath: string, names: readonly string[]): Promise<boolean> {
    try {
      if (!(await this.fs.lstat(versionPath)).isDirectory()) return false;
      for (const name of names) await this.fs.unlink(inDir(versionPath, name));
      await this.fs.rmdir(versionPath);
      return true;
    } catch {
      return false;
    }
  }

  /** Writes every file into a new `..<timestamp>.<random>` directory. */
  private async createVersionDir(files: readonly FileSpec[], gid: number | undefined): Promise<string> {
    let versionPath: string;
    try {
      versionPath = await this.fs.mkdtemp(inDir(this.targetDir, versionDirPrefix(new Date())));
    } catch (err) {
      throw this.failure('creating a version directory', err);
    }
    const version = path.basename(versionPath);
    try {
      // mkdtemp makes 0700 and any mode is filtered by the umask; readers in
      // the pod run as another user and need to traverse this directory.
      await this.fs.chmod(versionPath, VERSION_DIR_MODE);
      for (const file of files) {
        const filePath = inDir(versionPath, file.name);
        // Created with the requested mode (less the umask), so a key is never
        // more open than asked for, not even for a moment.
        await this.fs.writeNewFile(filePath, file.data, file.mode);
        // Group ownership before publication (cert-manager/csi-lib PR #65): a
        // pod must never see a 0640 key that its fsGroup cannot read yet.
        if (gid !== undefined) await this.fs.chown(filePath, -1, gid);
        // chmod last: the umask may have removed bits at creation, and chown
        // may clear set-id bits; the mode on disk must be exactly the one asked.
        await this.fs.chmod(filePath, file.mode);
      }
    } catch (err) {
      await removeQuietly(versionPath, this.fs);
      throw this.failure(`writing files into ${version}`, err);
    }
    return version;
  }

  private async listVolumeDir(): Promise<string[]> {
    try {
      return await this.fs.readdir(this.targetDir);
    } catch (err) {
      throw this.failure('listing the volume directory', err);
    }
  }

  /**
   * A crash can leave `..data_tmp` (between symlink and rename) or whole
   * version directories (before the swap, or before the old one was removed).
   * Only `current` is live; everything else of ours is garbage.
   */
  private async removeCrashLeftovers(current: string | null): Promise<void> {
    const dir = this.targetDir;
    for (const entry of await this.listVolumeDir()) {
      const stale = entry === DATA_TMP_LINK_NAME || entry === VISIBLE_TMP_LINK_NAME || (entry !== current && VERSION_DIR_PATTERN.test(entry));
      if (!stale) continue;
      // Best effort: garbage that cannot go now (something holds it busy) must
      // not stop the volume from receiving new versions; the next write retries.
      // ..data_tmp is the exception, as the swap needs its name.
      await this.fs.removeTree(inDir(dir, entry)).catch((err: unknown) => {
        if (entry === DATA_TMP_LINK_NAME) throw this.failure(`removing leftover ${entry}`, err);
      });
    }
  }

  /**
   * Makes the root hold exactly one visible link `name -> ..data/name` per
   * payload name, and drops links for names that left the payload.
   */
  private async syncVisibleLinks(names: readonly string[]): Promise<void> {
    const dir = this.targetDir;
    for (const name of names) {
      const linkPath = inDir(dir, name);
      const wanted = `${DATA_LINK_NAME}/${name}`;
      let existing: string | null;
      try {
        existing = await this.fs.readlink(linkPath);
      } catch (err) {
        const code = errnoCode(err);
        if (code === 'ENOENT') existing = null;
        else if (code === 'EINVAL')
          existing = ''; // there, but not a symlink
        else throw this.failure(`reading the visible link ${name}`, err);
      }
      if (existing === wanted) continue;
      try {
        if (existing === null) {
          await this.fs.symlink(wanted, linkPath);
        } else {
          // Something else sits at the visible name (not normally possible in
          // our own tmpfs). Replace it by rename so the name never vanishes.
          const tmp = inDir(dir, VISIBLE_TMP_LINK_NAME);
          await removeQuietly(tmp, this.fs);
          await this.fs.symlink(wanted, tmp);
          await this.fs.rename(tmp, linkPath);
        }
      } catch (err) {
        throw this.failure(`creating the visible link ${name} -> ${wanted}`, err);
      }
    }

    const keep = new Set(names);
    for (const entry of await this.listVolumeDir()) {
      if (entry.startsWith('.') || keep.has(entry)) continue;
      const linkPath = inDir(dir, entry);
      let target: string;
      try {
        target = await this.fs.readlink(linkPath);
      } catch {
        continue; // not a symlink: not one of ours, leave it alone
      }
      if (!target.startsWith(`${DATA_LINK_NAME}/`)) continue;
      try {
        await this.fs.unlink(linkPath);
      } catch (err) {
        if (errnoCode(err) !== 'ENOENT') throw this.failure(`removing the stale visible link ${entry}`, err);
      }
    }
  }

  private failure(action: string, err: unknown): Error {
    const message = err instanceof Error ? err.message : String(err);
    return new Error(`atomic writer for ${this.targetDir}: ${action} failed: ${message}`, { cause: err });
  }
}

function validatePayload(files: readonly FileSpec[], options: WriteOptions): ValidatedPayload {
  const seen = new Set<string>();
  // New specs holding the names and modes as they are now; the bytes themselves are not copied (see write()).
  const specs: FileSpec[] = [];
  for (const file of files) {
    const problem = describeFileNameProblem(file.name);
    if (problem !== undefined) throw new Error(`invalid volume file name: ${problem}`);
    if (seen.has(file.name)) throw new Error(`volume file name ${JSON.stringify(file.name)} is used twice; names must be distinct`);
    seen.add(file.name);
    if (!Number.isInteger(file.mode) || file.mode < 0 || file.mode > 0o777) {
      throw new Error(`volume file ${file.name}: mode ${String(file.mode)} is not a permission mode between 0 and 0o777`);
    }
    if (!Buffer.isBuffer(file.data)) throw new Error(`volume file ${file.name}: data must be a Buffer`);
    specs.push({ name: file.name, data: file.data, mode: file.mode });
  }
  const { gid } = options;
  if (gid !== undefined && (!Number.isInteger(gid) || gid < 0 || gid > MAX_GID)) {
    throw new Error(`gid ${String(gid)} is not a group id between 0 and ${MAX_GID}`);
  }
  return { files: specs, gid };
}

/**
 * True when `dir` holds a volume this writer made and nothing else: `..data`
 * or a version directory, and otherwise only the writer's own links and
 * version directories. Lets a caller that lost its records recognise a volume
 * of its own before deleting it, and leave anything else alone.
 */
export async function holdsOnlyWriterFiles(dir: string, fs: WriterFs = threadPoolFs): Promise<boolean> {
  let entries: Dirent[];
  try {
    entries = await fs.readdirWithTypes(dir);
  } catch {
    return false;
  }
  let sawVersion = false;
  for (const entry of entries) {
    if (entry.isDirectory() && VERSION_DIR_PATTERN.test(entry.name)) {
      sawVersion = true;
      continue;
    }
    if (!entry.isSymbolicLink()) return false;
    const target = await fs.readlink(inDir(dir, entry.name)).catch(() => '');
    if (entry.name === DATA_LINK_NAME || entry.name === DATA_TMP_LINK_NAME || entry.name === VISIBLE_TMP_LINK_NAME) {
      if (!VERSION_DIR_PATTERN.test(target) && !target.startsWith(`${DATA_LINK_NAME}/`)) return false;
      sawVersion ||= entry.name === DATA_LINK_NAME;
      continue;
    }
    if (!target.startsWith(`${DATA_LINK_NAME}/`)) return false;
  }
  return sawVersion;
}

/**
 * Reads `..data`. A link that does not name a version directory in this volume
 * is treated as absent, so the next write replaces it instead of getting stuck.
 */
async function readDataLink(dir: string, fs: WriterFs): Promise<string | null> {
  let target: string;
  try {
    target = await fs.readlink(inDir(dir, DATA_LINK_NAME));
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'ENOENT') return null;
    if (code === 'EINVAL') throw new Error(`atomic writer for ${dir}: ${DATA_LINK_NAME} exists but is not a symlink`, { cause: err });
    throw new Error(`atomic writer for ${dir}: reading ${DATA_LINK_NAME} failed: ${errorText(err)}`, { cause: err });
  }
  return VERSION_DIR_PATTERN.test(target) ? target : null;
}

/**
 * True when `versionDir` holds exactly the payload's names, each a regular
 * file with the same bytes, permission bits and (if given) group.
 */
async function versionMatches(versionDir: string, files: readonly FileSpec[], gid: number | undefined, fs: WriterFs): Promise<boolean> {
  let present: string[];
  try {
    present = await fs.readdir(versionDir);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return false;
    throw err;
  }
  if (present.length !== files.length) return false;
  const presentSet = new Set(present);
  for (const file of files) {
    if (!presentSet.has(file.name)) return false;
    const filePath = inDir(versionDir, file.name);
    const stat = await fs.lstat(filePath);
    if (!stat.isFile()) return false;
    if ((stat.mode & 0o7777) !== file.mode) return false;
    if (gid !== undefined && stat.gid !== gid) return false;
    if (stat.size !== file.data.length) return false;
    if (!(await fs.readFile(filePath)).equals(file.data)) return false;
  }
  return true;
}

/** `..YYYY_MM_DD_HH_MM_SS.` in UTC, the prefix upstream gives MkdirTemp. */
function versionDirPrefix(now: Date): string {
  const two = (n: number): string => String(n).padStart(2, '0');
  const date = `${now.getUTCFullYear()}_${two(now.getUTCMonth() + 1)}_${two(now.getUTCDate())}`;
  const time = `${two(now.getUTCHours())}_${two(now.getUTCMinutes())}_${two(now.getUTCSeconds())}`;
  return `..${date}_${time}.`;
}

async function removeQuietly(target: string, fs: WriterFs): Promise<void> {
  await fs.removeTree(target).catch(() => undefined);
}

/**
 * `dir/name…` by concatenation: `dir` is absolute and resolved (the
 * constructor), and every name is a single checked component (a payload name,
 * a version matching VERSION_DIR_PATTERN or one of our link names), so
 * path.join's normalising, which a bundle change paid ~40 times per volume,
 * would change nothing.
 */
function inDir(dir: string, ...names: string[]): string {
  return dir === '/' ? `/${names.join('/')}` : `${dir}/${names.join('/')}`;
}

function errnoCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
