import assert from 'node:assert/strict';
import { watch } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { AtomicWriter, digestOfFiles, holdsOnlyWriterFiles, type FileSpec, type WriteResult } from '../../src/fs/atomic-writer.js';
import { mountTmpfs, unmount } from '../../src/fs/tmpfs.js';
import { inlineFs, threadPoolFs, type WriterFs } from '../../src/fs/writer-fs.js';
import { makeScratchDir, removeScratchDir } from '../support/scratch.js';

const VERSION_DIR = /^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.[A-Za-z0-9]+$/;

let scratch: string;
let counter = 0;

before(async () => {
  scratch = await makeScratchDir('atomic-writer');
});

after(async () => {
  await removeScratchDir(scratch);
});

/**
 * Every test runs twice: with node:fs/promises (a plain directory on the
 * node's disk) and with the inline calls a volume's tmpfs uses (writer-fs.ts).
 */
const FLAVOURS: ReadonlyArray<readonly [string, WriterFs]> = [
  ['thread pool', threadPoolFs],
  ['inline', inlineFs],
];
/** The flavour of the running test; node:test runs one file's tests one at a time. */
let writerFs: WriterFs = threadPoolFs;

function newWriter(dir: string): AtomicWriter {
  return new AtomicWriter(dir, { fs: writerFs });
}

type TestBody = (t: TestContext) => Promise<void>;
function writerTest(name: string, ...args: [TestBody] | [{ skip: string | false }, TestBody]): void {
  const [options, body] = args.length === 1 ? [{}, args[0]] : args;
  for (const [label, flavour] of FLAVOURS) {
    test(`${name} [${label}]`, options, async (t) => {
      writerFs = flavour;
      try {
        await body(t);
      } finally {
        writerFs = threadPoolFs;
      }
    });
  }
}

async function freshVolume(): Promise<string> {
  const dir = path.join(scratch, `vol-${++counter}`);
  await fs.mkdir(dir);
  return dir;
}

function svidFiles(generation: number): FileSpec[] {
  return [
    { name: 'svid.pem', data: Buffer.from(`cert gen=${generation}\n`), mode: 0o644 },
    { name: 'svid_key.pem', data: Buffer.from(`key gen=${generation}\n`), mode: 0o600 },
    { name: 'svid_bundle.pem', data: Buffer.from(`bundle gen=${generation}\n`), mode: 0o644 },
  ];
}

async function versionDirs(dir: string): Promise<string[]> {
  return (await fs.readdir(dir)).filter((entry) => VERSION_DIR.test(entry)).sort();
}

/** Every path below `dir` with its type, link target and content, for before/after comparisons. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  async function walk(current: string): Promise<void> {
    for (const entry of await fs.readdir(current, { withFileTypes: true })) {
      const full = path.join(current, entry.name);
      const rel = path.relative(dir, full);
      const stat = await fs.lstat(full);
      if (entry.isSymbolicLink()) out[rel] = `link ${await fs.readlink(full)}`;
      else if (entry.isDirectory()) {
        out[rel] = `dir ${stat.mode.toString(8)} ${stat.ino}`;
        await walk(full);
      } else out[rel] = `file ${stat.mode.toString(8)} ${stat.ino} ${stat.mtimeMs} ${(await fs.readFile(full)).toString('hex')}`;
    }
  }
  await walk(dir);
  return out;
}

writerTest('first write: ..data link, relative visible links, exact modes despite a restrictive umask', async () => {
  const dir = await freshVolume();
  const writer = newWriter(dir);
  assert.equal(await writer.currentVersion(), null);
  assert.equal(await writer.readCurrent('svid.pem'), null);

  const previousUmask = process.umask(0o077);
  let result: WriteResult;
  try {
    result = await writer.write(svidFiles(1));
  } finally {
    process.umask(previousUmask);
  }
  assert.equal(result.changed, true);
  assert.match(result.version, VERSION_DIR);

  const dataLink = await fs.lstat(path.join(dir, '..data'));
  assert.ok(dataLink.isSymbolicLink(), '..data is a symlink');
  assert.equal(await fs.readlink(path.join(dir, '..data')), result.version, '..data is relative, to the version dir');
  assert.equal(await writer.currentVersion(), result.version);

  const versionStat = await fs.stat(path.join(dir, result.version));
  assert.ok(versionStat.isDirectory());
  assert.equal(versionStat.mode & 0o7777, 0o755, 'version dir is 0755 even with umask 077');

  for (const file of svidFiles(1)) {
    const visible = path.join(dir, file.name);
    assert.ok((await fs.lstat(visible)).isSymbolicLink(), `${file.name} is a symlink`);
    assert.equal(await fs.readlink(visible), `..data/${file.name}`, `${file.name} links relatively through ..data`);
    const real = await fs.lstat(path.join(dir, result.version, file.name));
    assert.ok(real.isFile());
    assert.equal(real.mode & 0o7777, file.mode, `${file.name} mode`);
    assert.deepEqual(await fs.readFile(visible), file.data);
    assert.deepEqual(await writer.readCurrent(file.name), file.data);
  }
  assert.deepEqual(
    (await fs.readdir(dir)).sort(),
    ['..data', result.version, 'svid.pem', 'svid_bundle.pem', 'svid_key.pem'].sort(),
    'nothing else at the root',
  );
});

writerTest('changed content: one rename of ..data, old version removed, visible links untouched', async () => {
  const dir = await freshVolume();
  const writer = newWriter(dir);
  const first = await writer.write(svidFiles(1));
  const linkInodes = await Promise.all(svidFiles(1).map(async (f) => (await fs.lstat(path.join(dir, f.name))).ino));

  const events: Array<{ type: string; name: string }> = [];
  const watcher = watch(dir, (type, name) => events.push({ type, name: String(name) }));
  let second: WriteResult;
  try {
    second = await writer.write(svidFiles(2));
    await sleep(100); // inotify events arrive asynchronously
  } finally {
    watcher.close();
  }

  assert.equal(second.changed, true);
  assert.notEqual(second.version, first.version);
  assert.equal(await fs.readlink(path.join(dir, '..data')), second.version);
  assert.deepEqual(await versionDirs(dir), [second.version], 'only the new version dir remains');
  await assert.rejects(fs.stat(path.join(dir, first.version)), { code: 'ENOENT' });
  for (const file of svidFiles(2)) assert.deepEqual(await fs.readFile(path.join(dir, file.name)), file.data);

  const linkInodesAfter = await Promise.all(svidFiles(2).map(async (f) => (await fs.lstat(path.join(dir, f.name))).ino));
  assert.deepEqual(linkInodesAfter, linkInodes, 'visible links are not recreated');
  const touched = new Set(events.map((e) => e.name));
  for (const file of svidFiles(2)) assert.ok(!touched.has(file.name), `no event on the visible name ${file.name}`);
  assert.ok(touched.has('..data'), 'the swap shows up as an event on ..data');
  // The only rename in the root: ..data_tmp moved onto ..data (MOVED_FROM + MOVED_TO).
  const renamed = events.filter((e) => e.type === 'rename').map((e) => e.name);
  assert.ok(!renamed.some((name) => !name.startsWith('..')), `only reserved names change: ${renamed.join(', ')}`);
});

writerTest('identical content writes nothing', async () => {
  const dir = await freshVolume();
  const writer = newWriter(dir);
  const first = await writer.write(svidFiles(1));
  const before = await snapshot(dir);
  await sleep(20); // so a rewrite would show in the mtimes

  const again = await writer.write(svidFiles(1));
  assert.deepEqual(again, { changed: false, version: first.version });
  assert.deepEqual(await snapshot(dir), before, 'inodes, mtimes and links are unchanged');
});

writerTest('a mode change alone is a change', async () => {
  const dir = await freshVolume();
  const writer = newWriter(dir);
  const first = await writer.write(svidFiles(1));
  const files = svidFiles(1).map((f) => (f.name === 'svid_key.pem' ? { ...f, mode: 0o400 } : f));
  const second = await writer.write(files);
  assert.equal(second.changed, true);
  assert.notEqual(second.version, first.version);
  assert.equal((await fs.stat(path.join(dir, 'svid_key.pem'))).mode & 0o7777, 0o400);
});

writerTest('invalid names reject before anything on disk changes', async () => {
  const dir = await freshVolume();
  const writer = newWriter(dir);
  await writer.write(svidFiles(1));
  const before = await snapshot(dir);

  const bad: Array<[string, RegExp]> = [
    ['../escape.pem', /contains "\/"/],
    ['sub/dir.pem', /contains "\/"/],
    ['..data', /starts with "\."/],
    ['.hidden', /starts with "\."/],
    ['', /empty/],
    ['a'.repeat(256), /bytes/],
    ['nul\0.pem', /NUL/],
  ];
  for (const [name, message] of bad) {
    const files = [...svidFiles(2), { name, data: Buffer.from('x'), mode: 0o644 }];
    await assert.rejects(writer.write(files), message, JSON.stringify(name));
  }
  await assert.rejects(writer.write([{ name: 'a.pem', data: Buffer.from('x'), mode: 0o1777 }]), /mode/);
  await assert.rejects(writer.write([{ name: 'a.pem', data: Buffer.from('x'), mode: 0o644 }], { gid: -1 }), /gid/);
  await assert.rejects(writer.readCurrent('../x'), /contains "\/"/);
  assert.deepEqual(await snapshot(dir), before);
});

writerTest('duplicate names are rejected', async () => {
  const dir = await freshVolume();
  const writer = newWriter(dir);
  const files: FileSpec[] = [
    { name: 'tls.crt', data: Buffer.from('one'), mode: 0o644 },
    { name: 'tls.crt', data: Buffer.from('two'), mode: 0o644 },
  ];
  await assert.rejects(writer.write(files), /used twice/);
  assert.deepEqual(await fs.readdir(dir), [], 'nothing was written');
});

writerTest(
  'gid: files are group-owned before the swap and the key can be 0640',
  { skip: process.getuid?.() !== 0 ? 'chown to another group needs root' : false },
  async () => {
    const dir = await freshVolume();
    const writer = newWriter(dir);
    const files = svidFiles(1).map((f) => (f.name === 'svid_key.pem' ? { ...f, mode: 0o640 } : f));
    const first = await writer.write(files, { gid: 4242 });
    for (const file of files) {
      const stat = await fs.stat(path.join(dir, file.name));
      assert.equal(stat.gid, 4242, `${file.name} gid`);
      assert.equal(stat.mode & 0o7777, file.mode, `${file.name} mode`);
    }
    assert.equal((await fs.stat(path.join(dir, 'svid_key.pem'))).mode & 0o7777, 0o640);

    assert.deepEqual(await writer.write(files, { gid: 4242 }), { changed: false, version: first.version }, 'same gid: unchanged');
    const other = await writer.write(files, { gid: 4343 });
    assert.equal(other.changed, true, 'another gid is a change');
    assert.equal((await fs.stat(path.join(dir, 'svid_key.pem'))).gid, 4343);
    const none = await writer.write(files);
    assert.equal(none.changed, true, 'dropping the gid is a change');
    assert.equal((await fs.stat(path.join(dir, 'svid_key.pem'))).gid, process.getegid?.());
  },
);

writerTest('concurrent writes are serialised: the last payload wins and one version dir remains', async () => {
  const dir = await freshVolume();
  const writer = newWriter(dir);
  const pending = Array.from({ length: 20 }, (_, i) => writer.write(svidFiles(i)));
  const results = await Promise.all(pending);
  assert.ok(results.every((r) => r.changed));
  const last = results[results.length - 1];
  assert.ok(last);
  assert.equal(await writer.currentVersion(), last.version);
  for (const file of svidFiles(19)) assert.deepEqual(await fs.readFile(path.join(dir, file.name)), file.data);
  assert.deepEqual(await versionDirs(dir), [last.version]);
  assert.ok(!(await fs.readdir(dir)).includes('..data_tmp'));
});

writerTest('a failed write does not block the ones queued behind it', async () => {
  const dir = await freshVolume();
  const writer = newWriter(dir);
  await writer.write(svidFiles(1));
  // A visible name occupied by a non-empty directory cannot be replaced by a link.
  await fs.mkdir(path.join(dir, 'blocked'));
  await fs.writeFile(path.join(dir, 'blocked', 'x'), 'x');
  const failing = writer.write([...svidFiles(2), { name: 'blocked', data: Buffer.from('b'), mode: 0o644 }]);
  const next = writer.write(svidFiles(3));
  await assert.rejects(failing, /visible link blocked/);
  assert.equal((await next).changed, true);
  assert.deepEqual(await fs.readFile(path.join(dir, 'svid.pem')), Buffer.from('cert gen=3\n'));
});

writerTest('crash leftovers (..data_tmp, orphaned version dirs) are cleaned up', async () => {
  const dir = await freshVolume();
  const writer = newWriter(dir);
  const first = await writer.write(svidFiles(1));
  // As if a previous driver died between mkdtemp and the rename, twice.
  await fs.mkdir(path.join(dir, '..2020_01_01_00_00_00.orphan'));
  await fs.writeFile(path.join(dir, '..2020_01_01_00_00_00.orphan', 'svid_key.pem'), 'stale key');
  await fs.mkdir(path.join(dir, '..2020_01_01_00_00_01.Xy12Zz'));
  await fs.symlink('..2020_01_01_00_00_00.orphan', path.join(dir, '..data_tmp'));

  // The restarted driver's writer knows nothing of earlier writes: even a no-op write clears them.
  const same = await newWriter(dir).write(svidFiles(1));
  assert.deepEqual(same, { changed: false, version: first.version });
  assert.deepEqual((await fs.readdir(dir)).filter((e) => e.startsWith('..')).sort(), ['..data', first.version].sort());

  await fs.mkdir(path.join(dir, '..2020_01_01_00_00_02.again'));
  const second = await newWriter(dir).write(svidFiles(2));
  assert.deepEqual((await fs.readdir(dir)).filter((e) => e.startsWith('..')).sort(), ['..data', second.version].sort());
});

writerTest('a writer trusts its own last write: the next one neither re-reads nor re-checks it, unless ..data changed behind its back', async () => {
  const dir = await freshVolume();
  const writer = newWriter(dir);
  const first = await writer.write(svidFiles(1));
  // Somebody else changes a file of the live version. The only writer of a
  // volume is its driver (the pod's mount is read-only), so the writer does
  // not look: the same payload is "unchanged" without a read.
  await fs.writeFile(path.join(dir, first.version, 'svid.pem'), 'tampered');
  assert.deepEqual(await writer.write(svidFiles(1)), { changed: false, version: first.version });
  // A restarted driver compares with the disk and repairs it.
  const repaired = await newWriter(dir).write(svidFiles(1));
  assert.equal(repaired.changed, true);
  assert.notEqual(repaired.version, first.version);

  // ..data pointing elsewhere than the writer left it: the full path, which compares with the disk.
  const other = newWriter(dir);
  const second = await other.write(svidFiles(2));
  await fs.symlink(second.version, path.join(dir, '..data_tmp'));
  await fs.rename(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
  await fs.mkdir(path.join(dir, '..2020_01_01_00_00_03.stale'));
  const afterSwap = await writer.write(svidFiles(2));
  assert.deepEqual(afterSwap, { changed: false, version: second.version }, 'found equal on disk');
  assert.deepEqual((await fs.readdir(dir)).filter((e) => e.startsWith('..')).sort(), ['..data', second.version].sort(), 'leftovers cleared');
});

writerTest('the old version of its own write goes by its known names; anything else in it, or a link in its place, goes the rm -rf way', async () => {
  const dir = await freshVolume();
  const treeRemovals: string[] = [];
  const writer = new AtomicWriter(dir, {
    fs: { ...writerFs, removeTree: async (target) => (treeRemovals.push(path.basename(target)), writerFs.removeTree(target)) },
  });
  const outside = path.join(scratch, `outside-${++counter}`);
  await fs.mkdir(outside);
  await fs.writeFile(path.join(outside, 'svid.pem'), 'not ours');

  // The plain case: the old version and nothing else goes.
  const first = await writer.write(svidFiles(1));
  const second = await writer.write(svidFiles(2));
  assert.deepEqual(await versionDirs(dir), [second.version]);
  assert.deepEqual(treeRemovals, [], 'no rm -rf for a version the writer knows');

  // A file nobody asked for in the live version: rmdir fails, rm -rf takes it all.
  await fs.writeFile(path.join(dir, second.version, 'extra'), 'x');
  const third = await writer.write(svidFiles(3));
  assert.deepEqual(await versionDirs(dir), [third.version], 'the extra file did not keep the old version alive');
  assert.deepEqual(treeRemovals, [second.version]);

  // A name already gone: the rest still goes.
  await fs.unlink(path.join(dir, third.version, 'svid_key.pem'));
  const fourth = await writer.write(svidFiles(4));
  assert.deepEqual(await versionDirs(dir), [fourth.version]);

  // The live version replaced by a link out of the volume (..data still names
  // it): the link goes, and nothing is deleted through it.
  await fs.rename(path.join(dir, fourth.version), path.join(dir, '..moved'));
  await fs.symlink(outside, path.join(dir, fourth.version));
  await writer.write(svidFiles(5));
  assert.equal(await fs.readFile(path.join(outside, 'svid.pem'), 'utf8'), 'not ours', 'never unlinks through a link');
  await assert.rejects(fs.lstat(path.join(dir, fourth.version)), { code: 'ENOENT' });
  assert.notEqual(first.version, second.version);
});

writerTest('a missing visible link is restored even when the content is unchanged (kubernetes#121472)', async () => {
  const dir = await freshVolume();
  const writer = newWriter(dir);
  const first = await writer.write(svidFiles(1));
  await fs.unlink(path.join(dir, 'svid_key.pem'));
  // A wrong link (or a plain file) is repaired too.
  await fs.unlink(path.join(dir, 'svid.pem'));
  await fs.symlink(first.version + '/svid.pem', path.join(dir, 'svid.pem'));

  // As the restarted driver finds them after a crash between the swap and the links.
  const again = await newWriter(dir).write(svidFiles(1));
  assert.equal(again.changed, false);
  assert.equal(await fs.readlink(path.join(dir, 'svid_key.pem')), '..data/svid_key.pem');
  assert.equal(await fs.readlink(path.join(dir, 'svid.pem')), '..data/svid.pem');
});

writerTest('a name that leaves the payload loses its visible link', async () => {
  const dir = await freshVolume();
  const writer = newWriter(dir);
  await writer.write(svidFiles(1));
  const smaller = svidFiles(2).filter((f) => f.name !== 'svid_bundle.pem');
  const result = await writer.write(smaller);
  assert.equal(result.changed, true);
  await assert.rejects(fs.lstat(path.join(dir, 'svid_bundle.pem')), { code: 'ENOENT' });
  assert.deepEqual((await fs.readdir(path.join(dir, result.version))).sort(), ['svid.pem', 'svid_key.pem']);
  assert.deepEqual((await fs.readdir(dir)).filter((e) => !e.startsWith('.')).sort(), ['svid.pem', 'svid_key.pem']);

  // Renaming a file is a removal plus an addition.
  const renamed = smaller.map((f) => (f.name === 'svid.pem' ? { ...f, name: 'tls.crt' } : f));
  await writer.write(renamed);
  assert.deepEqual((await fs.readdir(dir)).filter((e) => !e.startsWith('.')).sort(), ['svid_key.pem', 'tls.crt']);
});

writerTest('a missing target directory is a clear error', async () => {
  const writer = newWriter(path.join(scratch, 'does-not-exist'));
  await assert.rejects(writer.write(svidFiles(1)), /checking the volume directory failed: .*ENOENT/);
  assert.throws(() => new AtomicWriter('relative/dir'), /absolute/);
});

writerTest('holdsOnlyWriterFiles recognises a volume this writer made, and nothing else', async () => {
  const written = await freshVolume();
  await newWriter(written).write(svidFiles(1));
  assert.equal(await holdsOnlyWriterFiles(written), true, 'a written volume');

  // A crash before the first ..data rename leaves only a version directory.
  const halfWritten = await freshVolume();
  await fs.mkdir(path.join(halfWritten, '..2026_01_01_00_00_00.123'));
  assert.equal(await holdsOnlyWriterFiles(halfWritten), true, 'a half-written first version');

  const empty = await freshVolume();
  assert.equal(await holdsOnlyWriterFiles(empty), false, 'an empty directory holds no volume');
  assert.equal(await holdsOnlyWriterFiles(path.join(scratch, 'missing')), false, 'nor does a missing one');

  const extraFile = await freshVolume();
  await newWriter(extraFile).write(svidFiles(1));
  await fs.writeFile(path.join(extraFile, 'notes.txt'), 'not ours');
  assert.equal(await holdsOnlyWriterFiles(extraFile), false, 'a file the writer never makes');

  const strayLink = await freshVolume();
  await newWriter(strayLink).write(svidFiles(1));
  await fs.symlink('/etc/passwd', path.join(strayLink, 'passwd'));
  assert.equal(await holdsOnlyWriterFiles(strayLink), false, 'a link that does not point into ..data');

  const foreignData = await freshVolume();
  await fs.symlink('/etc', path.join(foreignData, '..data'));
  assert.equal(await holdsOnlyWriterFiles(foreignData), false, 'a ..data link to somewhere else');

  const otherDir = await freshVolume();
  await fs.mkdir(path.join(otherDir, 'subdir'));
  assert.equal(await holdsOnlyWriterFiles(otherDir), false, 'a directory that is not a version');
});

writerTest('holds: true only for exactly the current version with every visible link, and never writes', async () => {
  const dir = await freshVolume();
  const writer = newWriter(dir);
  assert.equal(await writer.holds(svidFiles(1)), false, 'nothing written yet');
  const first = await writer.write(svidFiles(1));
  assert.equal(await writer.holds(svidFiles(1)), true);
  assert.equal(await writer.holds(svidFiles(2)), false, 'other content');
  assert.equal(await writer.holds(svidFiles(1).map((f) => ({ ...f, mode: 0o640 }))), false, 'other modes');
  assert.equal(await writer.holds(svidFiles(1).slice(0, 2)), false, 'fewer files');
  assert.equal(await writer.holds(svidFiles(1), { gid: 4242 }), false, 'another group');
  await fs.unlink(path.join(dir, 'svid_key.pem'));
  assert.equal(await writer.holds(svidFiles(1)), false, 'a visible link missing');
  await fs.symlink('..data/svid_key.pem', path.join(dir, 'svid_key.pem'));
  await fs.symlink('..data/gone.pem', path.join(dir, 'gone.pem'));
  assert.equal(await writer.holds(svidFiles(1)), false, 'a visible name too many');
  await fs.unlink(path.join(dir, 'gone.pem'));
  assert.equal(await writer.holds(svidFiles(1)), true);
  assert.equal(await writer.currentVersion(), first.version, 'holds never wrote');
});

writerTest(
  'an old version that could not be removed is not forgotten: the next write takes the full path and removes it',
  { skip: process.getuid?.() !== 0 ? 'a busy directory needs a mount, which needs root' : false },
  async () => {
    const dir = await freshVolume();
    const first = await newWriter(dir).write(svidFiles(1));
    // Something mounted inside the old version makes its removal fail (EBUSY).
    const busy = path.join(dir, first.version, 'busy');
    await fs.mkdir(busy);
    await mountTmpfs(busy, { sizeBytes: 65536, source: 'atomic-writer-test', mode: 0o755 });
    const writer = newWriter(dir); // a restarted driver: the full path
    let second;
    try {
      second = await writer.write(svidFiles(2));
      assert.ok((await fs.readdir(dir)).includes(first.version), 'the old version is still there');
    } finally {
      await unmount(busy);
    }
    const third = await writer.write(svidFiles(3));
    assert.deepEqual(
      (await fs.readdir(dir)).filter((e) => e.startsWith('..')).sort(),
      ['..data', third.version].sort(),
      `the old versions (${first.version}, ${second.version}) are gone`,
    );
  },
);

test('digestOfFiles: equal for equal files, different when any name, mode, byte, order or group differs', () => {
  const files: FileSpec[] = [
    { name: 'svid.pem', data: Buffer.from('cert'), mode: 0o644 },
    { name: 'svid_key.pem', data: Buffer.from('key'), mode: 0o600 },
  ];
  const digest = digestOfFiles(files);
  assert.match(digest, /^[0-9a-f]{64}$/);
  assert.equal(digestOfFiles(files.map((f) => ({ ...f, data: Buffer.from(f.data) }))), digest, 'the bytes count, not the buffers');
  const variants: FileSpec[][] = [
    [{ ...files[0]!, name: 'svid.crt' }, files[1]!],
    [{ ...files[0]!, mode: 0o640 }, files[1]!],
    [{ ...files[0]!, data: Buffer.from('cerT') }, files[1]!],
    [files[1]!, files[0]!],
    [files[0]!],
    // Bytes moved from a name into the data, or from one file's data into the next name, hash apart.
    [{ name: 'svid.pe', data: Buffer.from('mcert'), mode: 0o644 }, files[1]!],
    [
      { ...files[0]!, data: Buffer.from('cert"') },
      { ...files[1]!, name: 'svid_key.pem' },
    ],
    [{ name: 'a', data: Buffer.from('" 644 0\n"b'), mode: 0o644 }],
  ];
  const digests = new Set([digest, ...variants.map((v) => digestOfFiles(v))]);
  assert.equal(digests.size, variants.length + 1);
  assert.notEqual(digestOfFiles(files, 0), digest, 'a group is part of the digest');
  assert.notEqual(digestOfFiles(files, 0), digestOfFiles(files, 1));
});
