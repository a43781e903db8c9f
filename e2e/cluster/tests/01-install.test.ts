/**
 * Scenario: both charts installed as docs/kubernetes.md says (e2e/cluster/install) — the driver's DaemonSet is
 * Ready, the registrar registered csi.spire.io with kubelet (CSINode), the livenessprobe answers, SPIRE's agent and
 * server run with the admin socket on the host, and nothing of the cluster listens beyond loopback.
 */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { getJson, kubectl, kubectlOk, waitFor } from '../kube.js';
import { CLUSTER_DIR, DRIVER_DAEMONSET, DRIVER_NAME, DRIVER_NAMESPACE, SPIRE_NAMESPACE, waitDaemonSetReady } from '../fixtures.js';

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
  assert.ok(
    containers.every((c) => c.ready),
    `every container ready: ${JSON.stringify(containers)}`,
  );
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

/** TCP sockets in LISTEN state of the host's network namespace (every pod here uses it): local address and inode. */
function hostListeners(): { address: string; port: number; inode: string }[] {
  const listeners: { address: string; port: number; inode: string }[] = [];
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(file, 'utf8').split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields[3] !== '0A') continue; // LISTEN
      const [hexAddress = '', hexPort = '0'] = (fields[1] ?? '').split(':');
      listeners.push({ address: decodeAddress(hexAddress), port: parseInt(hexPort, 16), inode: fields[9] ?? '' });
    }
  }
  return listeners;
}

/** /proc/net/tcp{,6} addresses: 32-bit words in host (little-endian) order. */
function decodeAddress(hex: string): string {
  const words = hex.match(/.{8}/g) ?? [];
  const bytes = words.flatMap((w) => (w.match(/../g) ?? []).reverse().map((b) => parseInt(b, 16)));
  if (bytes.length === 4) return bytes.join('.');
  if (bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) return bytes.slice(12).join('.');
  return bytes.every((b, i) => (i < 15 ? b === 0 : b === 1)) ? '::1' : bytes.some((b) => b !== 0) ? 'ipv6' : '::';
}

/** pid of the process holding a socket inode, and whether it belongs to the cluster (a daemon or a container). */
function ownerOf(inode: string, daemonPids: Set<string>): { pid: string; command: string; cluster: boolean } | undefined {
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      let link: string;
      try {
        link = readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      if (link !== `socket:[${inode}]`) continue;
      try {
        const command = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
        const cgroup = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
        return { pid, command, cluster: daemonPids.has(pid) || cgroup.includes('kubepods') };
      } catch {
        return undefined; // the process exited meanwhile: its socket is gone with it
      }
    }
  }
  return undefined;
}

test('install: every TCP listener of the cluster (daemons, SPIRE, the driver and its sidecars) is on loopback', () => {
  const runDir = path.join(CLUSTER_DIR, 'run');
  const daemonPids = new Set(
    readdirSync(runDir)
      .filter((f) => f.endsWith('.pid'))
      .map((f) => readFileSync(path.join(runDir, f), 'utf8').trim()),
  );
  const offenders: string[] = [];
  let clusterListeners = 0;
  for (const listener of hostListeners()) {
    const owner = ownerOf(listener.inode, daemonPids);
    if (!owner?.cluster) continue;
    clusterListeners++;
    if (!listener.address.startsWith('127.') && listener.address !== '::1') {
      offenders.push(`${listener.address}:${listener.port} (pid ${owner.pid}: ${owner.command.slice(0, 120)})`);
    }
  }
  assert.ok(clusterListeners >= 8, `found the cluster's listeners (${clusterListeners})`);
  assert.deepEqual(offenders, [], 'listeners of the cluster bound beyond loopback');
});

test("install: Pod Security — the driver's pod is refused where baseline is enforced (the docs' message) and admitted in the labelled namespace", async () => {
  const daemonSet = JSON.parse(await kubectlOk(['-n', DRIVER_NAMESPACE, 'get', 'daemonset', DRIVER_DAEMONSET, '-o', 'json'])) as {
    spec: { template: { metadata: { labels: Record<string, string> }; spec: { serviceAccountName: string } } };
  };
  const podIn = (namespace: string) =>
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'psa-check', namespace, labels: daemonSet.spec.template.metadata.labels },
      spec: daemonSet.spec.template.spec,
    });
  await kubectlOk(['apply', '-f', '-'], {
    input: JSON.stringify({
      apiVersion: 'v1',
      kind: 'Namespace',
      metadata: { name: 'psa-baseline', labels: { 'pod-security.kubernetes.io/enforce': 'baseline' } },
    }),
  });
  // Pod admission looks the service account up before Pod Security decides.
  await kubectlOk(['apply', '-f', '-'], {
    input: JSON.stringify({
      apiVersion: 'v1',
      kind: 'ServiceAccount',
      metadata: { name: daemonSet.spec.template.spec.serviceAccountName, namespace: 'psa-baseline' },
    }),
  });
  // Server-side dry runs: admission decides, nothing is created.
  const refused = await kubectl(['create', '--dry-run=server', '-f', '-'], { input: podIn('psa-baseline') });
  assert.notEqual(refused.code, 0, 'baseline refuses the driver pod');
  assert.match(refused.stderr, /violates PodSecurity "baseline:latest"/);
  assert.match(
    refused.stderr,
    /hostPath volumes \(volumes "plugin-dir", "registration-dir", "pods-dir", "state-dir", "spire-agent-admin-socket-dir"\)/,
  );
  assert.match(refused.stderr, /privileged \(container "driver" must not set securityContext\.privileged=true\)/);
  const admitted = await kubectl(['create', '--dry-run=server', '-f', '-'], { input: podIn(DRIVER_NAMESPACE) });
  assert.equal(admitted.code, 0, `the namespace labelled as the docs say admits it: ${admitted.stderr}`);
  await kubectlOk(['delete', 'namespace', 'psa-baseline', '--wait=false']);
});
