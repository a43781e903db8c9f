/**
 * The last scenario of e2e/cluster/test (after the pod-start measurement): docs/kubernetes.md section 9, run as
 * written. The docs' listing finds the pods that use the volumes; once they are deleted, the release, its namespace
 * and the node's directories go, kubelet drops the driver from CSINode, and no mount of the driver is left.
 */
import assert from 'node:assert/strict';
import fs, { readdirSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { apply, kubectl, kubectlOk, waitFor, waitPodReady } from './kube.js';
import {
  DRIVER_NAME,
  DRIVER_STATE_DIR,
  KUBELET_ROOT,
  deletePod,
  ensureNamespace,
  ensureNamespaceEntry,
  mountsUnder,
  runDocsBlock,
  workloadPod,
} from './fixtures.js';

test('uninstall: docs/kubernetes.md section 9 removes the driver and leaves nothing of it on the node', async () => {
  await ensureNamespace('uninstall', ['app']);
  await ensureNamespaceEntry('uninstall', 'app');
  await apply(workloadPod({ namespace: 'uninstall', name: 'user', serviceAccount: 'app' }));
  await waitPodReady('uninstall', 'user', 180_000);

  const listing = runDocsBlock('This lists them:');
  assert.match(listing, /^uninstall +user +csi\.spire\.io/m, `the docs' listing finds the pod that uses a volume:\n${listing}`);
  await deletePod('uninstall', 'user');
  // Before the docs' rm: deleting the pods unpublished their volumes, so no record and no mount remains.
  await waitFor('the driver to unpublish every volume', 60_000, async () => {
    const records = readdirSync(path.join(DRIVER_STATE_DIR, 'volumes')).filter((f) => f.endsWith('.json'));
    const mounts = (await mountsUnder(path.join(KUBELET_ROOT, 'pods'))).filter((m) => m.includes('kubernetes.io~csi'));
    return records.length === 0 && mounts.length === 0 ? true : undefined;
  });

  runDocsBlock('Then remove the release');
  runDocsBlock('Remove them on each node');

  const csiDriver = await kubectl(['get', 'csidriver', DRIVER_NAME]);
  assert.notEqual(csiDriver.code, 0, 'the CSIDriver object is gone');
  await waitFor('kubelet to drop csi.spire.io from CSINode', 120_000, async () => {
    const drivers = await kubectlOk(['get', 'csinode', '-o', 'jsonpath={.items[*].spec.drivers[*].name}']);
    return drivers.split(' ').includes(DRIVER_NAME) ? undefined : true;
  });
  assert.equal(fs.existsSync(DRIVER_STATE_DIR), false, `${DRIVER_STATE_DIR} removed`);
  assert.equal(fs.existsSync(path.join(KUBELET_ROOT, 'plugins', DRIVER_NAME)), false, 'the plugin directory removed');
  assert.equal(fs.existsSync(path.join(KUBELET_ROOT, 'plugins_registry', `${DRIVER_NAME}-reg.sock`)), false, 'no registration socket');
  const csiMounts = (await mountsUnder(path.join(KUBELET_ROOT, 'pods'))).filter((m) => m.includes('kubernetes.io~csi'));
  assert.deepEqual(csiMounts, [], 'no csi volume mount left under the pods directory');
  const namespace = await kubectl(['get', 'namespace', 'spire-csi-driver', '-o', 'jsonpath={.status.phase}']);
  assert.ok(namespace.code !== 0 || namespace.stdout === 'Terminating', 'the driver namespace is deleted');
});
