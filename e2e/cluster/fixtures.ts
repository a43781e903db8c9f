/**
 * What the real-cluster scenarios share: the names e2e/cluster/install used, manifests of test workloads and
 * ClusterSPIFFEIDs, reads of a pod's volume through `kubectl exec`, and the node-side view of a volume (mounts,
 * metadata records) that only the host sees.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate, createPrivateKey, createPublicKey } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { splitPem } from '../spire-testbed.js';
import { apply, exec, getJson, kubectl, kubectlOk, waitFor } from './kube.js';

export const TRUST_DOMAIN = 'example.org';
export const SPIRE_NAMESPACE = 'spire-server';
/** spire-controller-manager's class in the SPIRE chart: "<release namespace>-<release name>". */
export const SPIRE_CLASS_NAME = 'spire-server-spire';
export const DRIVER_NAMESPACE = 'spire-csi-driver';
export const DRIVER_DAEMONSET = 'spire-csi-driver';
export const DRIVER_NAME = 'csi.spire.io';
export const KUBELET_ROOT = '/var/lib/kubelet';
export const DRIVER_STATE_DIR = '/var/lib/spire-csi-driver';
export const WORKLOAD_IMAGE = process.env['IMAGE_WORKLOAD'] ?? 'localhost/spire-csi-workload:e2e';
export const MOUNT_PATH = '/run/svid';
export const REPO = path.resolve(import.meta.dirname, '../../..');
export const CLUSTER_DIR = process.env['CLUSTER_DIR'] ?? '/tmp/spire-csi-cluster';

/**
 * Runs the ```sh block of docs/kubernetes.md that follows the line containing `anchor`, as written, with the test
 * cluster's helm/kubectl wrappers (e2e/cluster/install --block), and returns its standard output.
 */
export function runDocsBlock(anchor: string): string {
  return execFileSync('bash', [path.join(REPO, 'e2e/cluster/install'), path.join(CLUSTER_DIR, 'images'), '--block', anchor], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    // Synchronous: the test runner's timeout cannot interrupt it, so it carries its own.
    timeout: 300_000,
  });
}

export interface WorkloadPodOptions {
  namespace: string;
  name: string;
  serviceAccount: string;
  labels?: Record<string, string>;
  /** The container's command; default: sleep. */
  command?: string[];
  volumeAttributes?: Record<string, string>;
  /** pod.spec.volumes[].csi.readOnly; default true. */
  csiReadOnly?: boolean;
  runAsUser?: number;
  fsGroup?: number;
  /** Without the csi.spire.io volume (the baseline of the pod-start measurement). */
  withoutVolume?: boolean;
}

/**
 * A test pod: hostNetwork (the test node's only network), no service account token, the workload image, and the
 * csi.spire.io volume mounted read-only at /run/svid — the shape docs/kubernetes.md shows.
 */
export function workloadPod(o: WorkloadPodOptions): string {
  const pod = {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: o.name, namespace: o.namespace, labels: { 'spire-csi-test': 'true', ...o.labels } },
    spec: {
      hostNetwork: true,
      serviceAccountName: o.serviceAccount,
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      terminationGracePeriodSeconds: 1,
      ...(o.runAsUser !== undefined || o.fsGroup !== undefined
        ? {
            securityContext: {
              ...(o.runAsUser !== undefined ? { runAsUser: o.runAsUser, runAsGroup: o.runAsUser, runAsNonRoot: true } : {}),
              ...(o.fsGroup !== undefined ? { fsGroup: o.fsGroup } : {}),
            },
          }
        : {}),
      containers: [
        {
          name: 'app',
          image: WORKLOAD_IMAGE,
          imagePullPolicy: 'Never',
          command: o.command ?? ['sleep', '3600'],
          ...(o.withoutVolume ? {} : { volumeMounts: [{ name: 'svid', mountPath: MOUNT_PATH, readOnly: true }] }),
        },
      ],
      ...(o.withoutVolume
        ? {}
        : {
            volumes: [
              {
                name: 'svid',
                csi: {
                  driver: DRIVER_NAME,
                  readOnly: o.csiReadOnly ?? true,
                  ...(o.volumeAttributes ? { volumeAttributes: o.volumeAttributes } : {}),
                },
              },
            ],
          }),
    },
  };
  return JSON.stringify(pod);
}

export interface ClusterSpiffeIdOptions {
  name: string;
  spiffeIdTemplate: string;
  namespace: string;
  podLabels: Record<string, string>;
  /** X.509-SVID TTL, e.g. "40s". */
  ttl?: string;
}

/** A ClusterSPIFFEID of the SPIRE chart's class, selecting pods by namespace and labels. */
export function clusterSpiffeId(o: ClusterSpiffeIdOptions): string {
  return JSON.stringify({
    apiVersion: 'spire.spiffe.io/v1alpha1',
    kind: 'ClusterSPIFFEID',
    metadata: { name: o.name, labels: { 'spire.spiffe.io/class-name': SPIRE_CLASS_NAME } },
    spec: {
      className: SPIRE_CLASS_NAME,
      spiffeIDTemplate: o.spiffeIdTemplate,
      podSelector: { matchLabels: o.podLabels },
      namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': o.namespace } },
      ...(o.ttl ? { ttl: o.ttl } : {}),
    },
  });
}

/** Runs the pinned helm (HELM_BIN, set by e2e/cluster/test) and returns its standard output. */
export function helm(args: readonly string[]): string {
  return execFileSync(process.env['HELM_BIN'] ?? 'helm', [...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 300_000 });
}

/**
 * `helm upgrade --reuse-values` of the installed SPIRE release with `--set` values (not a docs command: the tests use
 * it to put SPIRE into a state), rendered through the test cluster's post-renderer like every install.
 */
export function upgradeSpireReusingValues(sets: readonly string[]): void {
  helm([
    'upgrade',
    'spire',
    path.join(CLUSTER_DIR, 'charts', 'spire'),
    '--namespace',
    SPIRE_NAMESPACE,
    '--reuse-values',
    ...sets.flatMap((set) => ['--set', set]),
    '--post-renderer',
    path.join(REPO, 'e2e/cluster/loopback-post-renderer'),
  ]);
}

/** A namespace with a service account, created if missing. */
export async function ensureNamespace(namespace: string, serviceAccounts: readonly string[]): Promise<void> {
  await apply(JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: namespace } }));
  for (const sa of serviceAccounts) {
    await apply(JSON.stringify({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: sa, namespace } }));
  }
}

export async function deletePod(namespace: string, name: string): Promise<void> {
  await kubectlOk(['-n', namespace, 'delete', 'pod', name, '--ignore-not-found', '--wait=true', '--timeout=120s']);
}

/** The files of a pod's volume, read inside its container. */
export interface VolumeView {
  chainPem: string;
  keyPem: string;
  bundlePem: string;
  leaf: X509Certificate;
}

/**
 * Reads certificate, key and bundle in one `cat` through `..data`'s current target, so the three come from the same
 * version directory (the atomic swap's guarantee, as a reader that follows the link sees it).
 */
export async function readVolumeInPod(namespace: string, pod: string, dir = MOUNT_PATH): Promise<VolumeView> {
  const separator = '=====SPIRE-CSI-SEPARATOR=====';
  const script = `cd ${dir}/..data/ && cat svid.pem && echo ${separator} && cat svid_key.pem && echo ${separator} && cat svid_bundle.pem`;
  const out = await exec(namespace, pod, ['sh', '-c', script]);
  const [chainPem = '', keyPem = '', bundlePem = ''] = out.split(`${separator}\n`);
  const first = splitPem(chainPem)[0];
  assert.ok(first, `no certificate in ${dir}/svid.pem of ${namespace}/${pod}:\n${out.slice(0, 500)}`);
  return { chainPem, keyPem, bundlePem, leaf: new X509Certificate(first) };
}

export function uriSans(cert: X509Certificate): string[] {
  return (cert.subjectAltName ?? '')
    .split(', ')
    .filter((s) => s.startsWith('URI:'))
    .map((s) => s.slice(4));
}

/** Whether the private key is the leaf certificate's. */
export function keyMatchesLeaf(view: VolumeView): boolean {
  const fromKey = createPublicKey(createPrivateKey(view.keyPem)).export({ type: 'spki', format: 'der' });
  const fromCert = view.leaf.publicKey.export({ type: 'spki', format: 'der' });
  return Buffer.compare(fromKey, fromCert) === 0;
}

// --- the node's view ---------------------------------------------------------------------------------------------

export function podVolumeDir(podUid: string, volumeName = 'svid'): string {
  return path.join(KUBELET_ROOT, 'pods', podUid, 'volumes', 'kubernetes.io~csi', volumeName);
}

/** Mount points of the host under a directory (e.g. kubelet's pods directory), from its mount table. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const mountinfo = await fs.readFile('/proc/self/mountinfo', 'utf8');
  return mountinfo
    .split('\n')
    .map((line) => line.split(' ')[4] ?? '')
    .filter((mountPoint) => mountPoint.startsWith(`${dir}/`));
}

/** Mount points under a pod's directory. */
export async function mountsUnderPod(podUid: string): Promise<string[]> {
  return mountsUnder(path.join(KUBELET_ROOT, 'pods', podUid));
}

interface VolumeRecordJson {
  volumeId: string;
  targetPath: string;
}

/** The driver's metadata records (one JSON file per volume under <state dir>/volumes) that belong to a pod. */
export async function recordsOfPod(podUid: string): Promise<VolumeRecordJson[]> {
  const dir = path.join(DRIVER_STATE_DIR, 'volumes');
  const names = await fs.readdir(dir).catch(() => [] as string[]);
  const records: VolumeRecordJson[] = [];
  for (const name of names.filter((n) => n.endsWith('.json'))) {
    const record = JSON.parse(await fs.readFile(path.join(dir, name), 'utf8')) as VolumeRecordJson;
    if (record.targetPath.includes(`/pods/${podUid}/`)) records.push(record);
  }
  return records;
}

/** The driver container's log lines (JSON, pino), parsed; lines that are not JSON are skipped. */
export async function driverLogs(sinceSeconds?: number): Promise<Record<string, unknown>[]> {
  const out = await kubectlOk([
    '-n',
    DRIVER_NAMESPACE,
    'logs',
    `daemonset/${DRIVER_DAEMONSET}`,
    '-c',
    'driver',
    ...(sinceSeconds ? [`--since=${sinceSeconds}s`] : []),
  ]);
  const lines: Record<string, unknown>[] = [];
  for (const line of out.split('\n')) {
    try {
      lines.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // klog or plain lines of other tools
    }
  }
  return lines;
}

/** Runs spire-server's CLI in the server pod (entry show/create/delete). */
export async function spireServer(args: readonly string[]): Promise<string> {
  return kubectlOk(spireServerCommand(args));
}

function spireServerCommand(args: readonly string[]): string[] {
  return [
    '-n',
    SPIRE_NAMESPACE,
    'exec',
    'spire-server-0',
    '-c',
    'spire-server',
    '--',
    '/opt/spire/bin/spire-server',
    ...args,
    '-socketPath',
    '/tmp/spire-server/private/api.sock',
  ];
}

/**
 * A hand-made entry for every pod of a namespace and service account (selectors k8s:ns + k8s:sa), parented to this
 * node's agent, as `spire-server entry create` users make them. An identical existing entry is kept.
 */
export async function ensureNamespaceEntry(namespace: string, serviceAccount: string): Promise<string> {
  const agents = JSON.parse(await spireServer(['agent', 'list', '-output', 'json'])) as {
    agents?: { id: { trust_domain: string; path: string } }[];
  };
  const agent = agents.agents?.[0];
  assert.ok(agent, 'the node agent is attested (spire-server agent list)');
  const spiffeId = `spiffe://${TRUST_DOMAIN}/ns/${namespace}/sa/${serviceAccount}`;
  const args = ['entry', 'create', '-parentID', `spiffe://${agent.id.trust_domain}${agent.id.path}`, '-spiffeID', spiffeId];
  const result = await kubectl(spireServerCommand([...args, '-selector', `k8s:ns:${namespace}`, '-selector', `k8s:sa:${serviceAccount}`]));
  if (result.code !== 0 && !/AlreadyExists/.test(result.stdout + result.stderr)) {
    throw new Error(`spire-server entry create for ${spiffeId} failed: ${result.stdout}${result.stderr}`);
  }
  return spiffeId;
}

/**
 * Waits until the DaemonSet `name` is rolled out: its controller has seen the latest spec, and every pod it wants
 * is updated and Ready.
 */
export async function waitDaemonSetReady(namespace: string, name: string, timeoutMs = 120_000): Promise<void> {
  await waitFor(
    `daemonset ${namespace}/${name} to have its pod Ready`,
    timeoutMs,
    async () => {
      const ds = await getJson<{
        metadata: { generation: number };
        status: { observedGeneration?: number; desiredNumberScheduled?: number; numberReady?: number; updatedNumberScheduled?: number };
      }>(['-n', namespace, 'get', 'daemonset', name]);
      const { observedGeneration = 0, desiredNumberScheduled = 0, numberReady = 0, updatedNumberScheduled = 0 } = ds.status;
      const rolledOut =
        observedGeneration >= ds.metadata.generation &&
        desiredNumberScheduled > 0 &&
        numberReady === desiredNumberScheduled &&
        updatedNumberScheduled === desiredNumberScheduled;
      return rolledOut ? true : undefined;
    },
    async () => (await kubectl(['-n', namespace, 'get', 'pods', '-o', 'wide'])).stdout,
  );
}

/** UIDs of the pods with a label (e.g. a DaemonSet's), to tell a replacement from the pod it replaced. */
export async function podUids(namespace: string, labelSelector: string): Promise<string[]> {
  const out = await kubectlOk(['-n', namespace, 'get', 'pods', '-l', labelSelector, '-o', 'jsonpath={.items[*].metadata.uid}']);
  return out.split(' ').filter((uid) => uid !== '');
}

/**
 * Deletes the pods of a DaemonSet and waits for a replacement: new pod UIDs, rolled out and Ready. Returns the UIDs
 * of the replacements.
 */
export async function replaceDaemonSetPods(namespace: string, daemonSet: string, labelSelector: string): Promise<string[]> {
  const before = await podUids(namespace, labelSelector);
  assert.ok(before.length > 0, `${namespace}/${daemonSet} has a pod to delete`);
  await kubectlOk(['-n', namespace, 'delete', 'pod', '-l', labelSelector, '--wait=true', '--timeout=120s']);
  const after = await waitFor(`a new pod of ${namespace}/${daemonSet}`, 120_000, async () => {
    const uids = await podUids(namespace, labelSelector);
    return uids.length > 0 && uids.every((uid) => !before.includes(uid)) ? uids : undefined;
  });
  await waitDaemonSetReady(namespace, daemonSet);
  return after;
}
