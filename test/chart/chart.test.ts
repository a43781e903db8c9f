/**
 * Helm chart tests: `helm lint --strict`, then `helm template` with the default values and with several
 * non-default ones, checked against what kubelet, the sidecars and the driver itself expect
 * (docs/design.md facts F13, F14). The driver container's args and env go through the driver's real
 * configuration parser, so a flag the chart renders but the driver refuses fails here, not on a node.
 *
 * Needs helm (see helm.ts for where it is looked up). Without it the tests are skipped with the reason,
 * except in CI (CI=true), where that is a failure.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parseCommandLine, type Config } from '../../src/config.js';
import {
  CHART_DIR,
  locateHelm,
  readYamlFile,
  REPO_ROOT,
  renderChart,
  runHelm,
  runningInCi,
  templateArgs,
  writeValuesFile,
  type Manifest,
} from './helm.js';
import { parseDocument } from './yaml.js';

// --- the shapes the tests read --------------------------------------------------------------------

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { fieldRef?: { fieldPath: string } };
}
interface VolumeMount {
  name: string;
  mountPath: string;
  readOnly?: boolean;
  mountPropagation?: string;
}
interface Probe {
  httpGet?: { path: string; port: number | string };
}
interface Container {
  name: string;
  image: string;
  args?: string[];
  env?: EnvVar[];
  ports?: { name?: string; containerPort: number }[];
  livenessProbe?: Probe;
  securityContext?: Record<string, unknown> & { capabilities?: { drop?: string[]; add?: string[] } };
  resources?: { requests?: Record<string, unknown>; limits?: Record<string, unknown> };
  volumeMounts?: VolumeMount[];
}
interface Volume {
  name: string;
  hostPath?: { path: string; type?: string };
  emptyDir?: Record<string, unknown>;
}
interface PodSpec {
  serviceAccountName: string;
  automountServiceAccountToken?: boolean;
  priorityClassName?: string;
  nodeSelector?: Record<string, string>;
  tolerations?: unknown[];
  securityContext?: { seccompProfile?: { type: string } };
  containers: Container[];
  volumes: Volume[];
}
interface DaemonSetSpec {
  selector: { matchLabels: Record<string, string> };
  template: { metadata: { labels: Record<string, string> }; spec: PodSpec };
}

// --- helpers ---------------------------------------------------------------------------------------

const NAMESPACE = 'spire-csi-driver';
const NODE_NAME = 'node-a.example';
/** The chart has no default image.repository (no image is published yet): every render names one. */
const IMAGE_REPOSITORY = 'registry.example.com/spire-csi-driver';
const IMAGE_ARGS = ['--set', `image.repository=${IMAGE_REPOSITORY}`] as const;
/** The SPIRE Helm chart's controller manager class for release "spire" in namespace "spire-server". */
const SPIRE_CLASS = 'spire-server-spire';

function only(manifests: Manifest[], kind: string): Manifest {
  const found = manifests.filter((m) => m.kind === kind);
  assert.equal(found.length, 1, `expected one ${kind}, rendered ${found.length}`);
  return found[0] as Manifest;
}

function daemonSetSpec(manifests: Manifest[]): DaemonSetSpec {
  return only(manifests, 'DaemonSet').spec as unknown as DaemonSetSpec;
}

function container(pod: PodSpec, name: string): Container {
  const found = pod.containers.find((c) => c.name === name);
  assert.ok(found, `no container "${name}" (have ${pod.containers.map((c) => c.name).join(', ')})`);
  return found;
}

function volume(pod: PodSpec, name: string): Volume {
  const found = pod.volumes.find((v) => v.name === name);
  assert.ok(found, `no volume "${name}"`);
  return found;
}

/** The mount of `c` at `mountPath`, and the pod volume behind it. */
function mountAt(pod: PodSpec, c: Container, mountPath: string): { mount: VolumeMount; volume: Volume } {
  const mount = (c.volumeMounts ?? []).find((m) => m.mountPath === mountPath);
  assert.ok(mount, `container ${c.name} mounts nothing at ${mountPath} (mounts: ${(c.volumeMounts ?? []).map((m) => m.mountPath).join(', ')})`);
  return { mount, volume: volume(pod, mount.name) };
}

/** The value of `--name=value` in args (exactly once), or undefined. */
function flag(args: readonly string[], name: string): string | undefined {
  const values = args.filter((a) => a.startsWith(`--${name}=`)).map((a) => a.slice(name.length + 3));
  assert.ok(values.length <= 1, `--${name} given ${values.length} times`);
  return values[0];
}

/** The port of a Go listen address such as ":9808" or "0.0.0.0:9808". */
function portOf(address: string): number {
  const match = /:(\d+)$/.exec(address);
  assert.ok(match, `not a host:port address: ${address}`);
  return Number(match[1]);
}

/**
 * The driver container's environment as kubelet would set it on node NODE_NAME: plain values as they are,
 * fieldRef spec.nodeName resolved; anything else is unexpected.
 */
function containerEnv(c: Container): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const variable of c.env ?? []) {
    if (variable.value !== undefined) env[variable.name] = variable.value;
    else if (variable.valueFrom?.fieldRef?.fieldPath === 'spec.nodeName') env[variable.name] = NODE_NAME;
    else assert.fail(`env ${variable.name} has a source the test does not know: ${JSON.stringify(variable.valueFrom)}`);
  }
  return env;
}

/** Runs the driver container's args and env through the driver's own configuration parser. */
function driverConfig(c: Container): Config {
  const parsed = parseCommandLine(c.args ?? [], containerEnv(c), { runningAsRoot: true });
  assert.equal(parsed.kind, 'run');
  if (parsed.kind !== 'run') throw new Error('unreachable');
  return parsed.config;
}

function isUnder(child: string, parent: string): boolean {
  return child === parent || child.startsWith(parent.endsWith('/') ? parent : `${parent}/`);
}

interface Expected {
  releaseName: string;
  kubeletRootDir: string;
  driverName: string;
  adminSocket: string;
  stateDir: string;
  metricsPort?: number;
  clusterSPIFFEID?: { className?: string; spiffeIDTemplate: string };
}

const DEFAULTS: Expected = {
  releaseName: 'spire-csi-driver',
  kubeletRootDir: '/var/lib/kubelet',
  driverName: 'csi.spire.io',
  adminSocket: '/run/spire/agent/sockets/csi.spiffe.io/admin/admin.sock',
  stateDir: '/var/lib/spire-csi-driver',
};

/** Every property of a rendered release that must hold whatever the values. */
function checkRelease(manifests: Manifest[], expected: Expected): void {
  for (const m of manifests) {
    if (m.kind === 'CSIDriver' || m.kind === 'ClusterSPIFFEID') assert.equal(m.metadata.namespace, undefined, `${m.kind} is cluster-scoped`);
    else assert.equal(m.metadata.namespace, NAMESPACE, `${m.kind} ${m.metadata.name} is in the release namespace`);
  }
  const ds = daemonSetSpec(manifests);
  const pod = ds.template.spec;
  const driver = container(pod, 'driver');
  const registrar = container(pod, 'node-driver-registrar');
  const probe = container(pod, 'livenessprobe');
  const config = driverConfig(driver);
  const pluginDir = `${expected.kubeletRootDir}/plugins/${expected.driverName}`;

  // The driver's configuration, as the driver itself reads it.
  assert.equal(flag(driver.args ?? [], 'node-name'), undefined, 'the node name comes from the environment, not a flag');
  const nodeNameVar = (driver.env ?? []).find((v) => v.name === 'NODE_NAME');
  assert.equal(nodeNameVar?.valueFrom?.fieldRef?.fieldPath, 'spec.nodeName', 'NODE_NAME comes from fieldRef spec.nodeName');
  assert.equal(config.nodeName, NODE_NAME);
  assert.equal(config.csiSocketPath, '/csi/csi.sock');
  assert.equal(config.driverName, expected.driverName);
  assert.equal(config.kubeletRootDir, expected.kubeletRootDir);
  assert.equal(config.agentAdminSocketPath, expected.adminSocket);
  assert.equal(config.stateDir, expected.stateDir);
  assert.equal(config.useTmpfs, true, 'volumes are tmpfs-backed: keys never touch the node disk');
  assert.equal(config.metricsAddress?.port, expected.metricsPort);

  // Sockets and registration (https://github.com/kubernetes-csi/node-driver-registrar/blob/v2.17.0/README.md).
  const csiDir = path.dirname(config.csiSocketPath);
  for (const c of [driver, registrar, probe]) {
    const { volume: v } = mountAt(pod, c, csiDir);
    assert.equal(v.hostPath?.path, pluginDir, `${c.name}: the socket directory is the host's plugin dir`);
    assert.equal(flag(c.args ?? [], 'csi-address') ?? config.csiSocketPath, config.csiSocketPath, `${c.name} talks to the driver's socket`);
  }
  assert.equal(volume(pod, mountAt(pod, driver, csiDir).mount.name).hostPath?.type, 'DirectoryOrCreate');
  assert.equal(flag(registrar.args ?? [], 'kubelet-registration-path'), `${pluginDir}/csi.sock`);
  const registration = mountAt(pod, registrar, '/registration');
  assert.equal(registration.volume.hostPath?.path, `${expected.kubeletRootDir}/plugins_registry`);

  // kubelet's pods dir: same path inside, Bidirectional (the driver mounts tmpfs there), which needs privileged.
  const pods = mountAt(pod, driver, `${expected.kubeletRootDir}/pods`);
  assert.equal(pods.volume.hostPath?.path, pods.mount.mountPath, 'pods dir at the same path as on the host');
  assert.equal(pods.mount.mountPropagation, 'Bidirectional');
  assert.equal(driver.securityContext?.['privileged'], true, 'Bidirectional propagation requires a privileged container');

  // The SPIRE agent's admin socket directory: read-only, same path as on the host, the directory of --admin-socket.
  const admin = mountAt(pod, driver, path.dirname(config.agentAdminSocketPath));
  assert.equal(admin.mount.readOnly, true);
  assert.equal(admin.volume.hostPath?.path, admin.mount.mountPath);

  // The state dir: a hostPath (survives restarts) outside /tmp and /var/tmp, at the path the driver uses.
  const state = mountAt(pod, driver, config.stateDir);
  assert.equal(state.volume.hostPath?.path, config.stateDir);
  assert.ok(!isUnder(config.stateDir, '/tmp') && !isUnder(config.stateDir, '/var/tmp'), `state dir ${config.stateDir} is cleaned by tmpfiles`);
  assert.equal(state.mount.readOnly ?? false, false);

  // Every hostPath the driver uses except the plugin dir appears at its own path in the container.
  for (const mount of driver.volumeMounts ?? []) {
    const v = volume(pod, mount.name);
    if (v.hostPath !== undefined && mount.mountPath !== csiDir) assert.equal(v.hostPath.path, mount.mountPath, `${mount.name} at its host path`);
  }

  // Liveness: the driver's probe hits the livenessprobe sidecar's /healthz.
  const probeAddress = flag(probe.args ?? [], 'http-endpoint') ?? `:${flag(probe.args ?? [], 'health-port') ?? '9808'}`;
  assert.equal(driver.livenessProbe?.httpGet?.path, '/healthz');
  assert.equal(driver.livenessProbe?.httpGet?.port, portOf(probeAddress));
  const registrarAddress = flag(registrar.args ?? [], 'http-endpoint');
  assert.ok(registrarAddress, 'the registrar serves /healthz');
  assert.equal(registrar.livenessProbe?.httpGet?.port, portOf(registrarAddress));
  const ports = pod.containers.flatMap((c) => (c.ports ?? []).map((p) => p.containerPort));
  assert.equal(new Set(ports).size, ports.length, `container ports must differ: ${ports.join(', ')}`);
  if (expected.metricsPort !== undefined) {
    assert.ok(
      (driver.ports ?? []).some((p) => p.name === 'metrics' && p.containerPort === expected.metricsPort),
      'metrics port declared',
    );
  } else {
    assert.ok(!(driver.ports ?? []).some((p) => p.name === 'metrics'), 'no metrics port when metrics are off');
  }

  // Security: as tight as mounting allows.
  assert.equal(pod.securityContext?.seccompProfile?.type, 'RuntimeDefault');
  assert.equal(pod.automountServiceAccountToken, false, 'the driver never calls the Kubernetes API');
  for (const c of pod.containers) {
    assert.equal(c.securityContext?.['readOnlyRootFilesystem'], true, `${c.name}: read-only root filesystem`);
    assert.equal(c.securityContext?.['runAsUser'], 0, `${c.name}: root (it owns the sockets and mounts)`);
    assert.deepEqual(c.securityContext?.capabilities?.drop, ['ALL'], `${c.name}: drops all capabilities`);
    assert.equal(c.securityContext?.capabilities?.add, undefined, `${c.name}: adds no capability`);
    assert.ok(c.resources?.requests && c.resources.limits, `${c.name}: resource requests and limits`);
    if (c !== driver) {
      assert.notEqual(c.securityContext?.['privileged'], true, `${c.name} is not privileged`);
      assert.equal(c.securityContext?.['allowPrivilegeEscalation'], false, `${c.name}: no privilege escalation`);
    }
  }
  assert.equal(pod.priorityClassName, 'system-node-critical');
  assert.deepEqual(pod.nodeSelector, { 'kubernetes.io/os': 'linux' });
  assert.ok((pod.tolerations ?? []).length > 0, 'tolerations set');

  // Images: the driver's tag is the chart's appVersion (= package.json version); pinned sidecars.
  const chart = readYamlFile(path.join(CHART_DIR, 'Chart.yaml')) as { appVersion: string };
  const packageJson = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
  assert.equal(chart.appVersion, packageJson.version, 'Chart.yaml appVersion equals package.json version');
  assert.equal(driver.image, `${IMAGE_REPOSITORY}:${chart.appVersion}`);
  assert.equal(registrar.image, 'registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.17.0');
  assert.equal(probe.image, 'registry.k8s.io/sig-storage/livenessprobe:v2.19.0');

  // Pod labels carry the selector.
  for (const [key, value] of Object.entries(ds.selector.matchLabels)) assert.equal(ds.template.metadata.labels[key], value);

  // The ServiceAccount the pods run as.
  const sa = only(manifests, 'ServiceAccount');
  assert.equal(sa.metadata.name, pod.serviceAccountName);
  assert.equal(sa['automountServiceAccountToken'], false);

  // The CSIDriver object (https://github.com/kubernetes/api/blob/v0.36.3/storage/v1/types.go).
  const csiDriver = only(manifests, 'CSIDriver');
  assert.equal(csiDriver.apiVersion, 'storage.k8s.io/v1');
  assert.equal(csiDriver.metadata.name, config.driverName, 'CSIDriver name equals what GetPluginInfo reports');
  assert.deepEqual(csiDriver.spec, {
    attachRequired: false,
    podInfoOnMount: true,
    volumeLifecycleModes: ['Ephemeral'],
    fsGroupPolicy: 'None',
    requiresRepublish: false,
    seLinuxMount: false,
  });

  // The driver's own registration entry, when asked for.
  const ids = manifests.filter((m) => m.kind === 'ClusterSPIFFEID');
  if (expected.clusterSPIFFEID === undefined) {
    assert.equal(ids.length, 0, 'no ClusterSPIFFEID unless enabled');
  } else {
    const id = only(manifests, 'ClusterSPIFFEID');
    assert.equal(id.apiVersion, 'spire.spiffe.io/v1alpha1');
    const spec = id.spec as {
      className?: string;
      spiffeIDTemplate: string;
      podSelector: { matchLabels: Record<string, string> };
      namespaceSelector: { matchLabels: Record<string, string> };
    };
    assert.equal(spec.className, expected.clusterSPIFFEID.className);
    // The label the SPIRE chart puts on its own ClusterSPIFFEIDs; a controller manager with filterByClassName
    // watches only ClusterSPIFFEIDs that carry it.
    assert.equal(id.metadata.labels?.['spire.spiffe.io/class-name'], expected.clusterSPIFFEID.className, 'class-name label equals spec.className');
    assert.equal(spec.spiffeIDTemplate, expected.clusterSPIFFEID.spiffeIDTemplate);
    assert.deepEqual(spec.podSelector.matchLabels, ds.selector.matchLabels, 'selects exactly the driver pods');
    assert.deepEqual(spec.namespaceSelector.matchLabels, { 'kubernetes.io/metadata.name': NAMESPACE });
  }
}

// --- the tests -------------------------------------------------------------------------------------

const location = locateHelm();

if (!location.found && runningInCi()) {
  test('helm is available for the chart tests (CI)', () => {
    assert.fail(`${location.reason}. CI must provide helm: run \`eval "$(e2e/setup --print-env helm)"\` before the tests.`);
  });
}

describe('Helm chart charts/spire-csi-driver', { skip: location.found ? false : `skipped: ${location.reason}` }, () => {
  const helm = location.found ? location.path : 'helm';
  let scratch = '';

  before(() => {
    scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'spire-csi-chart-'));
  });
  after(() => {
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  const customValues = {
    kubeletRootDir: '/var/snap/microk8s/common/var/lib/kubelet',
    driver: {
      name: 'spire.example.com',
      adminSocket: '/var/run/spire/admin-api/admin.sock',
      stateDir: '/data/spire-csi-driver',
      publishTimeout: '90s',
      tmpfs: 'auto',
      logLevel: 'debug',
    },
    metrics: { enabled: true, port: 9500 },
    livenessprobe: { port: 9900 },
    registrar: { httpPort: 9901 },
    clusterSPIFFEID: { enabled: true, className: SPIRE_CLASS },
  };

  let valuesFiles = 0;

  /** helm template with an explicit image repository plus `values` (if any). */
  function render(values?: unknown, options: { releaseName?: string; chartDir?: string; extraArgs?: string[] } = {}): Manifest[] {
    return renderChart(helm, {
      ...options,
      ...(values === undefined ? {} : { valuesFile: writeValuesFile(scratch, `v${String(++valuesFiles)}`, values) }),
      extraArgs: [...IMAGE_ARGS, ...(options.extraArgs ?? [])],
    });
  }

  /** helm template with an explicit image repository and `values`, expected to fail; returns helm's stderr. */
  function refusedRender(values: unknown): string {
    const file = writeValuesFile(scratch, `refused${String(++valuesFiles)}`, values);
    const result = runHelm(helm, templateArgs({ valuesFile: file, extraArgs: IMAGE_ARGS }));
    assert.notEqual(result.status, 0, `helm template accepted ${JSON.stringify(values)}`);
    return result.stderr;
  }

  test('helm lint --strict passes with the default and the non-default values', () => {
    // Lint mode turns `fail` into an [INFO] line, so the missing image.repository does not fail the lint.
    const lint = runHelm(helm, ['lint', '--strict', CHART_DIR]);
    assert.equal(lint.status, 0, `helm lint --strict failed:\n${lint.stdout}\n${lint.stderr}`);
    const file = writeValuesFile(scratch, 'lint-custom', customValues);
    const custom = runHelm(helm, ['lint', '--strict', CHART_DIR, '--values', file, ...IMAGE_ARGS]);
    assert.equal(custom.status, 0, `helm lint --strict with custom values failed:\n${custom.stdout}\n${custom.stderr}`);
  });

  test('no default image: without image.repository the render fails and says how to build and set one', () => {
    const result = runHelm(helm, templateArgs());
    assert.notEqual(result.status, 0, 'helm template accepted the chart without image.repository');
    assert.match(result.stderr, /image\.repository is not set/);
    assert.match(result.stderr, /docker build -t \S+ \./, 'names the build command');
    assert.match(result.stderr, /--set image\.repository=/, 'names the value to set');
    const values = readYamlFile(path.join(CHART_DIR, 'values.yaml')) as { image: { repository: string } };
    assert.equal(values.image.repository, '', 'no registry path the project does not publish');
  });

  test('default values: the driver, both sidecars and the CSIDriver are wired to kubelet and the SPIRE agent', () => {
    const manifests = render();
    assert.deepEqual(manifests.map((m) => m.kind).sort(), ['CSIDriver', 'DaemonSet', 'ServiceAccount']);
    checkRelease(manifests, DEFAULTS);
    const driver = container(daemonSetSpec(manifests).template.spec, 'driver');
    assert.equal(driverConfig(driver).publishTimeoutMs, 60_000);
    assert.equal(flag(driver.args ?? [], 'max-volumes'), '1000');
    assert.equal(driverConfig(driver).maxVolumes, 1000);
  });

  test('non-default kubelet root, driver name, admin socket, state dir, ports, metrics and ClusterSPIFFEID', () => {
    const manifests = render(customValues);
    checkRelease(manifests, {
      ...DEFAULTS,
      kubeletRootDir: customValues.kubeletRootDir,
      driverName: customValues.driver.name,
      adminSocket: customValues.driver.adminSocket,
      stateDir: customValues.driver.stateDir,
      metricsPort: 9500,
      clusterSPIFFEID: {
        className: SPIRE_CLASS,
        spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}',
      },
    });
    const pod = daemonSetSpec(manifests).template.spec;
    const config = driverConfig(container(pod, 'driver'));
    assert.equal(config.publishTimeoutMs, 90_000);
    assert.equal(config.logLevel, 'debug');
    assert.equal(container(pod, 'driver').livenessProbe?.httpGet?.port, 9900);
  });

  test('metrics alone, and a ClusterSPIFFEID with a fixed SPIFFE ID and no class', () => {
    const metricsOnly = render({ metrics: { enabled: true } });
    checkRelease(metricsOnly, { ...DEFAULTS, metricsPort: 9402 });
    const fixed = 'spiffe://{{ .TrustDomain }}/spire-csi-driver';
    const withId = render({ clusterSPIFFEID: { enabled: true, spiffeIDTemplate: fixed } }, { releaseName: 'identity' });
    checkRelease(withId, { ...DEFAULTS, releaseName: 'identity', clusterSPIFFEID: { spiffeIDTemplate: fixed } });
    const id = only(withId, 'ClusterSPIFFEID');
    assert.ok(!Object.keys(id.metadata.labels ?? {}).includes('spire.spiffe.io/class-name'), 'no class-name label without a class');
  });

  test('metrics.prometheusRule: absent by default, a PrometheusRule with the three alerts when enabled, refused without metrics', () => {
    assert.ok(!render({ metrics: { enabled: true } }).some((m) => m.kind === 'PrometheusRule'), 'no PrometheusRule unless enabled');
    const manifests = render({
      metrics: { enabled: true, prometheusRule: { enabled: true, labels: { release: 'kps' }, svidExpiringWithinSeconds: 600 } },
    });
    checkRelease(manifests, { ...DEFAULTS, metricsPort: 9402 });
    const rule = only(manifests, 'PrometheusRule');
    assert.equal(rule.apiVersion, 'monitoring.coreos.com/v1');
    assert.equal(rule.metadata.namespace, 'spire-csi-driver', 'in the release namespace');
    assert.equal(rule.metadata.labels?.['release'], 'kps');
    assert.equal(rule.metadata.labels?.['app.kubernetes.io/name'], 'spire-csi-driver');
    const groups = (rule.spec?.['groups'] ?? []) as {
      name: string;
      rules: { alert: string; expr: string; for?: string; annotations: Record<string, string> }[];
    }[];
    const rules = groups.flatMap((g) => g.rules);
    assert.deepEqual(
      rules.map((r) => r.alert),
      ['SpireCsiSvidExpiringSoon', 'SpireCsiVolumeWritesFailing', 'SpireCsiVolumesAbnormal'],
    );
    const byName = new Map(rules.map((r) => [r.alert, r]));
    assert.equal(byName.get('SpireCsiSvidExpiringSoon')?.expr, 'spire_csi_svid_earliest_expiry_timestamp_seconds - time() < 600');
    assert.equal(byName.get('SpireCsiVolumeWritesFailing')?.expr, 'spire_csi_volumes_write_failing > 0');
    assert.equal(byName.get('SpireCsiVolumeWritesFailing')?.for, '5m');
    assert.equal(byName.get('SpireCsiVolumesAbnormal')?.expr, 'spire_csi_volumes_abnormal > 0');
    // Prometheus templates reach Prometheus unexpanded by helm.
    assert.match(byName.get('SpireCsiSvidExpiringSoon')?.annotations['description'] ?? '', /\{\{ \$value \| humanizeDuration \}\}/);
    // Only series without per-volume labels: the metrics the rule reads carry none.
    for (const r of rules) assert.doesNotMatch(r.expr, /\{/, `${r.alert} selects no labels`);

    assert.match(refusedRender({ metrics: { prometheusRule: { enabled: true } } }), /metrics\.prometheusRule\.enabled needs metrics\.enabled/);
    assert.match(refusedRender({ metrics: { enabled: true, prometheusRule: { enabled: true, for: 'soon' } } }), /for/);
  });

  test('the ClusterSPIFFEID carries the class in spec.className and in the label spire.spiffe.io/class-name', () => {
    const id = only(render({ clusterSPIFFEID: { enabled: true, className: SPIRE_CLASS } }), 'ClusterSPIFFEID');
    assert.equal((id.spec as { className?: string }).className, SPIRE_CLASS);
    assert.equal(id.metadata.labels?.['spire.spiffe.io/class-name'], SPIRE_CLASS);
  });

  test("driver.tmpfs: YAML booleans and the driver's words all render as --tmpfs=true|false|auto", () => {
    for (const [value, flagValue, useTmpfs] of [
      [true, 'true', true],
      [false, 'false', false],
      ['true', 'true', true],
      ['false', 'false', false],
      ['auto', 'auto', true],
    ] as const) {
      const driver = container(daemonSetSpec(render({ driver: { tmpfs: value } })).template.spec, 'driver');
      assert.equal(flag(driver.args ?? [], 'tmpfs'), flagValue, `tmpfs: ${JSON.stringify(value)}`);
      assert.equal(driverConfig(driver).useTmpfs, useTmpfs, `tmpfs: ${JSON.stringify(value)}`);
    }
    // --set driver.tmpfs=false gives helm a boolean too.
    const driver = container(daemonSetSpec(render(undefined, { extraArgs: ['--set', 'driver.tmpfs=false'] })).template.spec, 'driver');
    assert.equal(flag(driver.args ?? [], 'tmpfs'), 'false');
  });

  test('driver.publishTimeout: the chart accepts exactly the durations the driver accepts (above 0, below 2m)', () => {
    const durations: (string | number)[] = [
      '60s',
      '1m30s',
      '500ms',
      '1m59s',
      '119999ms',
      '1m59.5s',
      '0.5m',
      '90',
      '1.5',
      90,
      1.5,
      '30s1m',
      '0.6ms',
      '2m',
      '120s',
      '1m60s',
      '2m0s',
      '120000ms',
      '1h',
      '0s',
      '0',
      0,
      120,
      '119.9999999s1ms',
      '119999.6ms',
      '0.4ms',
      '1d',
      '-5s',
      '5 s',
      '1m30',
      '',
      '30sec',
      '1e2s',
    ];
    for (const value of durations) {
      const what = `publishTimeout: ${JSON.stringify(value)}`;
      const driverArgs = [`--publish-timeout=${String(value)}`];
      let driverMs: number | undefined;
      try {
        const parsed = parseCommandLine(driverArgs, { NODE_NAME }, { runningAsRoot: true });
        driverMs = parsed.kind === 'run' ? parsed.config.publishTimeoutMs : undefined;
      } catch {
        driverMs = undefined;
      }
      const file = writeValuesFile(scratch, `timeout${String(++valuesFiles)}`, { driver: { publishTimeout: value } });
      const result = runHelm(helm, templateArgs({ valuesFile: file, extraArgs: IMAGE_ARGS }));
      if (driverMs === undefined) {
        assert.notEqual(result.status, 0, `${what}: the chart accepts what the driver refuses`);
        assert.match(result.stderr, /publishTimeout/, what);
      } else {
        assert.equal(result.status, 0, `${what}: the chart refuses what the driver accepts (${String(driverMs)} ms):\n${result.stderr}`);
        const driver = container(daemonSetSpec(render({ driver: { publishTimeout: value } })).template.spec, 'driver');
        assert.equal(driverConfig(driver).publishTimeoutMs, driverMs, what);
      }
    }
    // The chart's own message, not only the schema's.
    assert.match(refusedRender({ driver: { publishTimeout: '2m' } }), /driver\.publishTimeout must be a duration above 0 and below 2m/);
    assert.match(refusedRender({ driver: { publishTimeout: '0s' } }), /driver\.publishTimeout must be a duration above 0 and below 2m/);
  });

  test('driver.maxVolumes renders as --max-volumes, read by the driver as the same whole number', () => {
    // 1000000 as a YAML number reaches the template as float64, which prints as 1e+06 unless converted.
    for (const value of [1, 3, 250, 1_000_000]) {
      const driver = container(daemonSetSpec(render({ driver: { maxVolumes: value } })).template.spec, 'driver');
      assert.equal(flag(driver.args ?? [], 'max-volumes'), String(value), `maxVolumes: ${value}`);
      assert.equal(driverConfig(driver).maxVolumes, value, `maxVolumes: ${value}`);
    }
    // --set gives helm an int64 rather than a float64.
    const driver = container(daemonSetSpec(render(undefined, { extraArgs: ['--set', 'driver.maxVolumes=5'] })).template.spec, 'driver');
    assert.equal(flag(driver.args ?? [], 'max-volumes'), '5');
    assert.equal(driverConfig(driver).maxVolumes, 5);
  });

  test('updateStrategy.rollingUpdate.maxSurge: only 0 is accepted (two drivers on a node break each other)', () => {
    for (const maxSurge of [0, '0%']) {
      const ds = only(render({ updateStrategy: { rollingUpdate: { maxUnavailable: '10%', maxSurge } } }), 'DaemonSet');
      assert.deepEqual((ds.spec as { updateStrategy: unknown }).updateStrategy, {
        type: 'RollingUpdate',
        rollingUpdate: { maxUnavailable: '10%', maxSurge },
      });
    }
    for (const maxSurge of [1, '10%', '100%']) {
      const stderr = refusedRender({ updateStrategy: { rollingUpdate: { maxUnavailable: 0, maxSurge } } });
      assert.match(stderr, /updateStrategy\.rollingUpdate\.maxSurge must be 0/, `maxSurge ${JSON.stringify(maxSurge)}`);
    }
    const ds = only(render(), 'DaemonSet');
    assert.deepEqual((ds.spec as { updateStrategy: unknown }).updateStrategy, { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1 } });
  });

  test('a trailing slash on kubeletRootDir is refused by the schema', () => {
    assert.match(refusedRender({ kubeletRootDir: '/var/lib/kubelet/' }), /kubeletRootDir/);
  });

  const refused: [string, unknown, RegExp][] = [
    ['a state dir under /tmp', { driver: { stateDir: '/tmp/spire-csi' } }, /stateDir/],
    ['a state dir under /var/tmp', { driver: { stateDir: '/var/tmp/spire-csi' } }, /stateDir/],
    ['a relative admin socket', { driver: { adminSocket: 'admin.sock' } }, /adminSocket/],
    ['an admin socket directly in /', { driver: { adminSocket: '/admin.sock' } }, /adminSocket/],
    ['a driver.tmpfs the driver does not know', { driver: { tmpfs: 'yes' } }, /tmpfs/],
    ['a driver.tmpfs in capitals', { driver: { tmpfs: 'True' } }, /tmpfs/],
    ['an unknown rollingUpdate field', { updateStrategy: { rollingUpdate: { partition: 1 } } }, /partition/],
    ['a className that is no label value', { clusterSPIFFEID: { enabled: true, className: 'spire server/spire' } }, /className/],
    ['a driver name CSI does not allow', { driver: { name: 'csi.spire.io-' } }, /name/],
    ['driver.maxVolumes 0', { driver: { maxVolumes: 0 } }, /maxVolumes/],
    ['a negative driver.maxVolumes', { driver: { maxVolumes: -1 } }, /maxVolumes/],
    ['a fractional driver.maxVolumes', { driver: { maxVolumes: 2.5 } }, /maxVolumes/],
    ['driver.maxVolumes as a string', { driver: { maxVolumes: '100' } }, /maxVolumes/],
    ['driver.maxVolumes null', { driver: { maxVolumes: null } }, /maxVolumes/],
    ['an unknown value', { driver: { nodeName: 'x' } }, /nodeName/],
    ['an unknown top-level value', { kubeletDir: '/x' }, /kubeletDir/],
    ['a state dir inside the pods dir', { driver: { stateDir: '/var/lib/kubelet/pods/state' } }, /overlap/],
    ['the admin socket in the state dir', { driver: { adminSocket: '/var/lib/spire-csi-driver/admin.sock' } }, /overlap/],
    ['equal ports', { metrics: { enabled: true, port: 9808 } }, /must differ/],
  ];
  for (const [what, values, message] of refused) {
    test(`refused at render time: ${what}`, () => {
      assert.match(refusedRender(values), message);
    });
  }

  test('Kubernetes older than 1.26 (no fsGroup delegation to the driver) is refused', () => {
    const result = runHelm(helm, [...templateArgs({ extraArgs: IMAGE_ARGS }), '--kube-version', '1.25.0']);
    assert.notEqual(result.status, 0);
    assert.match(result.stderr, /kubeVersion/);
  });

  test('NOTES.txt names the SPIRE chart values and the driver SPIFFE ID the ClusterSPIFFEID gives', () => {
    // helm template does not render NOTES.txt: render it through tpl in a copy of the chart.
    const copy = path.join(scratch, 'notes-chart');
    fs.cpSync(CHART_DIR, copy, { recursive: true });
    fs.renameSync(path.join(copy, 'templates', 'NOTES.txt'), path.join(copy, 'notes.txt'));
    fs.writeFileSync(
      path.join(copy, 'templates', 'zz-notes.yaml'),
      'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n',
    );
    const values = writeValuesFile(scratch, 'notes', { global: { spire: { trustDomain: 'example.org' } }, clusterSPIFFEID: { enabled: true } });
    const manifests = renderChart(helm, { chartDir: copy, valuesFile: values, releaseName: 'csi', extraArgs: IMAGE_ARGS });
    const notes = (only(manifests, 'ConfigMap')['data'] as { notes: string }).notes;
    const pod = daemonSetSpec(manifests).template.spec;
    const spec = only(manifests, 'ClusterSPIFFEID').spec as { spiffeIDTemplate: string };
    const driverId = spec.spiffeIDTemplate
      .replace('{{ .TrustDomain }}', 'example.org')
      .replace('{{ .PodMeta.Namespace }}', NAMESPACE)
      .replace('{{ .PodSpec.ServiceAccountName }}', pod.serviceAccountName);
    assert.equal(driverId, 'spiffe://example.org/ns/spire-csi-driver/sa/csi-spire-csi-driver');
    const spireValues = /^( *spire-agent:\n[\s\S]*?authorizedDelegates:\n\s+- "[^"]+")/m.exec(notes);
    assert.ok(spireValues, `NOTES.txt has no spire-agent values block:\n${notes}`);
    const block = (spireValues[1] as string).split('\n');
    const indent = (block[0] as string).length - (block[0] as string).trimStart().length;
    assert.deepEqual(parseDocument(block.map((line) => line.slice(indent)).join('\n')), {
      'spire-agent': { sockets: { admin: { enabled: true, mountOnHost: true } }, authorizedDelegates: [driverId] },
    });
    const driver = container(pod, 'driver');
    assert.ok(notes.includes(driverConfig(driver).agentAdminSocketPath), 'NOTES.txt names the admin socket path');
  });

  test('values.yaml documents every value', () => {
    const undocumented = undocumentedValues(fs.readFileSync(path.join(CHART_DIR, 'values.yaml'), 'utf8'));
    assert.deepEqual(undocumented, [], `values without a comment: ${undocumented.join(', ')}`);
  });
});

/**
 * Keys of values.yaml without a comment. A key needs a comment line right above it, except a section
 * whose children are documented one by one; a "# --" comment documents the key's whole subtree
 * (resources, updateStrategy and other Kubernetes objects).
 */
function undocumentedValues(source: string): string[] {
  const lines = source.split('\n');
  const missing: string[] = [];
  const stack: { indent: number; key: string; coversSubtree: boolean }[] = [];
  lines.forEach((line, index) => {
    const match = /^( *)([A-Za-z0-9_.-]+):(.*)$/.exec(line);
    if (!match) return;
    const indent = (match[1] as string).length;
    while (stack.length > 0 && (stack[stack.length - 1] as { indent: number }).indent >= indent) stack.pop();
    let previous = index - 1;
    while (previous >= 0 && (lines[previous] as string).trim() === '') previous--;
    const comment = previous >= 0 && (lines[previous] as string).trim().startsWith('#');
    // A "# --" comment may run over several lines: find its first line.
    let first = previous;
    while (comment && first > 0 && (lines[first - 1] as string).trim().startsWith('#') && !(lines[first] as string).trim().startsWith('# --'))
      first--;
    const coversSubtree = comment && (lines[first] as string).trim().startsWith('# --');
    const covered = stack.some((entry) => entry.coversSubtree);
    const isSection = (match[3] as string).trim() === '';
    const key = [...stack.map((entry) => entry.key), match[2] as string].join('.');
    if (!comment && !covered && !isSection) missing.push(key);
    stack.push({ indent, key: match[2] as string, coversSubtree });
  });
  return missing;
}
