import fs from 'node:fs/promises';
import path from 'node:path';

/**
 * One line of /proc/<pid>/mountinfo (proc(5)):
 *
 * ```
 * 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
 * (1)(2) (3)  (4)   (5)      (6)      (7)   (8) (9)    (10)        (11)
 * ```
 *
 * Idempotency checks read this file, as spiffe-csi does, rather than comparing
 * device numbers of a path and its parent: a bind mount of a directory on the
 * same file system has the same device as its parent and would be missed, and
 * stat() on a dead mount can hang.
 */
export interface MountEntry {
  mountId: number;
  parentId: number;
  /** `major:minor` of the file system. */
  majorMinor: string;
  /** The directory of the file system that forms the root of this mount (bind mounts show the sub-path). */
  root: string;
  mountPoint: string;
  /** Per-mount options (ro, nosuid, nodev, noexec, relatime, …). */
  mountOptions: string[];
  /** Optional fields such as `shared:1` or `master:2`. */
  optionalFields: string[];
  fsType: string;
  /** The mount source (device, or whatever name was given, e.g. our driver name for a tmpfs). */
  source: string;
  /** Per-superblock options (size=…, mode=… for tmpfs). */
  superOptions: string[];
}

export const MOUNTINFO_PATH = '/proc/self/mountinfo';

/**
 * The kernel escapes space, tab, newline and backslash in paths as `\ooo`
 * (octal). Any other three-digit octal escape is decoded the same way.
 */
function unescapeField(value: string): string {
  return value.replace(/\\([0-7]{3})/g, (_match, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

function splitOptions(value: string): string[] {
  return value === '' ? [] : value.split(',');
}

/**
 * How the kernel writes a path in mountinfo: space, tab, newline and backslash
 * as `\ooo` (show_mountinfo → seq_path with " \t\n\\", fs/proc_namespace.c).
 */
export function escapeMountPath(value: string): string {
  return value.replace(/[ \t\n\\]/g, (char) => `\\${char.charCodeAt(0).toString(8).padStart(3, '0')}`);
}

/**
 * Parses mountinfo text. Throws on a line that does not have the documented
 * shape, naming the line, because guessing about mounts leads to unmounting
 * the wrong thing. `mayConcern`, a cheap test on the raw line, skips the
 * parsing of lines that cannot be wanted: a node with hundreds of pods has
 * thousands of mounts, and every publish and unpublish looks at one path.
 */
export function parseMountInfo(text: string, mayConcern?: (line: string) => boolean): MountEntry[] {
  const entries: MountEntry[] = [];
  const lines = text.split('\n');
  for (let index = 0; index < lines.length; index++) {
    const line = lines[index];
    if (line === undefined || line.trim() === '') continue;
    if (mayConcern !== undefined && !mayConcern(line)) continue;
    const where = `mountinfo line ${index + 1}`;
    // Split on single spaces: the kernel writes exactly one between fields,
    // and an empty source (allowed for some file systems) shows up as an empty
    // field that /\s+/ would swallow.
    const fields = line.split(' ');
    const separator = fields.indexOf('-', 6);
    if (separator < 0 || fields.length < separator + 4) {
      throw new Error(`${where} is not in the mountinfo format: ${JSON.stringify(line)}`);
    }
    const [mountIdText, parentIdText, majorMinor, root, mountPoint, mountOptions] = fields;
    const mountId = Number(mountIdText);
    const parentId = Number(parentIdText);
    if (!Number.isInteger(mountId) || !Number.isInteger(parentId) || mountIdText === '' || parentIdText === '') {
      throw new Error(`${where} has a non-numeric mount id: ${JSON.stringify(line)}`);
    }
    if (majorMinor === undefined || root === undefined || mountPoint === undefined || mountOptions === undefined) {
      throw new Error(`${where} is not in the mountinfo format: ${JSON.stringify(line)}`);
    }
    entries.push({
      mountId,
      parentId,
      majorMinor,
      root: unescapeField(root),
      mountPoint: unescapeField(mountPoint),
      mountOptions: splitOptions(mountOptions),
      optionalFields: fields.slice(6, separator),
      fsType: unescapeField(fields[separator + 1] ?? ''),
      source: unescapeField(fields[separator + 2] ?? ''),
      // Super options contain no spaces, but join defensively in case a
      // future kernel adds fields after them.
      superOptions: splitOptions(fields.slice(separator + 3).join(' ')),
    });
  }
  return entries;
}

/**
 * Runs `read` for many callers at once without ever answering one of them
 * with a result that began before it asked: a caller that arrives while a
 * read is in flight waits for the next one, which starts when that read ends
 * and is shared by everyone who arrived meanwhile. So a caller always sees
 * the effect of a mount or unmount it made before asking, and a burst of
 * calls costs two reads, not one each.
 */
export class SharedRead<T> {
  private inFlight: Promise<T> | undefined;
  private next: Promise<T> | undefined;

  constructor(private readonly read: () => Promise<T>) {}

  get(): Promise<T> {
    if (this.inFlight === undefined) return this.start();
    const settled = this.inFlight.then(
      () => undefined,
      () => undefined,
    );
    this.next ??= settled.then(() => {
      this.next = undefined;
      return this.start();
    });
    return this.next;
  }

  private start(): Promise<T> {
    const read = this.read();
    this.inFlight = read;
    const done = (): void => {
      if (this.inFlight === read) this.inFlight = undefined;
    };
    read.then(done, done);
    return read;
  }
}

/**
 * The mount table's text, read once for all callers waiting at the same time:
 * when 500 pods go at once, 500 unpublishes each reading a table of thousands
 * of lines would hold as many copies of it (hundreds of MiB) and parse it
 * 500 times over.
 */
const mountTable = new SharedRead(() => fs.readFile(MOUNTINFO_PATH, 'utf8'));

export async function readMountInfo(): Promise<MountEntry[]> {
  return parseMountInfo(await mountTable.get());
}

/**
 * The mounts at `mountPath` (a path as mountinfo lists it) and, with
 * `below`, anywhere under it. Only lines holding the escaped path after a
 * space are parsed; the exact comparison is made on the parsed mount point.
 */
async function readMountsAt(mountPath: string, below: boolean): Promise<MountEntry[]> {
  const needle = ` ${escapeMountPath(mountPath)}`;
  const prefix = mountPath === '/' ? '/' : `${mountPath}/`;
  const entries = parseMountInfo(await mountTable.get(), (line) => line.includes(needle));
  return entries.filter((entry) => entry.mountPoint === mountPath || (below && entry.mountPoint.startsWith(prefix)));
}

/**
 * The path mountinfo would list for `target`. The kernel records mount points
 * with every symlink resolved, so a target below a symlink (a kubelet root
 * directory moved to another disk and linked back) is compared on its real
 * path, or our own tmpfs there would never be found again. Only the parent is
 * resolved: mount(8) follows a symlink at its target, so a symlink is never a
 * mount point itself, and resolving it would make whatever it points to look
 * like the mount to unmount or refuse to delete. (Nor is the target itself
 * stat()ed, which could hang on a dead mount.)
 */
async function mountPathOf(target: string): Promise<string> {
  const absolute = path.resolve(target);
  const parent = path.dirname(absolute);
  if (parent === absolute) return absolute;
  try {
    return path.join(await fs.realpath(parent), path.basename(absolute));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // No parent directory, no mount below it: the path as written will do.
    if (code === 'ENOENT' || code === 'ENOTDIR') return absolute;
    throw new Error(`resolving the parent directory of ${absolute} failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

/** True when something is mounted exactly at `target`. */
export async function isMountPoint(target: string): Promise<boolean> {
  return (await readMountsAt(await mountPathOf(target), false)).length > 0;
}

/** The mounts at `target` and anywhere below it, in mountinfo order. */
export async function mountsUnder(target: string): Promise<MountEntry[]> {
  return readMountsAt(await mountPathOf(target), true);
}

/** From one read of the table: the mounts at `target` (in mountinfo order) and those strictly below it. */
export async function mountsAtAndBelow(target: string): Promise<{ at: MountEntry[]; below: MountEntry[] }> {
  const wanted = await mountPathOf(target);
  const entries = await readMountsAt(wanted, true);
  return { at: entries.filter((entry) => entry.mountPoint === wanted), below: entries.filter((entry) => entry.mountPoint !== wanted) };
}

/**
 * The mount that is visible at `target` when several are stacked there: the
 * one no other mount at the same path sits on. Falls back to the last listed.
 */
export async function findMount(target: string): Promise<MountEntry | undefined> {
  return topmostMount(await readMountsAt(await mountPathOf(target), false));
}

/** Exported for tests: picks the top of a stack of mounts at one path. */
export function topmostMount(atPath: readonly MountEntry[]): MountEntry | undefined {
  const parents = new Set(atPath.map((entry) => entry.parentId));
  const tops = atPath.filter((entry) => !parents.has(entry.mountId));
  return tops[tops.length - 1] ?? atPath[atPath.length - 1];
}
