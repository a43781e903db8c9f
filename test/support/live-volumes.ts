/** Volumes published through the kubelet simulator with an entry each, and the rotation check the restart and fault tests share. */
import type { Harness } from './driver-harness.js';
import { eventually } from './driver-harness.js';
import type { PublishedVolume } from './kubelet-simulator.js';
import { assertValidSvidVolume, readVolume } from './volume-assertions.js';

export interface LiveVolume {
  volume: PublishedVolume;
  entryId: string;
  spiffeId: string;
}

/** A pod named `name` with a `k8s:pod-uid` entry for spiffe://example.org/<name>, published. */
export async function publishOne(harness: Harness, name: string): Promise<LiveVolume> {
  const pod = harness.kubelet.createPod({ name });
  const spiffeId = `spiffe://example.org/${name}`;
  const entryId = await harness.agent.addEntry({ spiffeId, selectors: [`k8s:pod-uid:${pod.uid}`] });
  return { volume: await harness.kubelet.publish(pod), entryId, spiffeId };
}

/** `count` of them, pod-0 … pod-<count-1> with spiffe://example.org/workload-<i>. */
export async function publishSome(harness: Harness, count: number): Promise<LiveVolume[]> {
  const live: LiveVolume[] = [];
  for (let i = 0; i < count; i++) {
    const pod = harness.kubelet.createPod({ name: `pod-${i}` });
    const spiffeId = `spiffe://example.org/workload-${i}`;
    const entryId = await harness.agent.addEntry({ spiffeId, selectors: [`k8s:pod-uid:${pod.uid}`] });
    live.push({ volume: await harness.kubelet.publish(pod), entryId, spiffeId });
  }
  return live;
}

/** Rotates the volumes' SVIDs on the agent and waits until every volume holds a new, valid one. */
export async function assertRotates(harness: Harness, live: readonly LiveVolume[]): Promise<void> {
  const before = await Promise.all(live.map((v) => readVolume(v.volume.targetPath)));
  for (const v of live) await harness.agent.rotateSvids(v.entryId);
  await Promise.all(
    live.map((v, i) =>
      eventually(`rotation of ${v.spiffeId}`, async () => (await readVolume(v.volume.targetPath)).leaf.serialNumber !== before[i]?.leaf.serialNumber),
    ),
  );
  for (const v of live) await assertValidSvidVolume(v.volume.targetPath, v.spiffeId);
}
