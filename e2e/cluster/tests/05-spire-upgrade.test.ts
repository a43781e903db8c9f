/**
 * Scenario: a user who already runs SPIRE follows docs/kubernetes.md step 1 for an existing release. Starting from a
 * release without the driver's keys (no admin socket, no delegates), the docs' `--reuse-values` command and then
 * the docs' full-values-file command are run as written (e2e/cluster/install --block): the release keeps its chart
 * version and its values, the agent rolls by itself (no manual restart), and pods get SVIDs again.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, test } from 'node:test';
import { apply, kubectlOk, waitFor, waitPodReady } from '../kube.js';
import {
  SPIRE_NAMESPACE,
  clusterSpiffeId,
  deletePod,
  ensureNamespace,
  helm,
  podUids,
  runDocsBlock,
  upgradeSpireReusingValues,
  waitDaemonSetReady,
  workloadPod,
} from '../fixtures.js';

const ADMIN_SOCKET = '/run/spire/agent/sockets/csi.spiffe.io/admin/admin.sock';
const NS = 'upgrade';

interface ReleaseJson {
  name: string;
  chart: string;
  revision: string;
}

function spireRelease(): ReleaseJson {
  const releases = JSON.parse(helm(['-n', SPIRE_NAMESPACE, 'list', '--filter', '^spire$', '--output', 'json'])) as ReleaseJson[];
  assert.equal(releases.length, 1);
  return releases[0] as ReleaseJson;
}

function spireValues(): { global?: { spire?: { trustDomain?: string; clusterName?: string } }; 'spire-agent'?: Record<string, unknown> } {
  return JSON.parse(helm(['-n', SPIRE_NAMESPACE, 'get', 'values', 'spire', '--output', 'json'])) as ReturnType<typeof spireValues>;
}

const agentPodUids = () => podUids(SPIRE_NAMESPACE, 'app.kubernetes.io/name=agent');

async function waitAgentRolled(previous: string[], why: string): Promise<void> {
  await waitFor(`the agent DaemonSet to roll by itself ${why}`, 120_000, async () => {
    const uids = await agentPodUids();
    return uids.length > 0 && uids.every((uid) => !previous.includes(uid)) ? true : undefined;
  });
  await waitDaemonSetReady(SPIRE_NAMESPACE, 'spire-agent');
}

before(async () => {
  await ensureNamespace(NS, ['app']);
  await apply(
    clusterSpiffeId({
      name: 'upgrade',
      namespace: NS,
      podLabels: { app: 'upgrade' },
      spiffeIdTemplate: 'spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}',
    }),
  );
});

after(async () => {
  await kubectlOk(['delete', 'namespace', NS, '--wait=false']);
  await kubectlOk(['delete', 'clusterspiffeid', 'upgrade', '--ignore-not-found']);
});

test("upgrade: the docs' commands for an existing SPIRE release add the driver's keys, keep version and values, and roll the agent by itself", async () => {
  const installed = spireRelease();
  const valuesBefore = spireValues();
  assert.equal(valuesBefore.global?.spire?.trustDomain, 'example.org');

  // An existing SPIRE without the admin socket or delegates: what a user has before reading step 1.
  let agentUids = await agentPodUids();
  upgradeSpireReusingValues([
    'spire-agent.sockets.admin.enabled=false',
    'spire-agent.sockets.admin.mountOnHost=false',
    'spire-agent.authorizedDelegates=null',
  ]);
  await waitAgentRolled(agentUids, 'after the admin socket was switched off');
  await waitFor('the admin socket to disappear from the host', 60_000, async () => (fs.existsSync(ADMIN_SOCKET) ? undefined : true));

  // The docs' command without the values file at hand: --reuse-values plus the three keys, the installed version.
  agentUids = await agentPodUids();
  runDocsBlock('or, without that file at hand, keep the release');
  await waitAgentRolled(agentUids, "after the docs' --reuse-values upgrade (checksum/config)");
  const afterReuse = spireRelease();
  assert.equal(afterReuse.chart, installed.chart, 'the chart version stays the one installed');
  const values = spireValues();
  assert.equal(values.global?.spire?.trustDomain, 'example.org', 'the release keeps its trust domain');
  assert.equal(values.global?.spire?.clusterName, 'my-cluster', 'the release keeps its cluster name');
  await waitFor('the admin socket on the host again', 60_000, async () => (fs.existsSync(ADMIN_SOCKET) ? true : undefined));

  await apply(workloadPod({ namespace: NS, name: 'after-reuse', serviceAccount: 'app', labels: { app: 'upgrade' } }));
  await waitPodReady(NS, 'after-reuse', 180_000);
  await deletePod(NS, 'after-reuse');

  // The docs' command with the full values file: same version, same values, and pods still get SVIDs.
  runDocsBlock('Either add the three keys to the values file');
  const afterFile = spireRelease();
  assert.equal(afterFile.chart, installed.chart);
  assert.ok(Number(afterFile.revision) > Number(afterReuse.revision), 'the upgrade ran');
  assert.equal(spireValues().global?.spire?.trustDomain, 'example.org');
  await waitDaemonSetReady(SPIRE_NAMESPACE, 'spire-agent');
  await apply(workloadPod({ namespace: NS, name: 'after-file', serviceAccount: 'app', labels: { app: 'upgrade' } }));
  await waitPodReady(NS, 'after-file', 180_000);
});
