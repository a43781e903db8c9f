/**
 * Hardening #6: --max-volumes bounds the volumes one node serves, so one tenant
 * cannot grow the driver until it is OOM-killed. NodeGetInfo reports the limit;
 * a NodePublishVolume beyond it (counting live volumes and those still being
 * published) answers RESOURCE_EXHAUSTED with what to do and touches nothing,
 * while a retry of a published volume and a publish after an unpublish succeed.
 *
 * The driver runs as a real process (node dist/src/main.js) and reads the limit
 * from SPIRE_CSI_MAX_VOLUMES, which it inherits from this test process: the same
 * parser as --max-volumes on a node, without changing the shared harness.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { Harness } from '../support/driver-harness.js';
import { isServiceError, type Pod, type PublishedVolume } from '../support/kubelet-simulator.js';
import { assertValidSvidVolume, pathExists } from '../support/volume-assertions.js';

const MAX_VOLUMES = 3;
const NAMESPACE = 'limits';
const SPIFFE_ID = 'spiffe://example.org/ns/limits/sa/app';

function assertResourceExhausted(err: unknown, serving: number, detail: string): true {
  assert.ok(isServiceError(err), `expected a gRPC error, got ${String(err)}`);
  assert.equal(grpc.status[err.code], grpc.status[grpc.status.RESOURCE_EXHAUSTED], err.details);
  for (const part of [
    `this node already serves ${serving} csi.spire.io volumes (${detail})`,
    `--max-volumes=${MAX_VOLUMES}`,
    'chart value driver.maxVolumes',
    'raise it',
    'spread the pods',
  ]) {
    assert.ok(err.details.includes(part), `message lacks "${part}": ${err.details}`);
  }
  return true;
}

describe(`--max-volumes=${MAX_VOLUMES} through the CSI socket`, () => {
  let h: Harness;
  const published = new Map<Pod, PublishedVolume>();

  async function metadataFiles(): Promise<string[]> {
    return (await fs.readdir(path.join(h.config.stateDir, 'volumes'))).sort();
  }

  async function publish(pod: Pod): Promise<PublishedVolume> {
    const volume = await h.kubelet.publish(pod);
    published.set(pod, volume);
    return volume;
  }

  async function unpublish(pod: Pod): Promise<void> {
    const volume = published.get(pod);
    assert.ok(volume, 'a published pod');
    await h.kubelet.unpublish(volume);
    published.delete(pod);
  }

  function expectedMetadata(): string[] {
    return [...published.values()].map((v) => `${v.volumeId}.json`).sort();
  }

  before(async () => {
    process.env['SPIRE_CSI_MAX_VOLUMES'] = String(MAX_VOLUMES);
    // The first response waits a little, as a real agent does while it signs: publishes overlap for real.
    h = await Harness.start({ driverProcess: true, publishTimeoutMs: 8000, agent: { firstResponseDelayMs: 300 } });
    await h.agent.addEntry({ spiffeId: SPIFFE_ID, selectors: [`k8s:ns:${NAMESPACE}`, 'k8s:sa:app'] });
  });
  after(async () => {
    delete process.env['SPIRE_CSI_MAX_VOLUMES'];
    await h.close();
  });

  const pods = Array.from({ length: 6 }, (_, i) => ({
    uid: `00000000-0000-4000-8000-00000000000${i}`,
    name: `pod-${i}`,
    namespace: NAMESPACE,
    serviceAccount: 'app',
  }));

  it('NodeGetInfo reports the limit as max_volumes_per_node', async () => {
    const info = (await h.kubelet.nodeCall('NodeGetInfo', {})) as { node_id: string; max_volumes_per_node: number };
    assert.equal(info.node_id, 'node-a');
    assert.equal(info.max_volumes_per_node, MAX_VOLUMES);
  });

  it('publishes up to the limit, refuses one more with RESOURCE_EXHAUSTED and leaves nothing of it behind', async () => {
    for (const pod of pods.slice(0, 3)) await assertValidSvidVolume((await publish(pod)).targetPath, SPIFFE_ID);
    const extra = pods[3] as Pod;
    await assert.rejects(h.kubelet.publish(extra), (err) => assertResourceExhausted(err, 3, '3 published, 0 being published'));
    assert.equal(await pathExists(h.kubelet.volumeFor(extra).targetPath), false, 'no target directory for the refused volume');
    assert.deepEqual(await metadataFiles(), expectedMetadata(), 'no metadata for the refused volume');
  });

  it('a retry of a volume already published still succeeds at the limit', async () => {
    const first = pods[0] as Pod;
    const volume = await h.kubelet.publish(first);
    assert.deepEqual(volume, published.get(first));
    await assertValidSvidVolume(volume.targetPath, SPIFFE_ID);
    assert.deepEqual(await metadataFiles(), expectedMetadata());
  });

  it('after one unpublish the refused volume gets in', async () => {
    await unpublish(pods[1] as Pod);
    await assertValidSvidVolume((await publish(pods[3] as Pod)).targetPath, SPIFFE_ID);
    assert.deepEqual(await metadataFiles(), expectedMetadata());
    await assert.rejects(h.kubelet.publish(pods[1] as Pod), (err) => assertResourceExhausted(err, 3, '3 published, 0 being published'));
  });

  it('two publishes racing for the last free place: exactly one gets in, the other counts it as being published', async () => {
    await unpublish(pods[3] as Pod);
    const racers = [pods[4] as Pod, pods[5] as Pod];
    const outcomes = await Promise.allSettled(racers.map((pod) => h.kubelet.publish(pod)));
    const fulfilled = outcomes.flatMap((outcome, i) => (outcome.status === 'fulfilled' ? [racers[i] as Pod] : []));
    const rejected = outcomes.flatMap((outcome) => (outcome.status === 'rejected' ? [outcome.reason as unknown] : []));
    assert.equal(fulfilled.length, 1, `exactly one racer gets in, got ${fulfilled.length}`);
    assert.equal(rejected.length, 1);
    assertResourceExhausted(rejected[0], 3, '2 published, 1 being published');
    published.set(fulfilled[0] as Pod, h.kubelet.volumeFor(fulfilled[0] as Pod));
    assert.deepEqual(await metadataFiles(), expectedMetadata());
  });

  it('unpublishing everything frees every place', async () => {
    for (const pod of [...published.keys()]) await unpublish(pod);
    assert.deepEqual(await metadataFiles(), []);
    for (const pod of pods.slice(0, 3)) await publish(pod);
    assert.deepEqual(await metadataFiles(), expectedMetadata());
  });
});
