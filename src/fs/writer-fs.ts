import type { Dirent, Stats } from 'node:fs';
import fsSync from 'node:fs';
import fs from 'node:fs/promises';

/**
 * The file-system calls of the AtomicWriter, in two flavours with the same
 * results; a failure rejects in both, with the failing call's `code` (the
 * writer acts on ENOENT and EINVAL from readlink and readdir, which are
 * single system calls either way, and on removeTree only as failed or not).
 *
 * `threadPoolFs` is node:fs/promises: every call goes to libuv's thread pool,
 * which is right for a directory on the node's disk, where a call may wait on
 * the device and must not stop the event loop.
 *
 * `inlineFs` makes the same system calls on the event loop's own thread. It is
 * for the per-volume tmpfs only: tmpfs lives in memory, so its calls never wait
 * on a device and each takes microseconds, while a thread-pool round trip costs
 * a hand-off, a wake-up and a promise (and, for writeFile, a FileHandle with its
 * open/write/close trips). A trust-bundle change rewrites every volume of the
 * node at once, and with `--jitless` that overhead was most of its CPU time
 * (README "Benchmarks"). One volume's write is ~20 calls, a fraction of a
 * millisecond. The price: a bundle change, which wakes every volume at once,
 * runs their writes back to back without returning to the event loop, so a
 * CSI call or agent message arriving meanwhile waits until the last volume is
 * written, ~0.35 ms per volume (~175 ms for 500). Handing the loop back
 * between volumes (an immediate per volume, queued in turn) made that bundle
 * change ~150 ms slower in all, measured, whatever the slice; kubelet's calls
 * wait minutes, so the writes win.
 */
export interface WriterFs {
  stat(target: string): Promise<Stats>;
  lstat(target: string): Promise<Stats>;
  readlink(target: string): Promise<string>;
  readdir(dir: string): Promise<string[]>;
  readdirWithTypes(dir: string): Promise<Dirent[]>;
  readFile(target: string): Promise<Buffer>;
  mkdtemp(prefix: string): Promise<string>;
  /** Creates `target` (which must not exist) with `mode` less the umask. */
  writeNewFile(target: string, data: Buffer, mode: number): Promise<void>;
  chmod(target: string, mode: number): Promise<void>;
  chown(target: string, uid: number, gid: number): Promise<void>;
  symlink(linkTarget: string, linkPath: string): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  unlink(target: string): Promise<void>;
  /** Removes an empty directory. */
  rmdir(target: string): Promise<void>;
  /** rm -rf: no error when `target` is missing. */
  removeTree(target: string): Promise<void>;
}

export const threadPoolFs: WriterFs = {
  stat: (target) => fs.stat(target),
  lstat: (target) => fs.lstat(target),
  readlink: (target) => fs.readlink(target),
  readdir: (dir) => fs.readdir(dir),
  readdirWithTypes: (dir) => fs.readdir(dir, { withFileTypes: true }),
  readFile: (target) => fs.readFile(target),
  mkdtemp: (prefix) => fs.mkdtemp(prefix),
  writeNewFile: (target, data, mode) => fs.writeFile(target, data, { mode, flag: 'wx' }),
  chmod: (target, mode) => fs.chmod(target, mode),
  chown: (target, uid, gid) => fs.chown(target, uid, gid),
  symlink: (linkTarget, linkPath) => fs.symlink(linkTarget, linkPath),
  rename: (from, to) => fs.rename(from, to),
  unlink: (target) => fs.unlink(target),
  rmdir: (target) => fs.rmdir(target),
  removeTree: (target) => fs.rm(target, { recursive: true, force: true }),
};

// Each is an async function so that a failing call rejects, as its
// thread-pool twin does, instead of throwing at the caller.
export const inlineFs: WriterFs = {
  stat: async (target) => fsSync.statSync(target),
  lstat: async (target) => fsSync.lstatSync(target),
  readlink: async (target) => fsSync.readlinkSync(target),
  readdir: async (dir) => fsSync.readdirSync(dir),
  readdirWithTypes: async (dir) => fsSync.readdirSync(dir, { withFileTypes: true }),
  readFile: async (target) => fsSync.readFileSync(target),
  mkdtemp: async (prefix) => fsSync.mkdtempSync(prefix),
  writeNewFile: async (target, data, mode) => fsSync.writeFileSync(target, data, { mode, flag: 'wx' }),
  chmod: async (target, mode) => fsSync.chmodSync(target, mode),
  chown: async (target, uid, gid) => fsSync.chownSync(target, uid, gid),
  symlink: async (linkTarget, linkPath) => fsSync.symlinkSync(linkTarget, linkPath),
  rename: async (from, to) => fsSync.renameSync(from, to),
  unlink: async (target) => fsSync.unlinkSync(target),
  rmdir: async (target) => fsSync.rmdirSync(target),
  removeTree: async (target) => fsSync.rmSync(target, { recursive: true, force: true }),
};
