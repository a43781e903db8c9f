/**
 * Scenarios: a deleted pod leaves nothing of its volume on the node; the driver's own pod and the SPIRE agent's pod
 * are deleted and come back while workload pods run — their files stay, keep rotating, and new pods still start.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, test } from 'node:test';
import { apply, kubectlOk, waitFor, waitPodGone, waitPodReady } from '../kube.js';
import {
  DRIVER_DAEMONSET,
  DRIVER_NAMESPACE,
  SPIRE_NAMESPACE,
  clusterSpiffeId,
  deletePod,
  driverLogs,
  ensureNamespace,
  keyMatchesLeaf,
  mountsUnderPod,
  podVolumeDir,
  readVolumeInPod,
  recordsOfPod,
  replaceDaemonSetPods,
  workloadPod,
} from '../fixtures.js';

const NS = 'lifecycle';

before(async () => {
  await ensureNamespace(NS, ['app']);
  await apply(
    clusterSpiffeId({
      name: 'lifecycle',
      namespace: NS,
      podLabels: { app: 'lifecycle' },
      spiffeIdTemplate: 'spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/pod/{{ .PodMeta.Name }}',
      ttl: '40s',
    }),
  );
});

after(async () => {
  await kubectlOk(['delete', 'namespace', NS, '--wait=false']);
  await kubectlOk(['delete', 'clusterspiffeid', 'lifecycle', '--ignore-not-found']);
});

async function startPod(name: string): Promise<string> {
  await apply(workloadPod({ namespace: NS, name, serviceAccount: 'app', labels: { app: 'lifecycle' } }));
  const pod = await waitPodReady(NS, name);
  return pod.metadata.uid;
}

/** Waits until the pod's certificate has another serial than `serial`, and checks the pair. */
async function waitForRotation(pod: string, serial: string, why: string): Promise<string> {
  return waitFor(
    `a rotation in ${NS}/${pod} ${why}`,
    90_000,
    async () => {
      const view = await readVolumeInPod(NS, pod);
      assert.ok(keyMatchesLeaf(view), `${pod}: key does not match certificate ${view.leaf.serialNumber}`);
      return view.leaf.serialNumber !== serial ? view.leaf.serialNumber : undefined;
    },
    undefined,
    1000,
  );
}

test('lifecycle: deleting the pod unpublishes the volume and leaves nothing of it on the node', async () => {
  const uid = await startPod('short-lived');
  const [record] = await recordsOfPod(uid);
  assert.ok(record, 'the driver keeps a metadata record while the volume is published');
  assert.ok(
    (await mountsUnderPod(uid)).some((m) => m.startsWith(podVolumeDir(uid))),
    "the volume's tmpfs is mounted",
  );

  await deletePod(NS, 'short-lived');
  await waitPodGone(NS, 'short-lived');
  await waitFor(
    'the volume to be gone from the node',
    60_000,
    async () => {
      const mounts = (await mountsUnderPod(uid)).filter((m) => m.startsWith(podVolumeDir(uid)));
      return mounts.length === 0 && !fs.existsSync(podVolumeDir(uid)) && (await recordsOfPod(uid)).length === 0 ? true : undefined;
    },
    async () =>
      `mounts: ${JSON.stringify(await mountsUnderPod(uid))}, dir exists: ${fs.existsSync(podVolumeDir(uid))}, records: ${JSON.stringify(await recordsOfPod(uid))}`,
  );
  // NodeUnpublishVolume ran: the driver closed the volume's agent stream and logged it.
  const unpublished = (await driverLogs()).filter((line) => line['msg'] === 'volume unpublished' && line['volume_id'] === record.volumeId);
  assert.equal(unpublished.length, 1, `one "volume unpublished" log line for ${record.volumeId}`);
});

test('lifecycle: the driver pod is deleted and comes back; running pods keep their files and keep rotating; new pods start', async () => {
  await startPod('survivor-driver');

  await replaceDaemonSetPods(DRIVER_NAMESPACE, DRIVER_DAEMONSET, `app.kubernetes.io/name=${DRIVER_DAEMONSET}`);
  // The files were never removed: the pod reads them right after the restart.
  const during = await readVolumeInPod(NS, 'survivor-driver');
  assert.ok(keyMatchesLeaf(during));
  const resumed = await waitFor('the new driver to log its resume from the state directory', 60_000, async () =>
    (await driverLogs()).find((line) => line['msg'] === 'resumed volumes from the state directory'),
  );
  assert.ok(Number(resumed['volumes']) >= 1, `the new driver took the running pods' volumes back: ${JSON.stringify(resumed)}`);
  await waitForRotation('survivor-driver', during.leaf.serialNumber, 'after the driver restart');

  await startPod('new-after-driver');
  await deletePod(NS, 'new-after-driver');
});

test('lifecycle: the SPIRE agent pod is deleted and comes back; running pods keep rotating; new pods start', async () => {
  await startPod('survivor-agent');

  await replaceDaemonSetPods(SPIRE_NAMESPACE, 'spire-agent', 'app.kubernetes.io/name=agent');
  const during = await readVolumeInPod(NS, 'survivor-agent');
  assert.ok(keyMatchesLeaf(during), 'the files stay in place while the agent is away');
  // A rotation after the agent came back: the serial read once it is back changes again.
  await waitForRotation('survivor-agent', during.leaf.serialNumber, 'after the agent restart');

  await startPod('new-after-agent');
  await deletePod(NS, 'new-after-agent');
});
