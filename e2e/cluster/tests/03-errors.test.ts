/**
 * Scenarios: what a user sees in `kubectl describe pod` when a volume cannot be served — a pod without a
 * registration entry (and kubelet's retry succeeding once the entry exists), bad volumeAttributes, and a volume
 * without readOnly: true.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { apply, describePod, getPod, kubectlOk, podEvents, waitFor, waitPodReady } from '../kube.js';
import { ensureNamespace, ensureNamespaceEntry, workloadPod, type WorkloadPodOptions } from '../fixtures.js';

// spire-controller-manager ignores kube-public (the SPIRE chart's default ignoreNamespaces), so neither a
// ClusterSPIFFEID nor the chart's fallback entry gives pods there an identity: only a hand-made entry does.
const NO_ENTRY_NS = 'kube-public';
const ERRORS_NS = 'errors';

before(async () => {
  await ensureNamespace(NO_ENTRY_NS, ['no-entry']);
  await ensureNamespace(ERRORS_NS, ['app']);
});

after(async () => {
  await kubectlOk(['-n', NO_ENTRY_NS, 'delete', 'pod', '--all', '--wait=false']);
  await kubectlOk(['delete', 'namespace', ERRORS_NS, '--wait=false']);
});

/** Waits for a FailedMount event of the pod whose message matches, and returns it. */
async function failedMountEvent(namespace: string, pod: string, pattern: RegExp, timeoutMs: number): Promise<string> {
  return waitFor(
    `a FailedMount event of ${namespace}/${pod} matching ${pattern}`,
    timeoutMs,
    async () => (await podEvents(namespace, pod)).find((e) => e.reason === 'FailedMount' && pattern.test(e.message))?.message,
    () => describePod(namespace, pod),
    1000,
  );
}

async function assertNotStarted(namespace: string, pod: string): Promise<void> {
  const status = await getPod(namespace, pod);
  assert.equal(status?.status.phase, 'Pending', `${namespace}/${pod} must not start`);
  // Until the volume is mounted kubelet creates no container; if it reports one, it must still be waiting.
  const container = status?.status.containerStatuses?.[0];
  if (container !== undefined) {
    const waiting = container.state?.['waiting'] as { reason?: string } | undefined;
    assert.equal(waiting?.reason, 'ContainerCreating', `${namespace}/${pod}: ${JSON.stringify(container)}`);
  }
  assert.notEqual(status?.status.conditions?.find((c) => c.type === 'Ready')?.status, 'True');
}

test('errors: a pod without a registration entry stays ContainerCreating; the event names the selectors and the fix; a new entry lets kubelet retry succeed', async () => {
  await apply(workloadPod({ namespace: NO_ENTRY_NS, name: 'no-entry', serviceAccount: 'no-entry' }));
  const uid = await waitFor('the pod to have a UID', 30_000, async () => (await getPod(NO_ENTRY_NS, 'no-entry'))?.metadata.uid);
  // The driver waits publishTimeout (60s, the chart's default) for a first SVID before it answers kubelet.
  const message = await failedMountEvent(NO_ENTRY_NS, 'no-entry', /no registration entry matches selectors/, 150_000);
  assert.match(message, /code = DeadlineExceeded/);
  for (const selector of [`k8s:ns:${NO_ENTRY_NS}`, 'k8s:sa:no-entry', `k8s:pod-uid:${uid}`, 'k8s:pod-name:no-entry']) {
    assert.ok(message.includes(selector), `the event names ${selector}: ${message}`);
  }
  assert.match(message, /ClusterSPIFFEID/, 'the event says how to fix it');
  await assertNotStarted(NO_ENTRY_NS, 'no-entry');

  // An entry built from namespace and service account, parented to this node's agent.
  await ensureNamespaceEntry(NO_ENTRY_NS, 'no-entry');
  // kubelet retries with backoff (at most ~2 min apart); the next publish finds the entry.
  await waitPodReady(NO_ENTRY_NS, 'no-entry', 240_000);
});

test('errors: an unknown volume attribute, a traversal file name and readOnly: false show our INVALID_ARGUMENT message in the events', async () => {
  const cases: { name: string; pod: Partial<WorkloadPodOptions>; message: RegExp }[] = [
    {
      name: 'unknown-attribute',
      pod: { volumeAttributes: { 'csi.spire.io/cert-fle': 'tls.crt' } },
      message: /code = InvalidArgument desc = unknown volume attribute "csi\.spire\.io\/cert-fle".*supported: /,
    },
    {
      name: 'traversal-file-name',
      pod: { volumeAttributes: { 'csi.spire.io/key-file': '../../etc/key.pem' } },
      message: /code = InvalidArgument desc = volume attribute "csi\.spire\.io\/key-file"/,
    },
    {
      name: 'read-write',
      pod: { csiReadOnly: false },
      message: /code = InvalidArgument desc = pod\.spec\.volumes\[\]\.csi\.readOnly must be set to true/,
    },
  ];
  for (const c of cases) {
    await apply(workloadPod({ namespace: ERRORS_NS, name: c.name, serviceAccount: 'app', ...c.pod }));
  }
  for (const c of cases) {
    const message = await failedMountEvent(ERRORS_NS, c.name, c.message, 60_000);
    assert.match(message, c.message, `${c.name}: ${message}`);
    await assertNotStarted(ERRORS_NS, c.name);
  }
});
