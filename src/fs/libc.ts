/**
 * The few C library calls Node.js has no binding for, made through koffi (a C
 * FFI for Node.js that ships prebuilt binaries per platform, so the image needs
 * no compiler). Loaded once, on first use, so that a platform without a koffi
 * binary fails only the feature that needs it, with the reason, instead of the
 * whole driver at import time.
 */
import os from 'node:os';

/** flock(2) operations (<sys/file.h>; the same values on Linux, the BSDs and macOS). */
export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;

/** mount(2) flags (Linux <sys/mount.h>). */
export const MS_NOSUID = 2;
export const MS_NODEV = 4;
export const MS_NOEXEC = 8;

/** umount2(2) flag (Linux <sys/mount.h>): do not follow a symbolic link at the target. */
export const UMOUNT_NOFOLLOW = 8;

export interface Libc {
  /**
   * flock(2): 0 on success, otherwise the errno (a positive number; compare
   * with os.constants.errno, e.g. EWOULDBLOCK when LOCK_NB finds the lock
   * held). Never blocks the event loop as long as `operation` has LOCK_NB.
   */
  flock(fd: number, operation: number): number;
  /**
   * mount(2) (Linux): 0 on success, otherwise the errno. Synchronous: it holds
   * the event loop for as long as the kernel takes, which for a tmpfs is
   * microseconds.
   */
  mount(source: string, target: string, fsType: string, flags: number, data: string): number;
  /** umount2(2) (Linux): 0 on success, otherwise the errno. Synchronous, like mount. */
  umount2(target: string, flags: number): number;
  /**
   * malloc_trim(3) with no padding: returns the C heap's free pages to the
   * kernel. glibc only; undefined with another C library (musl has none).
   */
  mallocTrim?: () => void;
}

/** koffi or the C library could not be loaded on this platform; `message` says why. */
export class LibcUnavailableError extends Error {
  override readonly name = 'LibcUnavailableError';
}

let loading: Promise<Libc> | undefined;

/**
 * The C library, loaded on the first call; later calls share the result,
 * including a failure (the platform does not change while we run).
 */
export function loadLibc(): Promise<Libc> {
  loading ??= load();
  return loading;
}

async function load(): Promise<Libc> {
  let koffi;
  try {
    koffi = (await import('koffi')).default;
  } catch (err) {
    throw new LibcUnavailableError(
      `cannot load koffi, the C FFI module, on ${process.platform}-${process.arch}: ${describe(err)} ` +
        `(its prebuilt binary comes from the optional npm package @koromix/koffi-${process.platform}-${process.arch}; ` +
        'reinstall the production dependencies with optional packages included: npm ci --omit=dev)',
    );
  }
  try {
    // dlopen(NULL): the symbols already loaded into this process, libc among
    // them (node links it), whatever the C library's file name (glibc's
    // libc.so.6, musl's ld-musl-*.so.1).
    const lib = koffi.load(null);
    const flock = lib.func('int flock(int fd, int operation)');
    const mount = lib.func(
      'int mount(const char *source, const char *target, const char *filesystemtype, unsigned long mountflags, const char *data)',
    );
    const umount2 = lib.func('int umount2(const char *target, int flags)');
    const mallocTrim = bindOptional(() => lib.func('int malloc_trim(size_t pad)'));
    // koffi saves errno right after each call, before any other code can change it.
    const errnoOf = (result: unknown): number => {
      if (result === 0) return 0;
      const errno = koffi.errno();
      return errno > 0 ? errno : os.constants.errno.EIO;
    };
    return {
      flock: (fd, operation) => errnoOf(flock(fd, operation)),
      mount: (source, target, fsType, flags, data) => errnoOf(mount(source, target, fsType, flags, data)),
      umount2: (target, flags) => errnoOf(umount2(target, flags)),
      ...(mallocTrim && { mallocTrim: () => void mallocTrim(0) }),
    };
  } catch (err) {
    throw new LibcUnavailableError(`koffi loaded but cannot bind flock, mount and umount2 from the C library: ${describe(err)}`);
  }
}

/** A function only some C libraries have: undefined where the symbol is missing. */
function bindOptional<T>(bind: () => T): T | undefined {
  try {
    return bind();
  } catch {
    return undefined;
  }
}

/** The errno's symbolic name (EPERM, EBUSY, …), or `errno <n>` for one Node.js does not know. */
export function errnoName(errno: number): string {
  return Object.entries(os.constants.errno).find(([, value]) => value === errno)?.[0] ?? `errno ${errno}`;
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
