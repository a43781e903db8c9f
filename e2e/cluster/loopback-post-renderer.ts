/**
 * The test cluster's one deviation from a normal node, applied to both charts' output as a Helm post-renderer
 * (`helm install --post-renderer e2e/cluster/loopback-post-renderer`), never by editing a chart:
 *
 *   - every pod template gets `hostNetwork: true` and `dnsPolicy: ClusterFirstWithHostNet`: the test node's only
 *     CNI plugin is "loopback", so a pod without the host's network has no network at all (and nothing may leave
 *     the machine);
 *   - every container gets KUBERNETES_SERVICE_HOST=127.0.0.1 and KUBERNETES_SERVICE_PORT=6443: the `kubernetes`
 *     Service address (127.128.0.1) has no listener and there is no kube-proxy, so in-cluster clients
 *     (spire-server's k8s_psat, spire-agent's k8s attestor, spire-controller-manager) dial the apiserver directly;
 *   - every "0.0.0.0" in a ConfigMap becomes "127.0.0.1": the SPIRE chart binds the server's API, the health checks
 *     and spire-controller-manager's metrics and probes to all interfaces, and with hostNetwork those would be the
 *     host's;
 *   - every httpGet probe gets `host: 127.0.0.1`: kubelet probes a hostNetwork pod at the node's InternalIP, which
 *     is the host's eth0 address (kubelet refuses a loopback --node-ip), and every listener here is on loopback.
 *
 * Reads the rendered manifests on stdin and writes them to stdout, as Helm requires.
 */
import { readFileSync } from 'node:fs';
import { parseAllDocuments, stringify } from 'yaml';

type Json = Record<string, unknown>;

const LOOPBACK_ENV = [
  { name: 'KUBERNETES_SERVICE_HOST', value: '127.0.0.1' },
  { name: 'KUBERNETES_SERVICE_PORT', value: '6443' },
];

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The pod spec of a workload object, or undefined for objects without pods. */
function podSpecOf(doc: Json): Json | undefined {
  const spec = doc['spec'];
  if (!isObject(spec)) return undefined;
  if (doc['kind'] === 'Pod') return spec;
  if (doc['kind'] === 'CronJob') {
    const jobTemplate = spec['jobTemplate'];
    const jobSpec = isObject(jobTemplate) ? jobTemplate['spec'] : undefined;
    const template = isObject(jobSpec) ? jobSpec['template'] : undefined;
    return isObject(template) && isObject(template['spec']) ? template['spec'] : undefined;
  }
  const template = spec['template'];
  return isObject(template) && isObject(template['spec']) ? template['spec'] : undefined;
}

function probeOnLoopback(probe: unknown): void {
  if (isObject(probe) && isObject(probe['httpGet'])) probe['httpGet']['host'] = '127.0.0.1';
}

function adaptContainer(container: unknown): void {
  if (!isObject(container)) return;
  for (const key of ['livenessProbe', 'readinessProbe', 'startupProbe']) probeOnLoopback(container[key]);
  const env = Array.isArray(container['env']) ? (container['env'] as unknown[]) : [];
  const names = new Set(env.filter(isObject).map((e) => e['name']));
  container['env'] = [...env, ...LOOPBACK_ENV.filter((e) => !names.has(e.name))];
}

export function loopbackOnly(manifests: string): string {
  const out: string[] = [];
  for (const document of parseAllDocuments(manifests)) {
    if (document.errors.length > 0) throw new Error(`post-renderer: invalid YAML from helm: ${document.errors[0]?.message}`);
    const doc: unknown = document.toJS();
    if (!isObject(doc)) continue;
    if (doc['kind'] === 'ConfigMap' && isObject(doc['data'])) {
      const data = doc['data'];
      for (const [key, value] of Object.entries(data)) {
        if (typeof value === 'string') data[key] = value.replaceAll('0.0.0.0', '127.0.0.1');
      }
    }
    const podSpec = podSpecOf(doc);
    if (podSpec !== undefined) {
      podSpec['hostNetwork'] = true;
      podSpec['dnsPolicy'] = 'ClusterFirstWithHostNet';
      for (const key of ['initContainers', 'containers']) {
        const containers = podSpec[key];
        if (Array.isArray(containers)) containers.forEach(adaptContainer);
      }
    }
    out.push(stringify(doc));
  }
  return out.join('---\n');
}

if (process.argv[1]?.endsWith('loopback-post-renderer.js')) {
  process.stdout.write(loopbackOnly(readFileSync(0, 'utf8')));
}
