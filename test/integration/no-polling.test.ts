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
    const versionsAfter = await Promise.all(volumes.map(async (v) => (await readVolume(v.targetPath)).version));
    assert.deepEqual(versionsAfter, versionsBefore, 'nothing rewritten');
  });
});
