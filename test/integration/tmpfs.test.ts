import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { findMount, isMountPoint, mountsUnder } from '../../src/fs/mountinfo.js';
import { LibcUnavailableError, type Libc } from '../../src/fs/libc.js';
import { chooseMountMechanism, isOurTmpfs, mountTmpfs, unmount, type TmpfsCallOptions } from '../../src/fs/tmpfs.js';
import { VolumeStorage } from '../../src/volumes/volume-storage.js';
import { MemoryLog } from '../support/fakes/memory-log.js';
import { makeScratchDir, removeScratchDir } from '../support/scratch.js';

const SOURCE = 'csi.spire.io';
const SIZE = 1024 * 1024;
const isRoot = process.getuid?.() === 0;
const skip = isRoot ? false : 'mounting a tmpfs needs root (run as root to exercise src/fs/tmpfs.ts)';
/** The fallback: koffi cannot load, so mounts run mount(8) and umount(8). */
const WITHOUT_KOFFI: TmpfsCallOptions = {
  loadLibc: () => Promise.reject(new LibcUnavailableError('cannot load koffi, the C FFI module, on test-platform: no binary')),
};

let scratch: string;
before(async () => {
  scratch = await makeScratchDir('tmpfs');
});
after(async () => {
  // Never leave a mount behind, whatever failed: unmount before removing.
  for (const entry of (await mountsUnder(scratch)).reverse()) await unmount(entry.mountPoint).catch(() => undefined);
  await removeScratchDir(scratch);
});

if (!isRoot && process.env['CI']) {
  test('tmpfs integration tests run as root in CI', () => {
    assert.fail('CI is set but the tests are not running as root: src/fs/tmpfs.ts would go untested. Run the test job as root.');
  });
}

test('mount a size-limited tmpfs, see it in mountinfo, fill it, unmount it', { skip }, async () => {
  const target = path.join(scratch, 'volume');
  await fs.mkdir(target);
  await fs.writeFile(path.join(target, 'under-the-mount'), 'hidden while mounted');
  assert.equal(await isMountPoint(target), false);

  await mountTmpfs(target, { sizeBytes: SIZE, source: SOURCE, mode: 0o750 });
  try {
    assert.equal(await isMountPoint(target), true);
    const entry = await findMount(target);
    assert.ok(entry, 'mountinfo lists the target');
    assert.equal(entry.fsType, 'tmpfs');
    assert.equal(entry.source, SOURCE);
    assert.ok(isOurTmpfs(entry, SOURCE));
    assert.ok(!isOurTmpfs(entry, 'someone-else'));
    for (const option of ['nosuid', 'nodev', 'noexec'])
      assert.ok(entry.mountOptions.includes(option), `${option} in ${entry.mountOptions.join(',')}`);
    assert.ok(entry.superOptions.includes(`size=${SIZE / 1024}k`), `size in ${entry.superOptions.join(',')}`);
    assert.ok(entry.superOptions.includes('mode=750'), `mode in ${entry.superOptions.join(',')}`);
    assert.equal((await fs.stat(target)).mode & 0o7777, 0o750);
    assert.deepEqual(await fs.readdir(target), [], 'a fresh tmpfs hides what was below');

    await fs.writeFile(path.join(target, 'small'), Buffer.alloc(64 * 1024));
    await assert.rejects(fs.writeFile(path.join(target, 'too-big'), Buffer.alloc(2 * SIZE)), { code: 'ENOSPC' });
  } finally {
    await unmount(target);
  }

  assert.equal(await isMountPoint(target), false);
  assert.equal(await findMount(target), undefined);
  const stat = await fs.stat(target);
  assert.ok(stat.isDirectory());
  assert.deepEqual(await fs.readdir(target), ['under-the-mount'], 'the plain directory is back');
});

test('the default mode is 0755', { skip }, async () => {
  const target = path.join(scratch, 'default-mode');
  await fs.mkdir(target);
  await mountTmpfs(target, { sizeBytes: 64 * 1024, source: SOURCE });
  try {
    assert.ok((await findMount(target))?.superOptions.includes('mode=755'));
  } finally {
    await unmount(target);
  }
});

test("with mount(8) (koffi unavailable), failures say what failed and include the command's stderr", { skip }, async () => {
  const notMounted = path.join(scratch, 'not-mounted');
  await fs.mkdir(notMounted);
  await assert.rejects(unmount(notMounted, WITHOUT_KOFFI), (err: Error) => {
    assert.match(err.message, /^unmounting .*not-mounted failed: `umount .*` exited with status \d+: \S/);
    assert.match(err.message, /not mounted/);
    return true;
  });
  await assert.rejects(
    mountTmpfs(path.join(scratch, 'missing-dir'), { sizeBytes: 4096, source: SOURCE }, WITHOUT_KOFFI),
    /^Error: mounting a tmpfs at .*missing-dir failed: `mount -t tmpfs -o size=4096,mode=0755,nosuid,nodev,noexec csi\.spire\.io .*` exited with status \d+: \S/,
  );
});

test('arguments are validated before mount(8) runs', async () => {
  await assert.rejects(mountTmpfs('relative', { sizeBytes: 4096, source: SOURCE }), /absolute/);
  await assert.rejects(mountTmpfs('/x', { sizeBytes: 0, source: SOURCE }), /size/);
  await assert.rejects(mountTmpfs('/x', { sizeBytes: 1.5, source: SOURCE }), /size/);
  await assert.rejects(mountTmpfs('/x', { sizeBytes: 4096, source: '-o' }), /source/);
  await assert.rejects(mountTmpfs('/x', { sizeBytes: 4096, source: '' }), /source/);
  await assert.rejects(mountTmpfs('/x', { sizeBytes: 4096, source: SOURCE, mode: 0o10000 }), /mode/);
  await assert.rejects(unmount('relative'), /absolute/);
});

test('the syscalls are used when koffi loads, mount(8) with the reason when it cannot', async () => {
  const chosen = await chooseMountMechanism();
  assert.equal(chosen.mechanism, process.platform === 'linux' ? 'syscall' : 'mount(8)');
  const fallback = await chooseMountMechanism(WITHOUT_KOFFI);
  assert.equal(fallback.mechanism, 'mount(8)');
  assert.equal(fallback.libc, undefined);
  assert.match(fallback.reason ?? '', /cannot load koffi, the C FFI module, on test-platform: no binary/);
});

test('mount(2) and mount(8) make the same mount: source, type, per-mount and tmpfs options', { skip }, async () => {
  const shapes = [];
  for (const [name, options] of [
    ['syscall', {}],
    ['mount8', WITHOUT_KOFFI],
  ] as const) {
    const target = path.join(scratch, `same-${name}`);
    await fs.mkdir(target);
    await mountTmpfs(target, { sizeBytes: SIZE, source: SOURCE, mode: 0o750 }, options);
    const entry = await findMount(target);
    assert.ok(entry, `${name}: mountinfo lists the target`);
    shapes.push({ fsType: entry.fsType, source: entry.source, mountOptions: entry.mountOptions, superOptions: entry.superOptions });
    assert.equal((await fs.stat(target)).mode & 0o7777, 0o750);
    await unmount(target, options);
    assert.equal(await findMount(target), undefined, `${name}: unmounted`);
  }
  assert.deepEqual(shapes[0], shapes[1]);
  assert.deepEqual(shapes[0]?.mountOptions.slice(0, 4), ['rw', 'nosuid', 'nodev', 'noexec']);
});

test('with the syscalls, failures name the call, the errno and what it means', { skip }, async () => {
  const notMounted = path.join(scratch, 'not-mounted-syscall');
  await fs.mkdir(notMounted);
  await assert.rejects(unmount(notMounted), /^Error: unmounting .*not-mounted-syscall failed: umount2\(2\): EINVAL, not mounted/);
  await assert.rejects(
    mountTmpfs(path.join(scratch, 'missing-dir'), { sizeBytes: 4096, source: SOURCE }),
    /^Error: mounting a tmpfs at .*missing-dir failed: mount\(2\) of tmpfs csi\.spire\.io with size=4096,mode=0755,nosuid,nodev,noexec: ENOENT, mount point does not exist$/,
  );
});

test('an unmount of a busy tmpfs fails with "target is busy", by syscall and by umount(8)', { skip }, async () => {
  const target = path.join(scratch, 'busy');
  await fs.mkdir(target);
  await mountTmpfs(target, { sizeBytes: 64 * 1024, source: SOURCE });
  const handle = await fs.open(path.join(target, 'held-open'), 'w');
  try {
    await assert.rejects(unmount(target), /^Error: unmounting .*busy failed: umount2\(2\): EBUSY, target is busy/);
    await assert.rejects(unmount(target, WITHOUT_KOFFI), /^Error: unmounting .*busy failed: `umount .*`.*target is busy/);
    assert.ok(await isMountPoint(target), 'still mounted');
  } finally {
    await handle.close();
  }
  await unmount(target);
  assert.equal(await isMountPoint(target), false);
});

test('unmount never follows a symbolic link at the target', { skip }, async () => {
  const target = path.join(scratch, 'linked-to');
  const link = path.join(scratch, 'link');
  await fs.mkdir(target);
  await fs.symlink(target, link);
  await mountTmpfs(target, { sizeBytes: 64 * 1024, source: SOURCE });
  try {
    await assert.rejects(
      unmount(link),
      /^Error: unmounting .*link failed: umount2\(2\): EINVAL, not mounted \(or a symbolic link, which is never followed\)/,
    );
    assert.ok(await isMountPoint(target), 'the mount the link points at is still there');
    assert.ok((await fs.lstat(link)).isSymbolicLink());
  } finally {
    await unmount(target);
  }
});

test('mount(2) EPERM says that mounting needs CAP_SYS_ADMIN or --tmpfs=false', async () => {
  const { errno } = os.constants;
  const calls: unknown[][] = [];
  const denied: Libc = {
    flock: () => 0,
    mount: (...args) => {
      calls.push(args);
      return errno.EPERM;
    },
    umount2: (...args) => {
      calls.push(args);
      return errno.EPERM;
    },
  };
  const options: TmpfsCallOptions = { loadLibc: () => Promise.resolve(denied) };
  await assert.rejects(
    mountTmpfs('/nowhere/volume', { sizeBytes: 8192, source: SOURCE, mode: 0o700 }, options),
    /^Error: mounting a tmpfs at \/nowhere\/volume failed: mount\(2\) .*: EPERM, permission denied: mounting needs CAP_SYS_ADMIN \(run the driver in a privileged container\) or set --tmpfs=false$/,
  );
  await assert.rejects(unmount('/nowhere/volume', options), /EPERM, permission denied: unmounting needs CAP_SYS_ADMIN/);
  // nosuid|nodev|noexec = 2|4|8; UMOUNT_NOFOLLOW = 8.
  assert.deepEqual(calls, [
    [SOURCE, '/nowhere/volume', 'tmpfs', 14, 'size=8192,mode=0700'],
    ['/nowhere/volume', 8],
  ]);
});

test(
  'VolumeStorage.remove unmounts every stacked tmpfs of ours from one read of the table, and refuses a foreign mount below',
  { skip },
  async () => {
    const storage = new VolumeStorage({
      useTmpfs: true,
      tmpfsSizeBytes: SIZE,
      mountSource: SOURCE,
      kubeletRootDir: scratch,
      logger: new MemoryLog().logger(),
    });
    // A crash between mount and record can leave our tmpfs stacked on itself.
    const stacked = path.join(scratch, 'stacked');
    await storage.prepare(stacked, true);
    await mountTmpfs(stacked, { sizeBytes: SIZE, source: SOURCE, mode: 0o755 });
    await mountTmpfs(stacked, { sizeBytes: SIZE, source: SOURCE, mode: 0o755 });
    assert.equal((await mountsUnder(stacked)).length, 3);
    await storage.remove(stacked);
    assert.deepEqual(await mountsUnder(stacked), [], 'all three unmounted');
    await assert.rejects(fs.lstat(stacked), { code: 'ENOENT' }, 'and the directory removed');

    // Somebody else's mount inside our volume: unmounting ours fails (busy) and nothing is deleted.
    const withForeign = path.join(scratch, 'with-foreign');
    await storage.prepare(withForeign, true);
    const inner = path.join(withForeign, 'inner');
    await fs.mkdir(inner);
    await mountTmpfs(inner, { sizeBytes: SIZE, source: 'someone-else', mode: 0o755 });
    await fs.writeFile(path.join(inner, 'theirs'), 'keep me');
    await assert.rejects(storage.remove(withForeign), /EBUSY/);
    assert.equal(await fs.readFile(path.join(inner, 'theirs'), 'utf8'), 'keep me', 'their file is untouched');
    await unmount(inner);
    await storage.remove(withForeign);
    assert.deepEqual(await mountsUnder(withForeign), []);

    // Somebody else's tmpfs on top of ours: not unmounted, and nothing deleted.
    const coveredByForeign = path.join(scratch, 'covered');
    await storage.prepare(coveredByForeign, true);
    await mountTmpfs(coveredByForeign, { sizeBytes: SIZE, source: 'someone-else', mode: 0o755 });
    await fs.writeFile(path.join(coveredByForeign, 'theirs'), 'keep me');
    await assert.rejects(
      storage.remove(coveredByForeign),
      /refusing to delete .*covered: tmpfs from someone-else at .*covered is mounted there and was not made by this driver \(under it: 1 tmpfs of ours\)/,
    );
    assert.equal(await fs.readFile(path.join(coveredByForeign, 'theirs'), 'utf8'), 'keep me');
    await unmount(coveredByForeign);
    await storage.remove(coveredByForeign);
    assert.deepEqual(await mountsUnder(coveredByForeign), []);
  },
);

test('VolumeStorage.inspect: a missing path is gone, any other failure to look is an error, never "gone"', async () => {
  const storage = new VolumeStorage({
    useTmpfs: false,
    tmpfsSizeBytes: SIZE,
    mountSource: SOURCE,
    kubeletRootDir: scratch,
    logger: new MemoryLog().logger(),
  });
  assert.equal(await storage.inspect(path.join(scratch, 'not-there')), 'gone');
  const file = path.join(scratch, 'a-file');
  await fs.writeFile(file, 'x');
  assert.equal(await storage.inspect(path.join(file, 'below')), 'gone', 'ENOTDIR: nothing can be there');
  // ENAMETOOLONG stands for EACCES and EIO, which root cannot provoke here: the record must stay, so resume reports it.
  await assert.rejects(storage.inspect(path.join(scratch, 'x'.repeat(300))), /cannot inspect target_path .*ENAMETOOLONG/);
});
