/**
 * Pod-start time with a csi.spire.io volume against the same pods without it, on the real cluster (run by
 * e2e/cluster/test after the scenarios; prints figures, asserts nothing but that every pod started).
 *
 * Each pod's container prints /proc/uptime as its first act; the host's /proc/uptime when `kubectl apply` is sent
 * is the start of the clock (the same clock: containers share the host kernel). `kubectl wait` would only give
 * whole seconds.
 *
 * Batches of 20 pods applied at once, each kind in several interleaved rounds:
 *   - without the volume (the baseline);
 *   - with the volume, an entry that already exists (k8s:ns + k8s:sa, created before the pods; the agent has the
 *     SVID signed already);
 *   - with the volume, a per-pod entry that spire-controller-manager creates when it sees the pod (the publish waits
 *     for the controller manager, the server and the agent's next entry sync, every 5 s by default);
 *   - the same after `helm upgrade --reuse-values` of SPIRE with the agent's sync interval at 1 s
 *     (spire-agent.experimental.syncInterval), the setting docs/kubernetes.md suggests for faster pod starts.
 */
import fs from 'node:fs/promises';
import { apply, kubectl, kubectlOk, waitFor, waitPodReady } from './kube.js';
import { clusterSpiffeId, deletePod, ensureNamespace, ensureNamespaceEntry, upgradeSpireReusingValues, workloadPod } from './fixtures.js';

const PODS = Number(process.env['POD_START_PODS'] ?? 20);
const ROUNDS = Number(process.env['POD_START_ROUNDS'] ?? 3);
// kube-public is ignored by spire-controller-manager: only the hand-made ns/sa entry matches there.
const EXISTING_NS = 'kube-public';
const PER_POD_NS = 'pod-start';

async function hostUptime(): Promise<number> {
  return Number((await fs.readFile('/proc/uptime', 'utf8')).split(' ')[0]);
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

/** A table row over all rounds: label, pods, p50, p95, range, and each round's p50 (the spread between runs). */
function row(label: string, rounds: number[][]): string {
  const fixed = (n: number | undefined) => (n ?? NaN).toFixed(0);
  const all = rounds.flat().sort((a, b) => a - b);
  const perRound = rounds.map((ms) => fixed(percentile(ms, 50))).join(', ');
  return `| ${label} | ${all.length} | ${fixed(percentile(all, 50))} | ${fixed(percentile(all, 95))} | ${fixed(all[0])}–${fixed(all[all.length - 1])} | ${perRound} |`;
}

/** Starts one pod with the volume and removes it: the agent and the driver serve that namespace. */
async function probePod(namespace: string): Promise<void> {
  await apply(workloadPod({ namespace, name: 'probe', serviceAccount: 'bench', labels: { app: 'pod-start' } }));
  await waitPodReady(namespace, 'probe', 180_000);
  await deletePod(namespace, 'probe');
}

interface Batch {
  label: string;
  namespace: string;
  withVolume: boolean;
}

async function runBatch(batch: Batch, round: number): Promise<number[]> {
  const names = Array.from({ length: PODS }, (_, i) => `start-${round}-${i}`);
  const manifests = names.map((name) =>
    workloadPod({
      namespace: batch.namespace,
      name,
      serviceAccount: 'bench',
      labels: { app: 'pod-start' },
      command: ['sh', '-c', 'cat /proc/uptime; exec sleep 3600'],
      withoutVolume: !batch.withVolume,
    }),
  );
  const list = JSON.stringify({ apiVersion: 'v1', kind: 'List', items: manifests.map((m) => JSON.parse(m) as unknown) });
  const applied = await hostUptime();
  await apply(list);
  const latencies: number[] = [];
  for (const name of names) {
    const started = await waitFor(
      `${batch.namespace}/${name} to print its start time`,
      240_000,
      async () => {
        const logs = await kubectl(['-n', batch.namespace, 'logs', name]);
        const uptime = Number(logs.stdout.split(' ')[0]);
        return logs.code === 0 && uptime > 0 ? uptime : undefined;
      },
      undefined,
      500,
    );
    latencies.push((started - applied) * 1000);
  }
  await kubectlOk(['-n', batch.namespace, 'delete', 'pod', ...names, '--wait=true', '--timeout=180s']);
  return latencies.sort((a, b) => a - b);
}

async function main(): Promise<void> {
  await ensureNamespace(EXISTING_NS, ['bench']);
  await ensureNamespace(PER_POD_NS, ['bench']);
  await ensureNamespaceEntry(EXISTING_NS, 'bench');
  await apply(
    clusterSpiffeId({
      name: 'pod-start',
      namespace: PER_POD_NS,
      podLabels: { app: 'pod-start' },
      spiffeIdTemplate: 'spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/pod/{{ .PodMeta.Name }}',
    }),
  );
  // "Already exists" means the agent has the entry: one pod served through it proves that.
  await probePod(EXISTING_NS);

  const batches: Batch[] = [
    { label: 'no volume (baseline)', namespace: PER_POD_NS, withVolume: false },
    { label: 'csi.spire.io, entry exists (ns/sa)', namespace: EXISTING_NS, withVolume: true },
    { label: 'csi.spire.io, per-pod ClusterSPIFFEID entry', namespace: PER_POD_NS, withVolume: true },
  ];
  // Rounds interleave the kinds of batch, so that a drift of the machine's load affects all alike.
  const results = batches.map(() => [] as number[][]);
  let round = 0;
  for (let r = 0; r < ROUNDS; r++) {
    for (const [i, batch] of batches.entries()) results[i]?.push(await runBatch(batch, round++));
  }
  const rows = batches.map((batch, i) => row(batch.label, results[i] ?? []));
  // The agent's entry sync at 1 s: an upgrade of the installed release, keeping its values.
  upgradeSpireReusingValues(['spire-agent.experimental.enabled=true', 'spire-agent.experimental.syncInterval=1s']);
  await kubectlOk(['-n', 'spire-server', 'rollout', 'status', 'daemonset/spire-agent', '--timeout=180s']);
  await probePod(PER_POD_NS); // the restarted agent serves again before the clock starts
  const label = 'csi.spire.io, per-pod ClusterSPIFFEID entry, spire-agent.experimental.syncInterval=1s';
  const fast: number[][] = [];
  for (let r = 0; r < ROUNDS; r++) fast.push(await runBatch({ label, namespace: PER_POD_NS, withVolume: true }, round++));
  rows.push(row(label, fast));
  console.log(`\npod start (kubectl apply of ${PODS} pods at once → container's first instruction), ms, ${ROUNDS} rounds:\n`);
  console.log('| pods | n | p50 | p95 | range | p50 of each round |\n|---|---|---|---|---|---|');
  console.log(rows.join('\n'));
  await kubectlOk(['delete', 'clusterspiffeid', 'pod-start', '--ignore-not-found']);
}

main().catch((err: unknown) => {
  console.error(`measure-pod-start: FAILED: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
