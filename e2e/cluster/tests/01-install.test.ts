/**
 * Scenario: both charts installed as docs/kubernetes.md says (e2e/cluster/install) — the driver's DaemonSet is
 * Ready, the registrar registered csi.spire.io with kubelet (CSINode), the livenessprobe answers, SPIRE's agent and
 * server run with the admin socket on the host.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import { test } from 'node:test';
import { getJson, kubectlOk, waitFor } from '../kube.js';
import { DRIVER_DAEMONSET, DRIVER_NAME, DRIVER_NAMESPACE, SPIRE_NAMESPACE, waitDaemonSetReady } from '../fixtures.js';

test('install: the driver DaemonSet is Ready with its three containers', async () => {
  await waitDaemonSetReady(DRIVER_NAMESPACE, DRIVER_DAEMONSET);
  const pods = await getJson<{ items: { status: { containerStatuses?: { name: string; ready: boolean }[] } }[] }>([
    '-n',
    DRIVER_NAMESPACE,
    'get',
    'pods',
    '-l',
    'app.kubernetes.io/name=spire-csi-driver',
  ]);
  assert.equal(pods.items.length, 1, 'one driver pod on the single node');
  const containers = pods.items[0]?.status.containerStatuses ?? [];
  assert.deepEqual(containers.map((c) => c.name).sort(), ['driver', 'livenessprobe', 'node-driver-registrar']);
  assert.ok(containers.every((c) => c.ready), `every container ready: ${JSON.stringify(containers)}`);
});

test('install: the registrar registered csi.spire.io with kubelet (CSINode lists it)', async () => {
  const drivers = await waitFor('CSINode to list csi.spire.io', 60_000, async () => {
    const out = await kubectlOk(['get', 'csinode', '-o', 'jsonpath={.items[*].spec.drivers[*].name}']);
    return out.split(' ').includes(DRIVER_NAME) ? out : undefined;
  });
  assert.ok(drivers.includes(DRIVER_NAME));
  const csiDriver = await getJson<{ spec: { podInfoOnMount: boolean; volumeLifecycleModes: string[]; attachRequired: boolean } }>([
    'get',
    'csidriver',
    DRIVER_NAME,
  ]);
  assert.equal(csiDriver.spec.podInfoOnMount, true);
  assert.deepEqual(csiDriver.spec.volumeLifecycleModes, ['Ephemeral']);
  assert.equal(csiDriver.spec.attachRequired, false);
});

test('install: the livenessprobe and the registrar answer /healthz (what kubelet probes)', async () => {
  for (const port of [9808, 9809]) {
    const response = await fetch(`http://127.0.0.1:${port}/healthz`);
    assert.equal(response.status, 200, `GET 127.0.0.1:${port}/healthz: ${response.status} ${await response.text()}`);
  }
});

test('install: the SPIRE agent serves the admin socket on the host where the driver looks for it', async () => {
  await waitDaemonSetReady(SPIRE_NAMESPACE, 'spire-agent');
  const stat = await fs.stat('/run/spire/agent/sockets/csi.spiffe.io/admin/admin.sock');
  assert.ok(stat.isSocket());
});
