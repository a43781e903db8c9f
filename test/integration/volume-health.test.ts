/**
 * NodeGetVolumeStats through the CSI socket, against the development agent:
 * the capabilities, usage of the volume's filesystem (its own tmpfs as root),
 * the condition as an SVID ages past its renewal point and expires, and while
 * the agent is down, the spec's error codes, and the earliest-expiry gauge.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { mintSvid } from '../support/certs.js';
import { Harness, eventually, runningAsRoot } from '../support/driver-harness.js';
import { isServiceError } from '../support/kubelet-simulator.js';

interface Stats {
  usage: { unit: string; total: number; used: number; available: number }[];
  volume_condition: { abnormal: boolean; message: string };
}

const SPIFFE_ID = 'spiffe://example.org/ns/health/sa/app';

describe('NodeGetVolumeStats: usage and volume condition', () => {
  let h: Harness;
  const tmpfs = runningAsRoot();
  before(async () => {
    h = await Harness.start({ useTmpfs: tmpfs });
  });
  after(async () => {
    await h.close();
  });

  const stats = async (volumeId: string, volumePath: string): Promise<Stats> =>
    (await h.kubelet.nodeCall('NodeGetVolumeStats', { volume_id: volumeId, volume_path: volumePath })) as Stats;
  const failsWith = (code: grpc.status, message?: RegExp) => (err: unknown) =>
    isServiceError(err) && err.code === code && (message === undefined || message.test(err.details));
  const earliestExpiry = async (): Promise<number | undefined> => (await h.metrics.earliestSvidExpiry.get()).values[0]?.value;
  /** Waits until the volume's condition is abnormal and returns its message. */
  const abnormalMessage = (volume: { volumeId: string; targetPath: string }, what: string): Promise<string> =>
    eventually(what, async () => {
      const result = await stats(volume.volumeId, volume.targetPath);
      return result.volume_condition.abnormal ? result.volume_condition.message : undefined;
    });

  it('advertises GET_VOLUME_STATS and VOLUME_CONDITION', async () => {
    const caps = (await h.kubelet.nodeCall('NodeGetCapabilities', {})) as { capabilities: { rpc: { type: string } }[] };
    assert.deepEqual(
      caps.capabilities.map((c) => c.rpc.type),
      ['GET_VOLUME_STATS', 'VOLUME_CONDITION', 'VOLUME_MOUNT_GROUP'],
    );
  });

  it('answers INVALID_ARGUMENT without volume_id or volume_path, NOT_FOUND for an unknown volume or another path', async () => {
    await assert.rejects(h.kubelet.nodeCall('NodeGetVolumeStats', { volume_path: '/x' }), failsWith(grpc.status.INVALID_ARGUMENT, /volume_id/));
    await assert.rejects(h.kubelet.nodeCall('NodeGetVolumeStats', { volume_id: 'csi-x' }), failsWith(grpc.status.INVALID_ARGUMENT, /volume_path/));
    await assert.rejects(stats('csi-unknown', '/some/path'), failsWith(grpc.status.NOT_FOUND, /not published on this node/));

    const pod = h.kubelet.createPod({ namespace: 'health', serviceAccount: 'paths' });
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/ns/health/sa/paths', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod);
    await assert.rejects(stats(volume.volumeId, 'some/path'), failsWith(grpc.status.NOT_FOUND, /is published at .*, not at some\/path/));
    await h.kubelet.unpublish(volume);
    await assert.rejects(stats(volume.volumeId, volume.targetPath), failsWith(grpc.status.NOT_FOUND));
  });

  it("reports the usage of the volume's filesystem and a normal condition for a fresh SVID", async () => {
    const pod = h.kubelet.createPod({ namespace: 'health', serviceAccount: 'usage' });
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/ns/health/sa/usage', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod);
    const result = await stats(volume.volumeId, volume.targetPath);
    assert.equal(result.volume_condition.abnormal, false);
    assert.match(result.volume_condition.message, /^SVID spiffe:\/\/example.org\/ns\/health\/sa\/usage valid until /);
    assert.deepEqual(
      result.usage.map((u) => u.unit),
      ['BYTES', 'INODES'],
    );
    for (const usage of result.usage) {
      assert.ok(usage.total > 0 && usage.used > 0 && usage.available >= 0, JSON.stringify(usage));
      assert.ok(usage.used + usage.available <= usage.total, JSON.stringify(usage));
    }
    if (tmpfs) {
      // The volume's own size-limited tmpfs (the harness sets 1 MiB).
      assert.equal(result.usage[0]?.total, 1024 * 1024);
    }
    const expiry = await earliestExpiry();
    assert.ok(expiry !== undefined && expiry * 1000 > Date.now(), `earliest expiry ${String(expiry)}`);
    await h.kubelet.unpublish(volume);
  });

  it('is abnormal past the renewal point without a newer SVID, then once expired; the gauge shows the earliest expiry', async () => {
    const pod = h.kubelet.createPod({ namespace: 'health', serviceAccount: 'app' });
    const entryId = await h.agent.addEntry({ spiffeId: SPIFFE_ID, selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod);
    // Lifetime 13 s, of which 10 s are over: past half way plus the grace; expires in 3 s.
    const now = Date.now();
    const aging = await mintSvid({ ca: h.agent.activeCa(), spiffeId: SPIFFE_ID, notBefore: new Date(now - 10_000), notAfter: new Date(now + 3_000) });
    h.agent.replaceSvid(entryId, { certChain: aging.certChain, keyPkcs8Der: aging.keyPkcs8Der });

    const overdue = await eventually('renewal overdue', async () => {
      const result = await stats(volume.volumeId, volume.targetPath);
      return result.volume_condition.abnormal ? result.volume_condition.message : undefined;
    });
    assert.match(
      overdue,
      /^the SVID in this volume \(spiffe:\/\/example.org\/ns\/health\/sa\/app\) should have been renewed at .* \(half its lifetime\)/,
    );
    assert.match(overdue, /Check the SPIRE agent's logs/);
    assert.equal(await earliestExpiry(), aging.notAfter.getTime() / 1000, 'the aging SVID is the earliest to expire');
    assert.equal((await h.metrics.abnormalVolumes.get()).values[0]?.value, 1);

    const expired = await eventually('expired', async () => {
      const { message } = (await stats(volume.volumeId, volume.targetPath)).volume_condition;
      return message.includes('expired at') ? message : undefined;
    });
    assert.equal(
      expired,
      `the SVID in this volume (${SPIFFE_ID}) expired at ${aging.notAfter.toISOString()}, so workloads using it fail their TLS handshakes: ` +
        "the SPIRE agent has not renewed it; check the agent's logs and the registration entry of this pod",
    );

    // The agent renews it: normal again.
    await h.agent.rotateSvids(entryId);
    await eventually('normal after renewal', async () => !(await stats(volume.volumeId, volume.targetPath)).volume_condition.abnormal);
    await h.kubelet.unpublish(volume);
  });

  it('after a driver restart, knows the SVID in the files before the agent answers (here: while the agent is down)', async () => {
    const pod = h.kubelet.createPod({ namespace: 'health', serviceAccount: 'resumed' });
    const entryId = await h.agent.addEntry({ spiffeId: 'spiffe://example.org/ns/health/sa/resumed', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod);
    const notAfter = h.agent.currentSvid(entryId).notAfter;
    await h.stopDriver();
    await h.agent.stop();
    await h.startDriver();
    assert.equal(await earliestExpiry(), notAfter.getTime() / 1000, 'the gauge has the expiry of the leaf on disk');
    const message = await abnormalMessage(volume, 'abnormal while the agent is down');
    assert.match(message, new RegExp(`The files hold the SVID spiffe://example.org/ns/health/sa/resumed, valid until ${notAfter.toISOString()}`));
    await h.agent.resume();
    await eventually(
      'normal once the agent is back',
      async () => !(await stats(volume.volumeId, volume.targetPath)).volume_condition.abnormal,
      30_000,
    );
    await h.kubelet.unpublish(volume);
  });

  it('is abnormal while the agent is down, saying why, and normal once it is back', async () => {
    const pod = h.kubelet.createPod({ namespace: 'health', serviceAccount: 'down' });
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/ns/health/sa/down', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod);
    await h.agent.stop();
    const message = await abnormalMessage(volume, 'abnormal while the agent is down');
    assert.match(message, /^the SVID in this volume cannot be renewed: /);
    assert.match(message, /The files hold the SVID spiffe:\/\/example.org\/ns\/health\/sa\/down, valid until /);
    await h.agent.resume();
    await eventually(
      'normal once the agent is back',
      async () => !(await stats(volume.volumeId, volume.targetPath)).volume_condition.abnormal,
      30_000,
    );
    await h.kubelet.unpublish(volume);
  });
});
