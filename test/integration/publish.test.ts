import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DEFAULT_MAX_VOLUMES } from '../../src/config.js';
import { Harness, eventually } from '../support/driver-harness.js';
import { isServiceError } from '../support/kubelet-simulator.js';
import { assertValidSvidVolume, pathExists, readVolume } from '../support/volume-assertions.js';
import * as grpc from '@grpc/grpc-js';

describe('publish, rotate, unpublish through the CSI socket', () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start();
  });
  after(async () => {
    await h.close();
  });

  it('answers the Identity service and NodeGetInfo/NodeGetCapabilities', async () => {
    const info = (await h.kubelet.identityCall('GetPluginInfo')) as { name: string; vendor_version: string };
    assert.equal(info.name, 'csi.spire.io');
    assert.match(info.vendor_version, /^\d+\.\d+\.\d+/);
    assert.deepEqual(await h.kubelet.identityCall('GetPluginCapabilities'), { capabilities: [] });
    assert.deepEqual(await h.kubelet.identityCall('Probe'), { ready: { value: true } });
    const nodeInfo = (await h.kubelet.nodeCall('NodeGetInfo', {})) as { node_id: string; max_volumes_per_node: number };
    assert.equal(nodeInfo.node_id, 'node-a');
    // The harness's Config sets no maxVolumes: the driver applies the default.
    assert.equal(nodeInfo.max_volumes_per_node, DEFAULT_MAX_VOLUMES);
    const caps = (await h.kubelet.nodeCall('NodeGetCapabilities', {})) as { capabilities: { rpc: { type: string } }[] };
    assert.deepEqual(
      caps.capabilities.map((c) => c.rpc.type),
      ['GET_VOLUME_STATS', 'VOLUME_CONDITION', 'VOLUME_MOUNT_GROUP'],
    );
  });

  it('answers UNIMPLEMENTED for RPCs a node-only driver does not serve', async () => {
    await assert.rejects(h.kubelet.nodeCall('NodeStageVolume', {}), (err) => isServiceError(err) && err.code === grpc.status.UNIMPLEMENTED);
    await assert.rejects(h.kubelet.nodeCall('NodeExpandVolume', {}), (err) => isServiceError(err) && err.code === grpc.status.UNIMPLEMENTED);
  });

  it('writes a verifiable SVID, key and bundle before NodePublishVolume returns (controller-manager style entry)', async () => {
    const pod = h.kubelet.createPod({ namespace: 'shop', serviceAccount: 'cart' });
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/ns/shop/sa/cart', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod);
    await assertValidSvidVolume(volume.targetPath, 'spiffe://example.org/ns/shop/sa/cart');
    // The selectors the agent received are exactly the ones built from kubelet's pod info.
    assert.deepEqual(h.agent.receivedSelectorSets().at(-1), [
      { type: 'k8s', value: 'ns:shop' },
      { type: 'k8s', value: 'sa:cart' },
      { type: 'k8s', value: `pod-uid:${pod.uid}` },
      { type: 'k8s', value: `pod-name:${pod.name}` },
      { type: 'k8s', value: 'node-name:node-a' },
    ]);
    const modes = await Promise.all(
      ['svid.pem', 'svid_key.pem', 'svid_bundle.pem'].map(async (name) => (await fs.stat(path.join(volume.targetPath, name))).mode & 0o777),
    );
    assert.deepEqual(modes, [0o644, 0o600, 0o644]);
    for (const name of ['svid.pem', 'svid_key.pem', 'svid_bundle.pem']) {
      assert.equal(await fs.readlink(path.join(volume.targetPath, name)), `..data/${name}`);
    }
    await h.kubelet.unpublish(volume);
  });

  it('matches hand-made k8s:ns + k8s:sa entries, rotates atomically and unpublishes without a trace', async () => {
    const pod = h.kubelet.createPod({ namespace: 'billing', serviceAccount: 'api' });
    const entryId = await h.agent.addEntry({ spiffeId: 'spiffe://example.org/billing/api', selectors: ['k8s:ns:billing', 'k8s:sa:api'] });
    const volume = await h.kubelet.publish(pod);
    const before = await assertValidSvidVolume(volume.targetPath, 'spiffe://example.org/billing/api');

    await h.agent.rotateSvids(entryId);
    const after = await eventually('the rotated SVID on disk', async () => {
      const content = await readVolume(volume.targetPath);
      return content.leaf.serialNumber !== before.leaf.serialNumber ? content : undefined;
    });
    assert.notEqual(after.version, before.version, '..data points at a new version');
    assert.equal(
      after.leaf.serialNumber.toLowerCase(),
      h.agent.currentSvid(entryId).serialHex.toLowerCase().replace(/^0+/, '').padStart(after.leaf.serialNumber.length, '0'),
    );
    await assertValidSvidVolume(volume.targetPath, 'spiffe://example.org/billing/api');
    const entries = await fs.readdir(volume.targetPath);
    assert.deepEqual(entries.filter((e) => e.startsWith('..')).length, 2, 'one version dir and ..data: the old version was removed');

    await h.kubelet.unpublish(volume);
    assert.equal(await pathExists(volume.targetPath), false, 'target path removed');
    assert.deepEqual(await fs.readdir(path.join(h.config.stateDir, 'volumes')), [], 'metadata removed');
    assert.equal(h.driver?.volumes.volumeCount, 0);
    assert.equal((await h.metrics.liveVolumes.get()).values[0]?.value, 0);
  });

  it('is idempotent: a second publish of a live volume returns OK and writes nothing', async () => {
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/idem', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod);
    assert.equal((await h.metrics.liveVolumes.get()).values[0]?.value, 1, 'the gauge counts the live volume');
    const first = await readVolume(volume.targetPath);
    await h.kubelet.publish(pod);
    const second = await readVolume(volume.targetPath);
    assert.equal(second.version, first.version);
    await h.kubelet.unpublish(volume);
    // Unpublish again, and of a volume nobody ever published: both OK.
    await h.kubelet.unpublish(volume);
    await h.kubelet.unpublish(h.kubelet.volumeFor(h.kubelet.createPod()));
  });
});
