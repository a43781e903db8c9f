import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { findMount, isMountPoint, mountsUnder } from '../../src/fs/mountinfo.js';
import { isOurTmpfs, mountTmpfs, unmount } from '../../src/fs/tmpfs.js';
import { makeScratchDir, removeScratchDir } from '../support/scratch.js';

const SOURCE = 'csi.spire.io';
const SIZE = 1024 * 1024;
const isRoot = process.getuid?.() === 0;
const skip = isRoot ? false : 'mounting a tmpfs needs root (run as root to exercise src/fs/tmpfs.ts)';

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

test("failures say what failed and include the command's stderr", { skip }, async () => {
  const notMounted = path.join(scratch, 'not-mounted');
  await fs.mkdir(notMounted);
  await assert.rejects(unmount(notMounted), (err: Error) => {
    assert.match(err.message, /^unmounting .*not-mounted failed: `umount .*` exited with status \d+: \S/);
    assert.match(err.message, /not mounted/);
    return true;
  });
  await assert.rejects(
    mountTmpfs(path.join(scratch, 'missing-dir'), { sizeBytes: 4096, source: SOURCE }),
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
