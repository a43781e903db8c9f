/**
 * target_path is the one place the driver mounts, writes and deletes: it must
 * be a real directory, and "is something mounted there" must be decided on the
 * path the kernel sees. A symlink at target_path is never followed — mount(8)
 * would resolve it and put the tmpfs on whatever it points to, where unpublish
 * would never find it — and a symlink above it (a kubelet root directory moved
 * to another disk and linked back) must not hide our own mount from unpublish.
 * Needs root; CI runs as root and fails rather than skip.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { findMount, mountsUnder } from '../../src/fs/mountinfo.js';
import { unmount } from '../../src/fs/tmpfs.js';
import { Harness, runningAsRoot } from '../support/driver-harness.js';
import { isServiceError, type PublishedVolume } from '../support/kubelet-simulator.js';
import { assertValidSvidVolume, pathExists } from '../support/volume-assertions.js';

const skip = !runningAsRoot() && !process.env['CI'] ? 'needs root to mount tmpfs (CI runs it as root)' : false;

function refusedAs(code: grpc.status, message: RegExp): (err: unknown) => boolean {
  return (err) => {
    assert.ok(isServiceError(err), `expected a gRPC error, got ${String(err)}`);
    assert.equal(grpc.status[err.code], grpc.status[code], err.details);
    assert.match(err.details, message);
    return true;
  };
}

/** kubelet creates the parent of target_path; here the test plants something at target_path itself. */
async function plant(volume: PublishedVolume, what: (targetPath: string) => Promise<void>): Promise<void> {
  await fs.mkdir(path.dirname(volume.targetPath), { recursive: true, mode: 0o750 });
  await what(volume.targetPath);
}

for (const useTmpfs of [true, false]) {
  const mode = useTmpfs ? 'per-volume tmpfs' : 'plain directory (--tmpfs=false)';
  describe(`something other than a directory at target_path: ${mode} (root)`, { skip }, () => {
    let h: Harness;
    before(async () => {
      assert.ok(runningAsRoot(), 'these tests must run as root in CI');
      h = await Harness.start({ useTmpfs });
    });
    after(async () => {
      await h.close();
    });

    it('a symlink to another directory: publish refused, nothing mounted or written where it points', async () => {
      const elsewhere = path.join(h.dir, 'elsewhere');
      await fs.mkdir(elsewhere);
      await fs.writeFile(path.join(elsewhere, 'precious'), 'untouched');
      const pod = h.kubelet.createPod();
      await h.agent.addEntry({ spiffeId: 'spiffe://example.org/symlink', selectors: [`k8s:pod-uid:${pod.uid}`] });
      const volume = h.kubelet.volumeFor(pod);
      await plant(volume, (target) => fs.symlink(elsewhere, target));

      await assert.rejects(
        h.kubelet.publish(pod),
        refusedAs(grpc.status.FAILED_PRECONDITION, /target_path .* is a symbolic link \(to .*elsewhere\), not a directory/),
      );
      assert.deepEqual(await mountsUnder(elsewhere), [], 'no tmpfs on the directory the link points to');
      assert.deepEqual(await fs.readdir(elsewhere), ['precious'], 'nothing written through the link');
      assert.equal(await fs.readFile(path.join(elsewhere, 'precious'), 'utf8'), 'untouched');
      assert.deepEqual(await fs.readdir(path.join(h.config.stateDir, 'volumes')), [], 'no metadata left');
    });

    it('a regular file: publish refused with FAILED_PRECONDITION, the file is not mounted over', async () => {
      const pod = h.kubelet.createPod();
      await h.agent.addEntry({ spiffeId: 'spiffe://example.org/file', selectors: [`k8s:pod-uid:${pod.uid}`] });
      const volume = h.kubelet.volumeFor(pod);
      await plant(volume, (target) => fs.writeFile(target, 'not a directory'));

      await assert.rejects(h.kubelet.publish(pod), refusedAs(grpc.status.FAILED_PRECONDITION, /target_path .* is a regular file, not a directory/));
      assert.equal(await findMount(volume.targetPath), undefined);
      assert.deepEqual(await fs.readdir(path.join(h.config.stateDir, 'volumes')), [], 'no metadata left');
    });

    it('unpublish of a target_path that has become a symlink removes the link, never what it points to', async () => {
      const victimPod = h.kubelet.createPod();
      await h.agent.addEntry({ spiffeId: 'spiffe://example.org/victim', selectors: [`k8s:pod-uid:${victimPod.uid}`] });
      const victim = await h.kubelet.publish(victimPod);
      const pod = h.kubelet.createPod();
      await h.agent.addEntry({ spiffeId: 'spiffe://example.org/replaced', selectors: [`k8s:pod-uid:${pod.uid}`] });
      const volume = await h.kubelet.publish(pod);
      // The volume's directory is swapped for a link to another live volume.
      while (await findMount(volume.targetPath)) await unmount(volume.targetPath);
      await fs.rm(volume.targetPath, { recursive: true });
      await fs.symlink(victim.targetPath, volume.targetPath);

      await h.kubelet.unpublish(volume);
      assert.equal(await pathExists(volume.targetPath), false, 'the link itself is gone');
      await assertValidSvidVolume(victim.targetPath, 'spiffe://example.org/victim');
      if (useTmpfs) assert.equal((await findMount(victim.targetPath))?.source, 'csi.spire.io', "the other volume's tmpfs stays");
      await h.kubelet.unpublish(victim);
      assert.equal(await pathExists(victim.targetPath), false);
    });

    it('a target_path swapped for a symlink to another volume while the driver is down is not resumed: nothing written through it', async () => {
      const victimPod = h.kubelet.createPod();
      await h.agent.addEntry({ spiffeId: 'spiffe://example.org/resume-victim', selectors: [`k8s:pod-uid:${victimPod.uid}`] });
      const victim = await h.kubelet.publish(victimPod);
      const pod = h.kubelet.createPod();
      const entryId = await h.agent.addEntry({ spiffeId: 'spiffe://example.org/swapped', selectors: [`k8s:pod-uid:${pod.uid}`] });
      const volume = await h.kubelet.publish(pod);
      await h.stopDriver();
      while (await findMount(volume.targetPath)) await unmount(volume.targetPath);
      await fs.rm(volume.targetPath, { recursive: true });
      await fs.symlink(victim.targetPath, volume.targetPath);

      await h.startDriver();
      await h.agent.rotateSvids(entryId);
      await new Promise((resolve) => setTimeout(resolve, 300));
      await assertValidSvidVolume(victim.targetPath, 'spiffe://example.org/resume-victim');
      assert.equal(await pathExists(volume.targetPath), false, 'the link itself is removed');
      assert.equal(await pathExists(path.join(h.config.stateDir, 'volumes', `${volume.volumeId}.json`)), false, 'the volume is forgotten');
      assert.match(h.logs.text(), /target path is no longer a directory/);
      await h.kubelet.unpublish(volume);
      await h.kubelet.unpublish(victim);
    });
  });
}

describe('kubelet root directory behind a symlink (root)', { skip }, () => {
  let h: Harness;
  before(async () => {
    assert.ok(runningAsRoot(), 'these tests must run as root in CI');
    h = await Harness.start({ useTmpfs: true });
    // --kubelet-root-dir names the link; mountinfo shows the resolved path.
    const real = path.join(h.dir, 'kubelet-on-another-disk');
    await fs.mkdir(real);
    await fs.symlink(real, h.config.kubeletRootDir);
  });
  after(async () => {
    await h.close();
  });

  it('publish mounts one tmpfs and unpublish finds it, unmounts it and removes the directory', async () => {
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/linked-root', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod);
    const resolved = path.join(await fs.realpath(path.dirname(volume.targetPath)), 'mount');
    assert.equal((await findMount(resolved))?.source, 'csi.spire.io');
    await assertValidSvidVolume(volume.targetPath, 'spiffe://example.org/linked-root');

    await h.kubelet.unpublish(volume);
    assert.deepEqual(await mountsUnder(resolved), [], 'no tmpfs left behind');
    assert.equal(await pathExists(volume.targetPath), false);
  });
});
