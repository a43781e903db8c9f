/**
 * NodeUnpublishVolume of a volume whose metadata record is gone or unusable
 * (quarantined as corrupt, written by a newer driver version, state directory
 * wiped) still removes our tmpfs, key and directory; records with fields a
 * newer version added still resume; and nothing that is not ours is touched.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, it } from 'node:test';
import { findMount, isMountPoint } from '../../src/fs/mountinfo.js';
import { Harness, eventually, runningAsRoot } from '../support/driver-harness.js';
import type { PublishedVolume } from '../support/kubelet-simulator.js';
import { publishOne } from '../support/live-volumes.js';
import { assertValidSvidVolume, pathExists, readVolume } from '../support/volume-assertions.js';

const execFileAsync = promisify(execFile);

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

function recordPath(harness: Harness, volume: PublishedVolume): string {
  return path.join(harness.config.stateDir, 'volumes', `${volume.volumeId}.json`);
}

/** NodeUnpublishVolume as kubelet sends it, without the simulator's own clean-up afterwards. */
async function unpublishOnly(harness: Harness, volume: PublishedVolume): Promise<void> {
  await harness.kubelet.nodeCall('NodeUnpublishVolume', { volume_id: volume.volumeId, target_path: volume.targetPath });
}

async function assertGone(harness: Harness, volume: PublishedVolume): Promise<void> {
  assert.equal(await findMount(volume.targetPath), undefined, `no mount left at ${volume.targetPath}`);
  assert.equal(await pathExists(volume.targetPath), false, `${volume.targetPath} removed with the key in it`);
  assert.equal(await pathExists(recordPath(harness, volume)), false, 'no record left');
  assert.equal(await pathExists(path.join(harness.config.stateDir, 'tombstones', volume.volumeId)), false, 'no tombstone left');
}

describe('unpublish without a usable metadata record', () => {
  it('removes the tmpfs and key of a quarantined, a newer-format and a lost record; a record with newer fields resumes', async (t) => {
    if (!runningAsRoot()) return t.skip('mounting a tmpfs needs root');
    h = await Harness.start({ useTmpfs: true });
    const corrupt = await publishOne(h, 'corrupt');
    const lost = await publishOne(h, 'lost');
    const newerFormat = await publishOne(h, 'newer-format');
    const newerFields = await publishOne(h, 'newer-fields');
    await h.stopDriver();

    await fs.writeFile(recordPath(h, corrupt.volume), '{"version": 1, "volumeId": ');
    await fs.rm(recordPath(h, lost.volume));
    const newer = JSON.parse(await fs.readFile(recordPath(h, newerFormat.volume), 'utf8')) as Record<string, unknown>;
    await fs.writeFile(recordPath(h, newerFormat.volume), JSON.stringify({ ...newer, version: 2, layout: 'something-new' }));
    const added = JSON.parse(await fs.readFile(recordPath(h, newerFields.volume), 'utf8')) as Record<string, Record<string, unknown>>;
    await fs.writeFile(
      recordPath(h, newerFields.volume),
      JSON.stringify({ ...added, jwtAudiences: ['db'], files: { ...added['files'], jwt: 'token' }, pod: { ...added['pod'], ip: '10.0.0.1' } }),
    );

    await h.startDriver();
    assert.equal(h.driver?.volumes.volumeCount, 1, 'only the record with added fields resumes');
    assert.equal(
      await pathExists(path.join(h.config.stateDir, 'tombstones', corrupt.volume.volumeId)),
      true,
      'the quarantined record left a tombstone',
    );
    assert.equal(await pathExists(recordPath(h, newerFormat.volume)), true, 'a newer-format record stays in place for the newer driver');
    assert.match(h.logs.text(), /written by a newer driver version/);

    for (const v of [corrupt, lost, newerFormat]) {
      assert.ok(await isMountPoint(v.volume.targetPath), 'the tmpfs is still there before unpublish');
      await unpublishOnly(h, v.volume);
      await assertGone(h, v.volume);
    }
    assert.match(h.logs.text(), /unpublished a volume that had no usable metadata record/);

    const before = await readVolume(newerFields.volume.targetPath);
    await h.agent.rotateSvids();
    await eventually(
      'rotation of the volume whose record has newer fields',
      async () => (await readVolume(newerFields.volume.targetPath)).version !== before.version,
    );
    await assertValidSvidVolume(newerFields.volume.targetPath, newerFields.spiffeId);
    await unpublishOnly(h, newerFields.volume);
    await assertGone(h, newerFields.volume);
  });

  it('plain-directory mode: a wiped state directory still lets unpublish remove the files', async () => {
    h = await Harness.start({ useTmpfs: false });
    const wiped = await publishOne(h, 'wiped');
    await h.stopDriver();
    await fs.rm(path.join(h.config.stateDir), { recursive: true });
    await h.startDriver();
    assert.equal(h.driver?.volumes.volumeCount, 0);
    await unpublishOnly(h, wiped.volume);
    await assertGone(h, wiped.volume);
  });

  it('leaves alone what is not ours: foreign files, a foreign mount, another pod’s volume id, a path outside kubelet’s layout', async (t) => {
    h = await Harness.start({ useTmpfs: false });
    const kubelet = h.kubelet;

    const mixed = await publishOne(h, 'mixed');
    const other = await publishOne(h, 'other');
    await h.stopDriver();
    await fs.rm(recordPath(h, mixed.volume));
    await fs.rm(recordPath(h, other.volume));
    await h.startDriver();

    // Our layout plus one file we never write: not ours to delete.
    await fs.writeFile(path.join(mixed.volume.targetPath, 'notes.txt'), 'somebody else’s');
    await unpublishOnly(h, mixed.volume);
    assert.equal(await pathExists(path.join(mixed.volume.targetPath, 'notes.txt')), true);

    // Our layout, but the volume id kubelet would use for another pod's volume.
    const strangerId = kubelet.volumeFor(kubelet.createPod({ name: 'stranger' })).volumeId;
    await unpublishOnly(h, { volumeId: strangerId, targetPath: other.volume.targetPath });
    assert.equal(await pathExists(path.join(other.volume.targetPath, '..data')), true, 'volume id not kubelet’s for this path: nothing removed');

    // Our files outside kubelet's pods directory.
    const outside = path.join(h.dir, 'elsewhere', 'mount');
    await fs.cp(other.volume.targetPath, outside, { recursive: true, verbatimSymlinks: true });
    await unpublishOnly(h, { volumeId: other.volume.volumeId, targetPath: outside });
    assert.equal(await pathExists(path.join(outside, '..data')), true, 'a path outside kubelet’s layout is never ours');

    if (!runningAsRoot()) return;
    // A tmpfs mounted by somebody else at a target path in kubelet's layout.
    const foreign = kubelet.volumeFor(kubelet.createPod({ name: 'foreign' }));
    await fs.mkdir(foreign.targetPath, { recursive: true });
    await execFileAsync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'someone-else', foreign.targetPath]);
    t.after(() => execFileAsync('umount', [foreign.targetPath]).catch(() => undefined));
    await fs.writeFile(path.join(foreign.targetPath, 'data'), 'theirs');
    await unpublishOnly(h, foreign);
    assert.ok(await isMountPoint(foreign.targetPath), 'a foreign tmpfs stays mounted');
    assert.equal(await fs.readFile(path.join(foreign.targetPath, 'data'), 'utf8'), 'theirs');
  });

  it('forgets, at start, the tombstone of a quarantined volume whose pod directory is gone', async () => {
    h = await Harness.start({ useTmpfs: false });
    const staying = await publishOne(h, 'staying');
    const leaving = await publishOne(h, 'leaving');
    await h.stopDriver();
    for (const v of [staying, leaving]) await fs.writeFile(recordPath(h, v.volume), 'not json');
    await h.startDriver();
    const tombstones = path.join(h.config.stateDir, 'tombstones');
    assert.deepEqual((await fs.readdir(tombstones)).sort(), [staying.volume.volumeId, leaving.volume.volumeId].sort());

    await h.stopDriver();
    // The pod was deleted while the driver was down: kubelet removed its directory.
    await fs.rm(path.dirname(path.dirname(path.dirname(path.dirname(leaving.volume.targetPath)))), { recursive: true });
    await h.startDriver();
    assert.deepEqual(await fs.readdir(tombstones), [staying.volume.volumeId]);
    await unpublishOnly(h, staying.volume);
    await assertGone(h, staying.volume);
  });
});
