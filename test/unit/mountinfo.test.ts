import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  SharedRead,
  escapeMountPath,
  findMount,
  isMountPoint,
  mountsUnder,
  parseMountInfo,
  readMountInfo,
  topmostMount,
} from '../../src/fs/mountinfo.js';
import { mountTmpfs, unmount } from '../../src/fs/tmpfs.js';
import { runningAsRoot } from '../support/driver-harness.js';
import { makeScratchDir, removeScratchDir } from '../support/scratch.js';

const KUBELET_POD = '/var/lib/kubelet/pods/0b6c1d1e-8f51-4c5e-9a57-2d0c4f1b2a3c/volumes/kubernetes.io~csi';

// Shaped like a node's mountinfo: root, proc, a tmpfs per volume (ours, with
// our driver name as the source), a bind mount with a sub-path root, a path
// with an escaped space, tab, newline and backslash, two mounts stacked on one
// path, and a file system with an empty source field.
const FIXTURE = [
  '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard',
  '23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw',
  `101 22 0:55 / ${KUBELET_POD}/svid/mount rw,nosuid,nodev,noexec,relatime shared:80 - tmpfs csi.spire.io rw,size=1024k,mode=755,inode64`,
  `102 22 254:0 /var/lib/spire-csi/data/vol-1 ${KUBELET_POD}/bound/mount ro,relatime shared:1 master:7 - ext4 /dev/vda rw,discard`,
  '103 22 0:56 / /mnt/with\\040space\\011tab\\012newline\\134backslash rw,relatime - tmpfs my\\040source rw',
  '104 22 0:57 / /mnt/stacked rw,relatime - tmpfs first rw,size=4k',
  '105 104 0:58 / /mnt/stacked rw,relatime - tmpfs second rw,size=8k',
  '106 22 0:59 / /mnt/nosource rw,relatime - weirdfs  rw',
  '',
].join('\n');

test('parses the fields of every line', () => {
  const entries = parseMountInfo(FIXTURE);
  assert.equal(entries.length, 8);

  const root = entries[0];
  assert.deepEqual(root, {
    mountId: 22,
    parentId: 1,
    majorMinor: '254:0',
    root: '/',
    mountPoint: '/',
    mountOptions: ['rw', 'relatime'],
    optionalFields: ['shared:1'],
    fsType: 'ext4',
    source: '/dev/vda',
    superOptions: ['rw', 'discard'],
  });

  const tmpfs = entries[2];
  assert.ok(tmpfs);
  assert.equal(tmpfs.mountPoint, `${KUBELET_POD}/svid/mount`);
  assert.equal(tmpfs.fsType, 'tmpfs');
  assert.equal(tmpfs.source, 'csi.spire.io');
  assert.deepEqual(tmpfs.mountOptions, ['rw', 'nosuid', 'nodev', 'noexec', 'relatime']);
  assert.deepEqual(tmpfs.superOptions, ['rw', 'size=1024k', 'mode=755', 'inode64']);
});

test('bind mounts keep their sub-path root and several optional fields', () => {
  const bind = parseMountInfo(FIXTURE)[3];
  assert.ok(bind);
  assert.equal(bind.root, '/var/lib/spire-csi/data/vol-1');
  assert.equal(bind.mountPoint, `${KUBELET_POD}/bound/mount`);
  assert.deepEqual(bind.optionalFields, ['shared:1', 'master:7']);
  assert.deepEqual(bind.mountOptions, ['ro', 'relatime']);
});

test('octal escapes are decoded', () => {
  const escaped = parseMountInfo(FIXTURE)[4];
  assert.ok(escaped);
  assert.equal(escaped.mountPoint, '/mnt/with space\ttab\nnewline\\backslash');
  assert.equal(escaped.source, 'my source');
  assert.deepEqual(escaped.optionalFields, []);
});

test('an empty field is kept in place instead of shifting the others', () => {
  const odd = parseMountInfo(FIXTURE)[7];
  assert.ok(odd);
  assert.equal(odd.fsType, 'weirdfs');
  assert.equal(odd.source, '');
  assert.deepEqual(odd.superOptions, ['rw']);
});

test('the topmost of stacked mounts is the one nothing else sits on', () => {
  const entries = parseMountInfo(FIXTURE).filter((e) => e.mountPoint === '/mnt/stacked');
  assert.equal(topmostMount(entries)?.source, 'second');
  assert.equal(topmostMount([...entries].reverse())?.source, 'second', 'order in the file does not matter');
  assert.equal(topmostMount([]), undefined);
});

test('malformed lines are rejected with the line number', () => {
  assert.throws(() => parseMountInfo('22 1 254:0 / / rw,relatime shared:1 ext4 /dev/vda rw'), /mountinfo line 1/);
  assert.throws(() => parseMountInfo('ok\nx y 0:1 / /a rw - tmpfs t rw'), /line 1/);
  assert.throws(() => parseMountInfo(`${FIXTURE}\nx y 0:1 / /a rw - tmpfs t rw`), /line 10.*non-numeric/);
});

test('escapeMountPath writes a path as the kernel does, so the cheap line filter finds it', () => {
  const odd = '/mnt/with space\ttab\nnewline\\backslash';
  assert.equal(escapeMountPath(odd), '/mnt/with\\040space\\011tab\\012newline\\134backslash');
  const needle = ` ${escapeMountPath(odd)}`;
  const kept = parseMountInfo(FIXTURE, (line) => line.includes(needle));
  assert.deepEqual(
    kept.map((e) => e.mountPoint),
    [odd],
  );
  // A filtered parse returns the same entries as a full parse, filtered afterwards.
  const stacked = parseMountInfo(FIXTURE, (line) => line.includes(' /mnt/stacked'));
  assert.deepEqual(
    stacked,
    parseMountInfo(FIXTURE).filter((e) => e.mountPoint === '/mnt/stacked'),
  );
});

test("reads this process's real mountinfo", async () => {
  const entries = await readMountInfo();
  assert.ok(entries.some((e) => e.mountPoint === '/'));
  const proc = entries.find((e) => e.mountPoint === '/proc');
  assert.equal(proc?.fsType, 'proc');
});

let scratch: string;
before(async () => {
  scratch = await makeScratchDir('mountinfo');
});
after(async () => {
  await removeScratchDir(scratch);
});

test('isMountPoint: /proc is one, a plain directory is not', async () => {
  assert.equal(await isMountPoint('/proc'), true);
  assert.equal(await isMountPoint('/proc/'), true, 'a trailing slash is normalised away');
  assert.equal(await isMountPoint('/proc/../proc'), true);
  const plain = path.join(scratch, 'plain');
  await fs.mkdir(plain);
  assert.equal(await isMountPoint(plain), false);
  assert.equal(await isMountPoint(path.join(scratch, 'missing')), false);
});

test('findMount and mountsUnder on the real table', async () => {
  assert.equal((await findMount('/proc'))?.fsType, 'proc');
  assert.equal(await findMount(path.join(scratch, 'plain')), undefined);
  const underProc = await mountsUnder('/proc');
  assert.ok(underProc.length >= 1);
  assert.ok(underProc.every((e) => e.mountPoint === '/proc' || e.mountPoint.startsWith('/proc/')));
  const everything = await mountsUnder('/');
  assert.equal(everything.length, (await readMountInfo()).length);
});

test('a symlink above the target is resolved as mountinfo shows it; a symlink at the target is never followed', async () => {
  // A kubelet root directory moved to another disk and linked back looks like this.
  const linkedRoot = path.join(scratch, 'root-link');
  await fs.symlink('/', linkedRoot);
  const procViaLink = path.join(linkedRoot, 'proc');
  assert.equal(await isMountPoint(procViaLink), true);
  assert.equal((await findMount(procViaLink))?.fsType, 'proc');
  assert.ok((await mountsUnder(procViaLink)).some((e) => e.mountPoint === '/proc'));

  // mount(8) resolves a link at its target, so a link is never itself a mount
  // point; treating it as the mount it points to would unmount or delete that.
  const procAlias = path.join(scratch, 'proc-alias');
  await fs.symlink('/proc', procAlias);
  assert.equal(await isMountPoint(procAlias), false);
  assert.equal(await findMount(procAlias), undefined);
  assert.deepEqual(await mountsUnder(procAlias), []);

  assert.equal(await isMountPoint(path.join(scratch, 'missing', 'mount')), false, 'a missing parent holds no mounts');
});

test(
  'a tmpfs at a path with a space, a tab and a backslash is found; a sibling sharing its name as a prefix is not',
  { skip: !runningAsRoot() && 'mounting needs root' },
  async () => {
    const odd = path.join(scratch, 'odd dir\twith\\backslash');
    const sibling = `${odd}-sibling`;
    await fs.mkdir(odd);
    await fs.mkdir(sibling);
    await mountTmpfs(odd, { sizeBytes: 65536, source: 'mountinfo-test', mode: 0o755 });
    await mountTmpfs(sibling, { sizeBytes: 65536, source: 'mountinfo-test', mode: 0o755 });
    try {
      assert.equal((await findMount(odd))?.source, 'mountinfo-test');
      assert.equal(await isMountPoint(odd), true);
      assert.deepEqual(
        (await mountsUnder(odd)).map((e) => e.mountPoint),
        [odd],
      );
      assert.deepEqual((await mountsUnder(scratch)).map((e) => e.mountPoint).sort(), [odd, sibling].sort());
    } finally {
      await unmount(sibling);
      await unmount(odd);
    }
    assert.equal(await findMount(odd), undefined);
  },
);

test('SharedRead: callers arriving during a read share the next one, which starts after they asked', async () => {
  const started: number[] = [];
  const finishers: Array<() => void> = [];
  let reads = 0;
  const shared = new SharedRead(
    () =>
      new Promise<number>((resolve) => {
        const n = ++reads;
        started.push(n);
        finishers.push(() => resolve(n));
      }),
  );
  const first = shared.get();
  assert.equal(reads, 1);
  // Nine callers arrive while read 1 is in flight: none may get read 1.
  const waiting = Array.from({ length: 9 }, () => shared.get());
  assert.equal(reads, 1, 'the next read waits for the one in flight');
  finishers[0]?.();
  assert.equal(await first, 1);
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(reads, 2, 'one more read for all nine');
  // A caller arriving during read 2 gets read 3, not read 2.
  const late = shared.get();
  finishers[1]?.();
  assert.deepEqual(await Promise.all(waiting), Array(9).fill(2));
  await new Promise((resolve) => setImmediate(resolve));
  finishers[2]?.();
  assert.equal(await late, 3);
  assert.deepEqual(started, [1, 2, 3]);
  // Idle again: the next caller starts a read at once.
  const again = shared.get();
  assert.equal(reads, 4);
  finishers[3]?.();
  assert.equal(await again, 4);
});

test('SharedRead: a failed read fails its callers only; the next read goes ahead', async () => {
  let reads = 0;
  let fail: (err: Error) => void = () => undefined;
  const shared = new SharedRead(
    () =>
      new Promise<number>((resolve, reject) => {
        reads++;
        if (reads === 1) fail = reject;
        else resolve(reads);
      }),
  );
  const first = shared.get();
  const second = shared.get();
  fail(new Error('EMFILE'));
  await assert.rejects(first, /EMFILE/);
  assert.equal(await second, 2);
});
