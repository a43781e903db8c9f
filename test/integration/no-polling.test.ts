/**
 * docs/design.md invariant 9: no polling. With many live volumes and nothing
 * happening, the driver process uses no CPU, asks the agent for nothing and
 * writes nothing: every change arrives on the agent's streams.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Harness, runningAsRoot, sleep } from '../support/driver-harness.js';
import type { PublishedVolume } from '../support/kubelet-simulator.js';
import { readVolume } from '../support/volume-assertions.js';

async function cpuTicks(pid: number): Promise<number> {
  const fields = (await fs.readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]?.split(' ') ?? [];
  return Number(fields[11]) + Number(fields[12]); // utime + stime, in clock ticks (1/100 s)
}

describe('driver with no volume', () => {
  it('opens no stream to the agent and uses no CPU until the first publish', async () => {
    const h = await Harness.start({ driverProcess: true, useTmpfs: runningAsRoot() });
    try {
      const pid = h.child?.process.pid;
      assert.ok(pid);
      await sleep(1500);
      const ticksBefore = await cpuTicks(pid);
      await sleep(3000);
      const ticks = (await cpuTicks(pid)) - ticksBefore;
      assert.ok(ticks <= 3, `the idle driver used ${ticks * 10} ms of CPU in 3 s`);
      assert.equal(h.agent.openSvidStreams(), 0);
      assert.equal(h.agent.openBundleStreams(), 0, 'the bundle stream opens with the first volume');
      assert.equal(h.agent.openJwtBundleStreams(), 0);
    } finally {
      await h.close();
    }
  });
});

describe('idle driver', () => {
  let h: Harness;
  const volumes: PublishedVolume[] = [];
  before(async () => {
    h = await Harness.start({ driverProcess: true, useTmpfs: runningAsRoot() });
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/idle', selectors: ['k8s:ns:idle'] });
    for (let i = 0; i < 60; i += 20) {
      const pods = Array.from({ length: 20 }, () => h.kubelet.createPod({ namespace: 'idle' }));
      volumes.push(...(await Promise.all(pods.map((pod) => h.kubelet.publish(pod)))));
    }
  });
  after(async () => {
    for (const volume of volumes) await h.kubelet.unpublish(volume);
    await h.close();
  });

  it('with 60 live volumes: no CPU, no request to the agent, no write over 4 idle seconds', async () => {
    const pid = h.child?.process.pid;
    assert.ok(pid);
    await sleep(1500); // let start-up and publishing work settle
    const requestsBefore = h.agent.receivedSelectorSets().length;
    const versionsBefore = await Promise.all(volumes.map(async (v) => (await readVolume(v.targetPath)).version));
    const ticksBefore = await cpuTicks(pid);
    await sleep(4000);
    const ticks = (await cpuTicks(pid)) - ticksBefore;
    assert.ok(ticks <= 4, `the idle driver used ${ticks * 10} ms of CPU in 4 s`);
    assert.equal(h.agent.receivedSelectorSets().length, requestsBefore, 'no new subscriptions');
    assert.equal(h.agent.openSvidStreams(), volumes.length, 'one stream per volume, kept open');
    assert.deepEqual(h.agent.receivedJwtFetches(), [], 'no JWT-SVID fetch without a JWT volume');
    assert.equal(h.agent.openJwtBundleStreams(), 0, 'no JWT bundle stream without a JWT volume');
    const versionsAfter = await Promise.all(volumes.map(async (v) => (await readVolume(v.targetPath)).version));
    assert.deepEqual(versionsAfter, versionsBefore, 'nothing rewritten');
  });
});

/**
 * FetchJWTSVIDs is unary, so JWT volumes are the one thing the driver
 * schedules: one refresh per volume per half of a token's remaining lifetime.
 * Over a few such periods nothing else reaches the agent.
 */
describe('idle driver with JWT volumes', () => {
  let h: Harness;
  const volumes: PublishedVolume[] = [];
  const TTL_SECONDS = 8;
  before(async () => {
    h = await Harness.start({ driverProcess: true, useTmpfs: runningAsRoot(), agent: { jwtSvidTtlSeconds: TTL_SECONDS } });
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/idle-jwt', selectors: ['k8s:ns:idle-jwt'] });
    const pods = Array.from({ length: 5 }, () => h.kubelet.createPod({ namespace: 'idle-jwt' }));
    volumes.push(...(await Promise.all(pods.map((pod) => h.kubelet.publish(pod, { attributes: { 'csi.spire.io/jwt-audiences': 'vault' } })))));
  });
  after(async () => {
    for (const volume of volumes) await h.kubelet.unpublish(volume);
    await h.close();
  });

  it(`with 5 JWT volumes of ${TTL_SECONDS} s tokens: only their FetchJWTSVIDs calls over 10 s, at most one per volume per refresh`, async () => {
    await sleep(500);
    const subscriptionsBefore = h.agent.receivedSelectorSets().length;
    const fetchesBefore = h.agent.receivedJwtFetches().length;
    await sleep(10_000);
    const fetches = h.agent.receivedJwtFetches().slice(fetchesBefore);
    assert.equal(h.agent.receivedSelectorSets().length, subscriptionsBefore, 'no new SVID subscriptions');
    assert.equal(h.agent.openSvidStreams(), volumes.length, 'one SVID stream per volume, kept open');
    assert.equal(h.agent.openJwtBundleStreams(), 1, 'one node-wide JWT bundle stream, kept open');
    // Each volume refreshes when 50-60 % of its token's remaining life has passed: a fresh
    // 8 s token every 4-4.8 s, so 2 or 3 fetches per volume in 10 s (one more if a fetch
    // caught the agent's cached token just before its half-life), never a tight loop.
    assert.ok(fetches.length >= 2 * volumes.length, `${fetches.length} fetches: every volume refreshed`);
    assert.ok(fetches.length <= 4 * volumes.length, `${fetches.length} fetches for ${volumes.length} volumes in 10 s of ${TTL_SECONDS} s tokens`);
    for (const fetch of fetches) {
      assert.deepEqual(fetch.audience, ['vault']);
      assert.ok(
        fetch.selectors.some((s) => s.type === 'k8s' && s.value === 'ns:idle-jwt'),
        "every fetch is a JWT volume's, with its pod selectors",
      );
    }
  });
});
