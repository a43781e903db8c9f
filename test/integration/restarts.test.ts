/**
 * docs/design.md invariant 6: restarts lose nothing. The agent restarting, the
 * driver killed with SIGKILL or stopped with SIGTERM, a corrupt metadata file:
 * files stay in place, streams come back, rotation continues.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, it } from 'node:test';
import { isMountPoint } from '../../src/fs/mountinfo.js';
import { Harness, eventually, runningAsRoot, sleep } from '../support/driver-harness.js';
import { assertRotates, publishSome, type LiveVolume } from '../support/live-volumes.js';
import { assertValidSvidVolume, pathExists, readVolume } from '../support/volume-assertions.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('restarts', () => {
  it('survives an agent restart: files stay while it is down, streams come back at once, rotation continues', async () => {
    h = await Harness.start();
    const live = await publishSome(h, 3);
    const versions = await Promise.all(live.map(async (v) => (await readVolume(v.volume.targetPath)).version));

    await h.agent.stop();
    // Long enough for the streams' backoff to grow to several seconds: only the
    // watch on the socket directory can then bring them back at once.
    await sleep(7000);
    for (const [i, v] of live.entries()) {
      const content = await assertValidSvidVolume(v.volume.targetPath, v.spiffeId);
      assert.equal(content.version, versions[i], 'files untouched while the agent is down');
    }
    const resumedAt = Date.now();
    await h.agent.resume();
    await h.agent.waitForSvidStreams(3, 3000);
    await h.agent.waitForBundleStreams(1, 3000);
    const reconnectMs = Date.now() - resumedAt;
    assert.ok(reconnectMs < 1500, `the socket watch brought the streams back in ${reconnectMs} ms, without waiting out a backoff`);
    await assertRotates(h, live);
  });

  it('picks up a crashed agent (stale socket file replaced in place) at once too', async () => {
    h = await Harness.start();
    const live = await publishSome(h, 2);
    await h.agent.crash();
    await sleep(7000);
    const resumedAt = Date.now();
    await h.agent.resume();
    await h.agent.waitForSvidStreams(2, 3000);
    const reconnectMs = Date.now() - resumedAt;
    assert.ok(reconnectMs < 1500, `streams back ${reconnectMs} ms after the agent replaced its stale socket`);
    await assertRotates(h, live);
  });

  it('SIGTERM stops serving and leaves every volume; the next start resumes them', async () => {
    h = await Harness.start({ useTmpfs: runningAsRoot() });
    const live = await publishSome(h, 2);
    await h.stopDriver();
    for (const v of live) {
      await assertValidSvidVolume(v.volume.targetPath, v.spiffeId);
      if (runningAsRoot()) assert.ok(await isMountPoint(v.volume.targetPath), 'tmpfs still mounted');
    }
    assert.equal((await fs.readdir(path.join(h.config.stateDir, 'volumes'))).length, 2);
    const logMark = h.logs.lines.length;
    await h.startDriver();
    assert.equal(h.driver?.volumes.volumeCount, 2);
    // The agent's first answer after the restart is what the files hold: recognised from the disk, not re-checked.
    await eventually(
      'both resumed volumes recognise their files',
      () =>
        h?.logs
          .entries()
          .slice(logMark)
          .filter((e) => e['msg'] === 'the files on disk already are the newest material; nothing checked or written').length === 2,
    );
    assert.deepEqual(
      h.logs
        .entries()
        .slice(logMark)
        .filter((e) => e['msg'] === 'SVID checked' || e['msg'] === 'SVID files written'),
      [],
      'no check and no write for files already in place',
    );
    // kubelet may publish a resumed volume again: same parameters, so OK, nothing rewritten.
    for (const v of live) {
      const before = await readVolume(v.volume.targetPath);
      const pod = { uid: v.volume.targetPath.split('/pods/')[1]?.split('/')[0] as string, name: '', namespace: 'default', serviceAccount: 'app' };
      const record = JSON.parse(await fs.readFile(path.join(h.config.stateDir, 'volumes', `${v.volume.volumeId}.json`), 'utf8')) as {
        pod: { name: string };
      };
      pod.name = record.pod.name;
      await h.kubelet.publish(pod);
      assert.equal((await readVolume(v.volume.targetPath)).version, before.version);
    }
    await assertRotates(h, live);
    for (const v of live) await h.kubelet.unpublish(v.volume);
  });

  it('driver killed with SIGKILL and restarted: every volume resumes without a rewrite, then rotates', async () => {
    h = await Harness.start({ driverProcess: true, useTmpfs: runningAsRoot() });
    const live = await publishSome(h, 4);
    const versions = await Promise.all(live.map(async (v) => (await readVolume(v.volume.targetPath)).version));
    await h.killDriver();
    await h.agent.waitForSvidStreams(0, 3000);
    for (const v of live) {
      await assertValidSvidVolume(v.volume.targetPath, v.spiffeId);
      if (runningAsRoot()) assert.ok(await isMountPoint(v.volume.targetPath), 'a kill never unmounts');
    }

    const restartedAt = Date.now();
    await h.startDriver(); // the stale CSI socket file is replaced
    await h.agent.waitForSvidStreams(4, 5000);
    const resumeMs = Date.now() - restartedAt;
    assert.ok(resumeMs < 5000, `streams re-opened in ${resumeMs} ms`);
    await sleep(300);
    for (const [i, v] of live.entries()) {
      assert.equal((await readVolume(v.volume.targetPath)).version, versions[i], 'unchanged content is not rewritten after a restart');
    }
    await assertRotates(h, live);
    for (const v of live) {
      await h.kubelet.unpublish(v.volume);
      assert.equal(await pathExists(v.volume.targetPath), false);
    }
  });

  it('the driver process exits 0 on SIGTERM, promptly, leaving its volumes', async () => {
    h = await Harness.start({ driverProcess: true, useTmpfs: runningAsRoot() });
    const [live] = await publishSome(h, 1);
    const child = h.child?.process;
    assert.ok(child && live);
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const stoppedAt = Date.now();
    child.kill('SIGTERM');
    assert.equal(await exited, 0);
    assert.ok(Date.now() - stoppedAt < 5000, 'stopped within 5 s');
    h.child = undefined;
    await assertValidSvidVolume(live.volume.targetPath, live.spiffeId);
    assert.equal(await pathExists(h.config.csiSocketPath), false, 'socket removed on a clean stop');
  });

  it('quarantines a corrupt metadata file and resumes the others; cleans up interrupted publishes and vanished pods', async () => {
    h = await Harness.start();
    const live = await publishSome(h, 3);
    await h.stopDriver();
    const volumesDir = path.join(h.config.stateDir, 'volumes');
    const [corrupt, gone, healthy] = live as [LiveVolume, LiveVolume, LiveVolume];
    await fs.writeFile(path.join(volumesDir, `${corrupt.volume.volumeId}.json`), '{"version": 1, "volumeId": ');
    await fs.rm(path.dirname(gone.volume.targetPath), { recursive: true });
    // A publish that the driver never finished: a record, a directory, no files.
    const interruptedPod = h.kubelet.createPod();
    const interrupted = h.kubelet.volumeFor(interruptedPod);
    await fs.mkdir(interrupted.targetPath, { recursive: true });
    await fs.writeFile(path.join(interrupted.targetPath, 'partial'), 'x');
    const record = JSON.parse(await fs.readFile(path.join(volumesDir, `${healthy.volume.volumeId}.json`), 'utf8')) as Record<string, unknown>;
    await fs.writeFile(
      path.join(volumesDir, `${interrupted.volumeId}.json`),
      JSON.stringify({
        ...record,
        volumeId: interrupted.volumeId,
        targetPath: interrupted.targetPath,
        pod: { ...(record['pod'] as object), uid: interruptedPod.uid },
      }),
    );

    await h.startDriver();
    assert.equal(h.driver?.volumes.volumeCount, 1, 'only the healthy volume is live');
    const quarantine = await fs.readdir(path.join(h.config.stateDir, 'quarantine'));
    assert.equal(quarantine.length, 1);
    assert.ok(quarantine[0]?.startsWith(`${corrupt.volume.volumeId}.json.`));
    assert.match(h.logs.text(), /volume metadata file is corrupt; moved it to quarantine/);
    assert.deepEqual((await fs.readdir(volumesDir)).sort(), [`${healthy.volume.volumeId}.json`]);
    assert.equal(await pathExists(interrupted.targetPath), false, 'interrupted publish cleaned up');
    await assertValidSvidVolume(corrupt.volume.targetPath, corrupt.spiffeId); // files of the quarantined volume are left alone
    await assertRotates(h, [healthy]);
  });
});
