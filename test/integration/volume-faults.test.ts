/**
 * Faults on the node's filesystems (hardening issue #8): the state directory
 * turned read-only, a volume's tmpfs remounted read-only, the target directory
 * removed behind the driver's back, a half-written version directory left by a
 * crash. (A full tmpfs is in write-retry.test.ts.) Each: no crash, previous
 * files kept where they exist, a clear log line and error, recovery once the
 * fault is gone.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { status } from '@grpc/grpc-js';
import { afterEach, describe, it } from 'node:test';
import { findMount } from '../../src/fs/mountinfo.js';
import { Harness, eventually, runningAsRoot, sleep } from '../support/driver-harness.js';
import { isServiceError } from '../support/kubelet-simulator.js';
import { assertRotates, publishOne } from '../support/live-volumes.js';
import { assertValidSvidVolume, pathExists, readVolume } from '../support/volume-assertions.js';

const execFileAsync = promisify(execFile);

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('filesystem faults', () => {
  it('a read-only state directory fails new publishes with what to fix, leaves nothing, keeps the live volumes rotating, and recovers', async (t) => {
    if (!runningAsRoot()) return t.skip('a read-only bind mount needs root');
    h = await Harness.start({ useTmpfs: true });
    const live = await publishOne(h, 'live');
    const volumesDir = path.join(h.config.stateDir, 'volumes');
    // Root ignores file modes, so the fault is a read-only bind mount of the directory onto itself.
    await execFileAsync('mount', ['--bind', volumesDir, volumesDir]);
    await execFileAsync('mount', ['-o', 'remount,bind,ro', volumesDir]);
    let readOnly = true;
    t.after(async () => {
      if (readOnly) await execFileAsync('umount', [volumesDir]).catch(() => undefined);
    });

    const pod = h.kubelet.createPod({ name: 'blocked' });
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/blocked', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const blocked = h.kubelet.volumeFor(pod);
    await assert.rejects(h.kubelet.publish(pod), (err: unknown) => {
      assert.ok(isServiceError(err));
      assert.equal(err.code, status.INTERNAL);
      assert.match(
        err.details,
        /recording it in the state directory .* failed .*read-only file system.*needs that directory writable \(--state-dir/i,
      );
      return true;
    });
    assert.equal(await findMount(blocked.targetPath), undefined, 'nothing mounted for the refused publish');
    assert.equal(await pathExists(blocked.targetPath), false, 'no target directory left');

    // A refused JWT volume costs the agent no token: the fetch waits until the volume may be written.
    const jwtPod = h.kubelet.createPod({ name: 'blocked-jwt' });
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/blocked-jwt', selectors: [`k8s:pod-uid:${jwtPod.uid}`] });
    const fetchesBefore = h.agent.receivedJwtFetches().length;
    await assert.rejects(
      h.kubelet.publish(jwtPod, { attributes: { 'csi.spire.io/jwt-audiences': 'vault' } }),
      (err: unknown) => isServiceError(err) && err.code === status.INTERNAL,
    );
    await new Promise((resolve) => setTimeout(resolve, 300)); // a fetch sent anyway would have arrived by now
    assert.equal(h.agent.receivedJwtFetches().length, fetchesBefore, 'no FetchJWTSVIDs for the refused publish');
    assert.equal(h.driver?.volumes.volumeCount, 1);
    await assertRotates(h, [live]);

    await execFileAsync('umount', [volumesDir]);
    readOnly = false;
    const recovered = await h.kubelet.publish(pod);
    await assertValidSvidVolume(recovered.targetPath, 'spiffe://example.org/blocked');
    await h.kubelet.unpublish(recovered);
    await h.kubelet.unpublish(live.volume);
  });

  it('the tmpfs remounted read-only: previous files kept, EROFS logged and counted, the newest SVID lands once it is writable again', async (t) => {
    if (!runningAsRoot()) return t.skip('remounting a tmpfs needs root');
    h = await Harness.start({ useTmpfs: true });
    const v = await publishOne(h, 'read-only');
    const before = await readVolume(v.volume.targetPath);
    await execFileAsync('mount', ['-o', 'remount,ro', v.volume.targetPath]);
    let readOnly = true;
    t.after(async () => {
      if (readOnly) await execFileAsync('mount', ['-o', 'remount,rw', v.volume.targetPath]).catch(() => undefined);
    });

    await h.agent.rotateSvids(v.entryId);
    const rotated = h.agent.currentSvid(v.entryId).serialHex;
    const failures = async (): Promise<string> => h?.metrics.registry.getSingleMetricAsString('spire_csi_volume_write_failures_total') ?? '';
    await eventually('an EROFS write failure counted', async () => /reason="EROFS"\} [1-9]/.test(await failures()));
    assert.match(h.logs.text(), /writing the SVID files failed; retrying with backoff/);
    const kept = await assertValidSvidVolume(v.volume.targetPath, v.spiffeId);
    assert.equal(kept.version, before.version, 'the previous files are untouched');

    await execFileAsync('mount', ['-o', 'remount,rw', v.volume.targetPath]);
    readOnly = false;
    // No further message from the agent: the retry alone writes the newest SVID.
    await eventually(
      'the rotated SVID written by a retry',
      async () => (await readVolume(v.volume.targetPath)).leaf.serialNumber.toLowerCase() === rotated,
      15_000,
    );
    await assertValidSvidVolume(v.volume.targetPath, v.spiffeId);
    assert.match(await h.metrics.registry.getSingleMetricAsString('spire_csi_volumes_write_failing'), /spire_csi_volumes_write_failing 0/);
    await h.kubelet.unpublish(v.volume);
  });

  it('file descriptors exhausted (EMFILE, by lowering the driver process’s limit): previous files kept, the newest SVID lands once the limit is back', async () => {
    h = await Harness.start({ driverProcess: true, useTmpfs: runningAsRoot() });
    const v = await publishOne(h, 'emfile');
    const pid = h.child?.process.pid;
    assert.ok(pid !== undefined);
    const before = await readVolume(v.volume.targetPath);
    // A new descriptor takes the lowest free number, and fails with EMFILE when that number reaches the limit.
    const inUse = new Set((await fs.readdir(`/proc/${pid}/fd`)).map(Number));
    let lowestFree = 0;
    while (inUse.has(lowestFree)) lowestFree++;
    const { stdout } = await execFileAsync('prlimit', ['--pid', String(pid), '--nofile', '--output', 'SOFT,HARD', '--noheadings']);
    const [soft, hard] = stdout.trim().split(/\s+/);
    // Room for what is open now and nothing more: the next file the writer opens fails with EMFILE.
    await execFileAsync('prlimit', ['--pid', String(pid), `--nofile=${lowestFree}:${hard}`]);
    try {
      await h.agent.rotateSvids(v.entryId);
      await eventually('an EMFILE write failure logged', () => /"code":"EMFILE"/.test(h?.child?.output() ?? '')).catch((err: unknown) => {
        throw new Error(`${String(err)}; driver output:\n${h?.child?.output().slice(-3000) ?? ''}`);
      });
      assert.equal((await assertValidSvidVolume(v.volume.targetPath, v.spiffeId)).version, before.version, 'the previous files are untouched');
    } finally {
      await execFileAsync('prlimit', ['--pid', String(pid), `--nofile=${soft}:${hard}`]);
    }
    const rotated = h.agent.currentSvid(v.entryId).serialHex;
    await eventually(
      'the rotated SVID written by a retry',
      async () => (await readVolume(v.volume.targetPath)).leaf.serialNumber.toLowerCase() === rotated,
      15_000,
    );
    // The log line follows the write on the driver's stdout pipe: it may arrive a moment after the file is read.
    await eventually('the recovery logged', () => /SVID files written after failed attempts/.test(h?.child?.output() ?? ''), 5_000);
    await h.kubelet.unpublish(v.volume);
  });

  it('the target directory removed behind the driver’s back: no crash, the failure is logged, other volumes rotate, unpublish still answers OK', async () => {
    h = await Harness.start({ useTmpfs: false });
    const removed = await publishOne(h, 'removed');
    const other = await publishOne(h, 'other');
    await fs.rm(removed.volume.targetPath, { recursive: true });

    await h.agent.rotateSvids(removed.entryId);
    await eventually('the failed write is logged', () => /writing the SVID files failed/.test(h?.logs.text() ?? ''));
    assert.equal(await pathExists(removed.volume.targetPath), false, 'the driver never recreates a directory kubelet owns');
    await assertRotates(h, [other]);
    assert.ok(await h.kubelet.probeReady(), 'the driver still answers');

    await h.kubelet.unpublish(removed.volume);
    assert.equal(await pathExists(path.join(h.config.stateDir, 'volumes', `${removed.volume.volumeId}.json`)), false, 'its record is gone');
    assert.equal(h.driver?.volumes.volumeCount, 1);
    await h.kubelet.unpublish(other.volume);
  });

  it('a half-written version directory from a crash is ignored by readers and removed by the next write', async () => {
    h = await Harness.start({ useTmpfs: runningAsRoot() });
    const v = await publishOne(h, 'half-written');
    await h.stopDriver();
    const leftover = path.join(v.volume.targetPath, '..2026_11_29_00_00_00.crashed');
    await fs.mkdir(leftover);
    await fs.writeFile(path.join(leftover, 'svid.pem'), '-----BEGIN CERTIFICATE-----\ntruncat');
    const before = await readVolume(v.volume.targetPath);
    await h.startDriver();
    await sleep(200);
    assert.equal((await readVolume(v.volume.targetPath)).version, before.version, 'the visible files still come from the complete version');
    await assertRotates(h, [v]);
    assert.equal(await pathExists(leftover), false, 'the next write removed the crash leftover');
    await h.kubelet.unpublish(v.volume);
  });
});
