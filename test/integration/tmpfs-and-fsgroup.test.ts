/**
 * docs/design.md invariant 8 on a real node: each volume is its own size-limited
 * nosuid,nodev,noexec tmpfs, key files are 0600 — or 0640 and group-owned when
 * the pod has an fsGroup (volume_mount_group) or the fs-group attribute.
 * Needs root; CI runs as root and fails rather than skip.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { LibcUnavailableError } from '../../src/fs/libc.js';
import { findMount, mountsUnder } from '../../src/fs/mountinfo.js';
import { mountTmpfs, unmount } from '../../src/fs/tmpfs.js';
import { Harness, eventually, runningAsRoot } from '../support/driver-harness.js';
import { assertValidSvidVolume, pathExists, readVolume } from '../support/volume-assertions.js';

const execFileAsync = promisify(execFile);
const skip = !runningAsRoot() && !process.env['CI'] ? 'needs root to mount tmpfs and chown (CI runs it as root)' : false;

describe('per-volume tmpfs, modes and fsGroup (root)', { skip }, () => {
  let h: Harness;
  before(async () => {
    assert.ok(runningAsRoot(), 'these tests must run as root in CI');
    h = await Harness.start({ useTmpfs: true });
  });
  after(async () => {
    await h.close();
  });

  async function statFiles(targetPath: string, names: string[]): Promise<{ mode: number; gid: number }[]> {
    return Promise.all(
      names.map(async (name) => {
        const stat = await fs.stat(path.join(targetPath, name));
        return { mode: stat.mode & 0o777, gid: stat.gid };
      }),
    );
  }

  it('mounts a size-limited nosuid,nodev,noexec tmpfs at the target path and unmounts it on unpublish', async () => {
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/tmpfs', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod);
    const mount = await findMount(volume.targetPath);
    assert.ok(mount, 'a mount at the target path');
    assert.equal(mount.fsType, 'tmpfs');
    assert.equal(mount.source, 'csi.spire.io');
    for (const option of ['nosuid', 'nodev', 'noexec'])
      assert.ok(mount.mountOptions.includes(option), `${option} in ${mount.mountOptions.join(',')}`);
    assert.ok(mount.superOptions.includes('size=1024k'), `size limit in ${mount.superOptions.join(',')}`);
    await assertValidSvidVolume(volume.targetPath, 'spiffe://example.org/tmpfs');
    assert.deepEqual(await statFiles(volume.targetPath, ['svid.pem', 'svid_key.pem', 'svid_bundle.pem']), [
      { mode: 0o644, gid: 0 },
      { mode: 0o600, gid: 0 },
      { mode: 0o644, gid: 0 },
    ]);
    // A second publish of the live volume mounts nothing again (spiffe-csi#331).
    await h.kubelet.publish(pod);
    assert.equal((await mountsUnder(volume.targetPath)).length, 1);
    await h.kubelet.unpublish(volume);
    assert.equal((await mountsUnder(volume.targetPath)).length, 0);
    assert.equal(await pathExists(volume.targetPath), false);
  });

  it("chowns to the pod's fsGroup (volume_mount_group) before the swap and makes the key 0640", async () => {
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/fsgroup', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod, { fsGroup: 2345 });
    assert.deepEqual(await statFiles(volume.targetPath, ['svid.pem', 'svid_key.pem', 'svid_bundle.pem']), [
      { mode: 0o644, gid: 2345 },
      { mode: 0o640, gid: 2345 },
      { mode: 0o644, gid: 2345 },
    ]);
    await h.kubelet.unpublish(volume);
  });

  it('the csi.spire.io/fs-group attribute and custom file names apply', async () => {
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/named', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const names = { cert: 'tls.crt', key: 'tls.key', bundle: 'ca.crt' };
    const volume = await h.kubelet.publish(pod, {
      fsGroup: 1000,
      attributes: {
        'csi.spire.io/fs-group': '3456',
        'csi.spire.io/cert-file': names.cert,
        'csi.spire.io/key-file': names.key,
        'csi.spire.io/bundle-file': names.bundle,
      },
    });
    await assertValidSvidVolume(volume.targetPath, 'spiffe://example.org/named', names);
    assert.deepEqual(await statFiles(volume.targetPath, ['tls.crt', 'tls.key', 'ca.crt']), [
      { mode: 0o644, gid: 3456 },
      { mode: 0o640, gid: 3456 },
      { mode: 0o644, gid: 3456 },
    ]);
    assert.deepEqual((await fs.readdir(volume.targetPath)).filter((n) => !n.startsWith('..')).sort(), ['ca.crt', 'tls.crt', 'tls.key']);
    await h.kubelet.unpublish(volume);
  });

  it('unpublish cleans up a volume whose resume failed (its record stays until then)', async () => {
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/resume-fails', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod);
    await h.stopDriver();
    // Make the resume fail: the tmpfs is gone and the directory left behind has a ..data that is not our link,
    // so the driver cannot tell which version is current.
    await umountAll(volume.targetPath);
    await fs.rm(volume.targetPath, { recursive: true });
    await fs.mkdir(volume.targetPath);
    await fs.writeFile(path.join(volume.targetPath, '..data'), 'not a link');
    await h.startDriver();
    assert.equal(h.driver?.volumes.volumeCount, 0);
    assert.match(h.logs.text(), /could not resume a volume/);
    assert.ok(await pathExists(path.join(h.config.stateDir, 'volumes', `${volume.volumeId}.json`)), 'record kept for a later cleanup');
    await h.kubelet.unpublish(volume);
    assert.equal(await pathExists(volume.targetPath), false);
    assert.equal(await pathExists(path.join(h.config.stateDir, 'volumes', `${volume.volumeId}.json`)), false);
  });
  it('a failed unpublish leaves no half-dead volume: a publish in between starts afresh, a retried unpublish cleans up', async () => {
    const pod = h.kubelet.createPod();
    const entryId = await h.agent.addEntry({ spiffeId: 'spiffe://example.org/stuck', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod);
    const streams = h.agent.openSvidStreams();
    // A mount that is not ours below the target path makes the driver refuse to delete it.
    const foreign = path.join(volume.targetPath, await fs.readlink(path.join(volume.targetPath, '..data')), 'foreign');
    await fs.mkdir(foreign);
    await mountTmpfs(foreign, { sizeBytes: 65536, source: 'someone-else' });
    await assert.rejects(h.kubelet.unpublish(volume), /INTERNAL: unmounting .* target is busy/);
    await h.agent.waitForSvidStreams(streams - 1, 3000);
    // kubelet publishes again: a live volume with a stream, not an OK for a dead one.
    await h.kubelet.publish(pod);
    await h.agent.waitForSvidStreams(streams, 3000);
    const before = await readVolume(volume.targetPath);
    await h.agent.rotateSvids(entryId);
    await eventually('rotation', async () => (await readVolume(volume.targetPath)).leaf.serialNumber !== before.leaf.serialNumber);
    await unmount(foreign);
    await h.kubelet.unpublish(volume);
    assert.equal(await pathExists(volume.targetPath), false);
  });
});

async function umountAll(target: string): Promise<void> {
  while ((await mountsUnder(target)).length > 0) await unmount(target);
}

describe('how the tmpfs is mounted: mount(2), or mount(8) when koffi cannot load (root)', { skip }, () => {
  function startLine(h: Harness): Record<string, unknown> | undefined {
    return h.logs.entries().find((line) => line['msg'] === 'spire-csi-driver started');
  }

  async function publishAndUnpublish(h: Harness, name: string): Promise<void> {
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({ spiffeId: `spiffe://example.org/${name}`, selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod);
    const mount = await findMount(volume.targetPath);
    assert.ok(mount, 'a mount at the target path');
    assert.equal(mount.fsType, 'tmpfs');
    assert.equal(mount.source, 'csi.spire.io');
    assert.deepEqual(mount.mountOptions.slice(0, 4), ['rw', 'nosuid', 'nodev', 'noexec']);
    assert.ok(mount.superOptions.includes('size=1024k'), `size limit in ${mount.superOptions.join(',')}`);
    assert.ok(mount.superOptions.includes('mode=755'), `mode in ${mount.superOptions.join(',')}`);
    await assertValidSvidVolume(volume.targetPath, `spiffe://example.org/${name}`);
    await h.kubelet.unpublish(volume);
    assert.equal(await findMount(volume.targetPath), undefined);
    assert.equal(await pathExists(volume.targetPath), false);
  }

  it('with koffi: the syscalls, said in the start-up line, and no warning', async () => {
    const h = await Harness.start({ useTmpfs: true });
    try {
      assert.equal(startLine(h)?.['mount'], 'syscall');
      assert.doesNotMatch(h.logs.text(), /mounting the per-volume tmpfs with mount\(8\)/);
      await publishAndUnpublish(h, 'by-syscall');
    } finally {
      await h.close();
    }
  });

  it('without koffi: mount(8) and umount(8), said in the start-up line and in a warning with the reason', async () => {
    const h = await Harness.start({
      useTmpfs: true,
      loadLibcForMounts: () => Promise.reject(new LibcUnavailableError('cannot load koffi, the C FFI module, on test-platform: no binary')),
    });
    try {
      assert.equal(startLine(h)?.['mount'], 'mount(8)');
      const warning = h.logs.entries().find((line) => String(line['msg']).startsWith('mounting the per-volume tmpfs with mount(8)'));
      assert.ok(warning, 'warned');
      assert.equal(warning['level'], 'warn');
      assert.match(String(warning['reason']), /cannot load koffi, the C FFI module, on test-platform: no binary/);
      await publishAndUnpublish(h, 'by-mount8');
    } finally {
      await h.close();
    }
  });
});

/**
 * What a container user sees, in both storage modes: the volume root must be
 * enterable by any user (as a tmpfs root is, 0755), and the key's own mode and
 * group decide who reads it. The driver runs with umask 077 here, so a mode
 * that only mkdir(2) applied would not survive.
 */
for (const useTmpfs of [true, false]) {
  const mode = useTmpfs ? 'per-volume tmpfs' : 'plain directory (--tmpfs=false)';
  describe(`a non-root container user reads the volume: ${mode} (root)`, { skip }, () => {
    const USER = 4321;
    const FS_GROUP = 2345;
    let h: Harness;
    let views: string;
    let umask: number;
    before(async () => {
      assert.ok(runningAsRoot(), 'these tests must run as root in CI');
      umask = process.umask(0o077);
      h = await Harness.start({ useTmpfs });
      // Outside the scratch directory, whose ancestors (a home directory) a
      // non-root user may not traverse; a container sees the volume through a
      // bind mount at a path of its own in just the same way.
      views = await fs.mkdtemp(path.join(os.tmpdir(), 'spire-csi-views-'));
      await fs.chmod(views, 0o755);
    });
    after(async () => {
      for (const mount of (await mountsUnder(views)).reverse()) await unmount(mount.mountPoint);
      await fs.rm(views, { recursive: true, force: true });
      await h.close();
      process.umask(umask);
    });

    /** Bind-mounts the target path as the container runtime does, runs `fn`, then unmounts. */
    async function asContainer(targetPath: string, fn: (view: string) => Promise<void>): Promise<void> {
      const view = await fs.mkdtemp(path.join(views, 'pod-'));
      await execFileAsync('mount', ['--bind', targetPath, view]);
      try {
        await fn(view);
      } finally {
        await unmount(view);
      }
    }

    it('the volume root is 0755 and owned by the driver, like a tmpfs root', async () => {
      const pod = h.kubelet.createPod();
      await h.agent.addEntry({ spiffeId: 'spiffe://example.org/root-mode', selectors: [`k8s:pod-uid:${pod.uid}`] });
      const volume = await h.kubelet.publish(pod, { fsGroup: FS_GROUP });
      const stat = await fs.stat(volume.targetPath);
      assert.deepEqual(
        { mode: stat.mode & 0o7777, uid: stat.uid, gid: stat.gid },
        { mode: 0o755, uid: process.geteuid?.(), gid: process.getegid?.() },
      );
      await h.kubelet.unpublish(volume);
    });

    it('a user in the fsGroup reads the key, the certificate and the bundle', async () => {
      const pod = h.kubelet.createPod();
      await h.agent.addEntry({ spiffeId: 'spiffe://example.org/fsgroup-reader', selectors: [`k8s:pod-uid:${pod.uid}`] });
      const volume = await h.kubelet.publish(pod, { fsGroup: FS_GROUP });
      await asContainer(volume.targetPath, async (view) => {
        const user = { uid: USER, gid: FS_GROUP };
        assert.match(await readAs(user, path.join(view, 'svid_key.pem')), /^-----BEGIN PRIVATE KEY-----/);
        assert.match(await readAs(user, path.join(view, 'svid.pem')), /^-----BEGIN CERTIFICATE-----/);
        assert.match(await readAs(user, path.join(view, 'svid_bundle.pem')), /^-----BEGIN CERTIFICATE-----/);
      });
      await h.kubelet.unpublish(volume);
    });

    it('without an fsGroup a non-root user reads the certificate and the bundle but not the key', async () => {
      const pod = h.kubelet.createPod();
      await h.agent.addEntry({ spiffeId: 'spiffe://example.org/no-fsgroup-reader', selectors: [`k8s:pod-uid:${pod.uid}`] });
      const volume = await h.kubelet.publish(pod);
      await asContainer(volume.targetPath, async (view) => {
        const user = { uid: USER, gid: USER };
        assert.match(await readAs(user, path.join(view, 'svid.pem')), /^-----BEGIN CERTIFICATE-----/);
        assert.match(await readAs(user, path.join(view, 'svid_bundle.pem')), /^-----BEGIN CERTIFICATE-----/);
        await assert.rejects(readAs(user, path.join(view, 'svid_key.pem')), /svid_key\.pem: Permission denied/);
      });
      await h.kubelet.unpublish(volume);
    });
  });
}

/** cat(1) as another user; Node drops root's supplementary groups when it sets uid and gid. */
async function readAs(user: { uid: number; gid: number }, file: string): Promise<string> {
  const { stdout } = await execFileAsync('cat', [file], { uid: user.uid, gid: user.gid, encoding: 'utf8' });
  return stdout;
}
