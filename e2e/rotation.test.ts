/**
 * Rotation and restarts end to end, against a real SPIRE v1.15.3 agent:
 * SVID rotation swaps the files in one step; the agent stopped and started
 * again (same data dir) is survived with the files in place; the driver
 * killed with SIGKILL and restarted resumes every volume.
 *
 * Timing facts measured against the real agent: a workload SVID's NotBefore is
 * backdated 10 s, and the agent re-signs when less than half of
 * NotAfter − NotBefore is left (±10 %), so -x509SVIDTTL 20 rotates about
 * every 5 s (not every 10 s), and a TTL of 10 s or less would rotate at every
 * 1 s sync.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, it } from 'node:test';
import { isMountPoint } from '../src/fs/mountinfo.js';
import type { Pod, PublishedVolume } from '../test/support/kubelet-simulator.js';
import { assertValidSvidVolume, pathExists, readVolume, type VolumeContent } from '../test/support/volume-assertions.js';
import { PairReader } from '../test/support/pair-reader.js';
import { startScenario, versionDirectories, waitForNewSerial, withDiagnostics, type Scenario } from './scenario.js';
import { sleep, waitFor } from './spire-testbed.js';

/** Short enough to rotate every ~5 s, long enough not to rotate at every sync. */
const SVID_TTL_SECONDS = 20;
/** Generous bound for one rotation (expected ~5 s). */
const ROTATION_TIMEOUT_MS = 25_000;

let s: Scenario | undefined;
afterEach(async () => {
  await s?.close();
  s = undefined;
});

interface LiveVolume {
  pod: Pod;
  spiffeId: string;
  volume: PublishedVolume;
}

async function publishWithEntry(scenario: Scenario, style: 'pod-uid' | 'ns-sa', index: number): Promise<LiveVolume> {
  const { testbed, driver } = scenario;
  const pod = driver.kubelet.createPod({ namespace: `team-${index}`, serviceAccount: `sa-${index}` });
  const spiffeId = `spiffe://example.org/rotating/${style}/${index}`;
  if (style === 'pod-uid') await testbed.createPodUidEntry(pod, spiffeId, { x509SvidTtlSeconds: SVID_TTL_SECONDS });
  else await testbed.createNamespaceServiceAccountEntry(pod, spiffeId, { x509SvidTtlSeconds: SVID_TTL_SECONDS });
  const volume = await driver.kubelet.publish(pod);
  return { pod, spiffeId, volume };
}

describe('rotation and restarts against a real SPIRE agent', () => {
  it('SVID rotation: files swapped in one step (..data flips, old version dir gone), new serial, key still matches', async () => {
    s = await startScenario({ testbed: { label: 'e2e-rot' } });
    const scenario = s;
    await withDiagnostics(s, async () => {
      const live = await publishWithEntry(scenario, 'pod-uid', 1);
      const first = await assertValidSvidVolume(live.volume.targetPath, live.spiffeId);
      assert.deepEqual(await versionDirectories(live.volume.targetPath), [first.version]);

      const reader = new PairReader(live.volume.targetPath);
      let second: VolumeContent;
      try {
        second = await waitForNewSerial(live.volume.targetPath, first, ROTATION_TIMEOUT_MS);
        // A second rotation: the stream keeps delivering.
        await waitForNewSerial(live.volume.targetPath, second, ROTATION_TIMEOUT_MS, 'a second rotation');
      } finally {
        await reader.stop();
      }
      const now = await assertValidSvidVolume(live.volume.targetPath, live.spiffeId);
      assert.notEqual(second.version, first.version, '..data points at a new version directory');
      assert.equal(await pathExists(path.join(live.volume.targetPath, first.version)), false, 'the old version directory is gone');
      assert.deepEqual(await versionDirectories(live.volume.targetPath), [now.version], 'exactly one version directory');
      for (const name of ['svid.pem', 'svid_key.pem', 'svid_bundle.pem']) {
        assert.equal(await fs.readlink(path.join(live.volume.targetPath, name)), `..data/${name}`, `${name} is a link through ..data`);
      }
      assert.ok(reader.accepted > 0, 'the reader loaded the pair');
      assert.equal(reader.mismatched, 0, `a reader accepted a mismatched cert/key pair (${reader.mismatched} of ${reader.accepted})`);
      assert.ok(new Date(now.leaf.validFrom) > new Date(first.leaf.validFrom), 'the new SVID was issued later');

      await scenario.driver.kubelet.unpublish(live.volume);
      await scenario.driver.assertNothingLeft(live.volume);
    });
  });

  it('spire-agent stopped and started again (same data dir): files stay meanwhile, streams recover, rotation continues', async () => {
    s = await startScenario({ testbed: { label: 'e2e-agt' } });
    const scenario = s;
    const { testbed, driver } = scenario;
    await withDiagnostics(s, async () => {
      const volumes = [await publishWithEntry(scenario, 'pod-uid', 1), await publishWithEntry(scenario, 'ns-sa', 2)];
      await testbed.stopAgent('SIGTERM');
      assert.equal(await pathExists(testbed.adminSocketPath), false, 'a clean stop removes the admin socket');
      const whileDown = await Promise.all(volumes.map((v) => readVolume(v.volume.targetPath)));
      // Longer than a rotation period: nothing may change or disappear while the agent is away.
      await sleep(7000);
      for (const [i, v] of volumes.entries()) {
        const content = await assertValidSvidVolume(v.volume.targetPath, v.spiffeId);
        assert.equal(content.version, whileDown[i]?.version, 'files untouched while the agent is down');
        assert.ok(await isMountPoint(v.volume.targetPath));
      }

      const restartedAt = Date.now();
      await testbed.startAgent();
      const afterRestart: VolumeContent[] = [];
      for (const [i, v] of volumes.entries()) {
        afterRestart.push(
          await waitForNewSerial(v.volume.targetPath, whileDown[i] as VolumeContent, ROTATION_TIMEOUT_MS, 'an SVID from the restarted agent'),
        );
      }
      const recoveredMs = Date.now() - restartedAt;
      for (const [i, v] of volumes.entries()) {
        await waitForNewSerial(v.volume.targetPath, afterRestart[i] as VolumeContent, ROTATION_TIMEOUT_MS, 'a rotation after the agent restart');
        await assertValidSvidVolume(v.volume.targetPath, v.spiffeId);
      }
      assert.ok(recoveredMs < 15_000, `streams recovered ${recoveredMs} ms after the agent started`);
      assert.match(driver.output(), /SPIRE agent admin socket appeared; reconnecting streams/);
      for (const v of volumes) await driver.kubelet.unpublish(v.volume);
    });
  });

  it('spire-agent killed with SIGKILL (stale socket file left) and started again: streams recover, rotation continues', async () => {
    s = await startScenario({ testbed: { label: 'e2e-agk' } });
    const scenario = s;
    const { testbed, driver } = scenario;
    await withDiagnostics(s, async () => {
      const live = await publishWithEntry(scenario, 'pod-uid', 1);
      await testbed.stopAgent('SIGKILL');
      assert.ok(await pathExists(testbed.adminSocketPath), 'a killed agent leaves its socket file behind');
      const before = await readVolume(live.volume.targetPath);
      await sleep(2000);
      assert.equal((await readVolume(live.volume.targetPath)).version, before.version);
      await testbed.startAgent();
      const fresh = await waitForNewSerial(live.volume.targetPath, before, ROTATION_TIMEOUT_MS, 'an SVID from the restarted agent');
      await waitForNewSerial(live.volume.targetPath, fresh, ROTATION_TIMEOUT_MS, 'a rotation after the agent restart');
      await assertValidSvidVolume(live.volume.targetPath, live.spiffeId);
      await driver.kubelet.unpublish(live.volume);
      await driver.assertNothingLeft(live.volume);
    });
  });

  it(
    // After a SIGKILL the agent's socket file stays behind and the restarted
    // agent replaces it: chokidar reports a 'change', not an 'add'.
    'a crashed agent that comes back is picked up at once, not after the stream backoff',
    async () => {
      s = await startScenario({ testbed: { label: 'e2e-crash' } });
      const scenario = s;
      const { testbed, driver } = scenario;
      await withDiagnostics(s, async () => {
        const live = await publishWithEntry(scenario, 'pod-uid', 1);
        const mark = driver.output().length;
        await testbed.stopAgent('SIGKILL');
        const before = await readVolume(live.volume.targetPath);
        // Let the SVID stream's backoff grow, so that "at once" and "after the backoff" differ by seconds.
        await waitFor(
          'the SVID stream to back off for 4 s or more',
          () =>
            driver
              .output()
              .slice(mark)
              .split('\n')
              .some((line) => /"stream":"svid"/.test(line) && Number(/"retry_in_ms":(\d+)/.exec(line)?.[1] ?? 0) >= 4000),
          { timeoutMs: 20_000 },
        );
        const startedAt = Date.now();
        await testbed.startAgent();
        await waitForNewSerial(live.volume.targetPath, before, 3000, 'an SVID from the restarted agent within 3 s');
        assert.ok(Date.now() - startedAt < 3500);
      });
    },
  );

  it('spire-agent restarted 10 times, SIGTERM and SIGKILL alternating: 0 files lost, rotation continues after each restart', async () => {
    const restarts = 10;
    s = await startScenario({ testbed: { label: 'e2e-agt10' } });
    const scenario = s;
    const { testbed } = scenario;
    await withDiagnostics(s, async () => {
      const volumes = [await publishWithEntry(scenario, 'pod-uid', 1), await publishWithEntry(scenario, 'ns-sa', 2)];
      const readers = volumes.map((v) => new PairReader(v.volume.targetPath));
      try {
        for (let i = 0; i < restarts; i++) {
          const signal = i % 2 === 0 ? 'SIGTERM' : 'SIGKILL';
          await testbed.stopAgent(signal);
          const whileDown = await Promise.all(volumes.map((v) => assertValidSvidVolume(v.volume.targetPath, v.spiffeId)));
          await testbed.startAgent();
          await Promise.all(
            volumes.map((v, j) =>
              waitForNewSerial(
                v.volume.targetPath,
                whileDown[j] as VolumeContent,
                ROTATION_TIMEOUT_MS,
                `a rotation of ${v.spiffeId} after agent restart ${i + 1} (${signal})`,
              ),
            ),
          );
        }
      } finally {
        await Promise.all(readers.map((r) => r.stop()));
      }
      const pairs = readers.reduce((sum, r) => sum + r.accepted, 0);
      const errors = readers.reduce((sum, r) => sum + r.errors, 0);
      const mismatched = readers.reduce((sum, r) => sum + r.mismatched, 0);
      // Printed for the README's reliability figures.
      console.log(`# real agent restarts: ${restarts} restarts, ${pairs} pairs read, ${errors} read errors, ${mismatched} mismatched`);
      assert.deepEqual({ errors, mismatched }, { errors: 0, mismatched: 0 }, readers.flatMap((r) => r.errorSamples).join('; '));
      assert.ok(pairs > restarts, `the readers kept reading (${pairs} pairs)`);
      for (const v of volumes) {
        await assertValidSvidVolume(v.volume.targetPath, v.spiffeId);
        await scenario.driver.kubelet.unpublish(v.volume);
        await scenario.driver.assertNothingLeft(v.volume);
      }
    });
  });

  it('driver killed with SIGKILL and restarted: every volume stays mounted and resumes rotating', async () => {
    s = await startScenario({ testbed: { label: 'e2e-drv' } });
    const scenario = s;
    const { driver } = scenario;
    await withDiagnostics(s, async () => {
      const volumes: LiveVolume[] = [];
      for (let i = 0; i < 4; i++) volumes.push(await publishWithEntry(scenario, i % 2 === 0 ? 'pod-uid' : 'ns-sa', i));

      await driver.stopProcess('SIGKILL');
      const atKill = await Promise.all(volumes.map((v) => readVolume(v.volume.targetPath)));
      await sleep(1000);
      for (const v of volumes) {
        await assertValidSvidVolume(v.volume.targetPath, v.spiffeId);
        assert.ok(await isMountPoint(v.volume.targetPath), 'a kill never unmounts');
      }
      // While the driver is down no-one writes.
      for (const [i, v] of volumes.entries()) assert.equal((await readVolume(v.volume.targetPath)).version, atKill[i]?.version);
      assert.equal((await fs.readdir(driver.volumesDir)).length, volumes.length, 'every metadata record survived');

      await driver.startProcess(); // replaces the stale CSI socket
      await Promise.all(
        volumes.map(async (v, i) => {
          const rotated = await waitForNewSerial(
            v.volume.targetPath,
            atKill[i] as VolumeContent,
            ROTATION_TIMEOUT_MS,
            `rotation of ${v.spiffeId} after the restart`,
          );
          await waitForNewSerial(v.volume.targetPath, rotated, ROTATION_TIMEOUT_MS, `a second rotation of ${v.spiffeId} after the restart`);
          await assertValidSvidVolume(v.volume.targetPath, v.spiffeId);
        }),
      );
      const resumed = driver
        .logEntries()
        .find((entry) => entry['msg'] === 'resumed volumes from the state directory' && entry['volumes'] === volumes.length);
      assert.ok(resumed, 'the restarted driver resumed every volume');

      for (const v of volumes) {
        await driver.kubelet.unpublish(v.volume);
        await driver.assertNothingLeft(v.volume);
      }
      await waitFor('an empty state directory', async () => (await fs.readdir(driver.volumesDir)).length === 0, { timeoutMs: 2000 });
    });
  });
});
