/**
 * Consistency checks of examples/ (no cluster, no helm): the manifests parse, every csi.spire.io volume is one
 * the driver accepts, each ClusterSPIFFEID selects its pods, and the Envoy and nginx configurations point at
 * the files the volumes hold and at the SPIFFE IDs the pods get.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { parseVolumeAttributes } from '../../src/volumes/attributes.js';
import { REPO_ROOT } from './helm.js';
import { parseAllDocuments, parseDocument, type YamlValue } from './yaml.js';

const EXAMPLES = path.join(REPO_ROOT, 'examples');
const TRUST_DOMAIN = 'example.org';
/**
 * The SPIRE Helm chart's controller manager class for release "spire" in namespace "spire-server", the install
 * docs/kubernetes.md gives: "<release namespace>-<release name>".
 */
const SPIRE_CLASS = 'spire-server-spire';

interface Pod {
  kind: 'Pod';
  metadata: { name: string; namespace: string; labels?: Record<string, string> };
  spec: {
    serviceAccountName: string;
    securityContext?: { fsGroup?: number };
    containers: { name: string; volumeMounts?: { name: string; mountPath: string; subPath?: string; readOnly?: boolean }[] }[];
    volumes: {
      name: string;
      csi?: { driver: string; readOnly?: boolean; volumeAttributes?: Record<string, string> };
      configMap?: { name: string };
    }[];
  };
}
interface ClusterSPIFFEID {
  kind: 'ClusterSPIFFEID';
  metadata: { name: string; labels?: Record<string, string> };
  spec: {
    className?: string;
    spiffeIDTemplate: string;
    podSelector: { matchLabels: Record<string, string> };
    namespaceSelector: { matchLabels: Record<string, string> };
  };
}
type Manifest = Pod | ClusterSPIFFEID | { kind: string; metadata: { name: string } };

function read(...parts: string[]): string {
  return fs.readFileSync(path.join(EXAMPLES, ...parts), 'utf8');
}

function manifests(...parts: string[]): Manifest[] {
  return parseAllDocuments(read(...parts)) as unknown as Manifest[];
}

function pods(all: Manifest[]): Pod[] {
  return all.filter((m): m is Pod => m.kind === 'Pod');
}

/** The SPIFFE ID spire-controller-manager gives `pod` from a ClusterSPIFFEID that selects it. */
function spiffeIdOf(pod: Pod, all: Manifest[]): string {
  const selects = (id: ClusterSPIFFEID): boolean =>
    Object.entries(id.spec.podSelector.matchLabels).every(([k, v]) => pod.metadata.labels?.[k] === v) &&
    id.spec.namespaceSelector.matchLabels['kubernetes.io/metadata.name'] === pod.metadata.namespace;
  const ids = all.filter((m): m is ClusterSPIFFEID => m.kind === 'ClusterSPIFFEID' && selects(m as ClusterSPIFFEID));
  assert.equal(ids.length, 1, `pod ${pod.metadata.name} is selected by ${ids.length} ClusterSPIFFEIDs`);
  return (ids[0] as ClusterSPIFFEID).spec.spiffeIDTemplate
    .replace('{{ .TrustDomain }}', TRUST_DOMAIN)
    .replace('{{ .PodMeta.Namespace }}', pod.metadata.namespace)
    .replace('{{ .PodSpec.ServiceAccountName }}', pod.spec.serviceAccountName);
}

/** Where `pod`'s csi.spire.io volume is mounted (the same path in every container that mounts it). */
function svidMountPath(pod: Pod): string {
  const volume = pod.spec.volumes.find((v) => v.csi?.driver === 'csi.spire.io');
  assert.ok(volume, `pod ${pod.metadata.name} has no csi.spire.io volume`);
  const mounts = pod.spec.containers.flatMap((c) => (c.volumeMounts ?? []).filter((m) => m.name === volume.name));
  assert.ok(mounts.length > 0, `pod ${pod.metadata.name} mounts its csi.spire.io volume nowhere`);
  assert.equal(new Set(mounts.map((m) => m.mountPath)).size, 1);
  return (mounts[0] as { mountPath: string }).mountPath;
}

/**
 * Every ClusterSPIFFEID names the SPIRE chart's class, in spec.className (without it the chart's controller
 * manager ignores the resource and the pod gets the chart's fallback ID) and in the spire.spiffe.io/class-name
 * label (without it a controller manager with filterByClassName never sees the resource).
 */
function checkClassNames(all: Manifest[]): void {
  const ids = all.filter((m): m is ClusterSPIFFEID => m.kind === 'ClusterSPIFFEID');
  assert.ok(ids.length > 0, 'no ClusterSPIFFEID');
  for (const id of ids) {
    assert.equal(id.spec.className, SPIRE_CLASS, `ClusterSPIFFEID ${id.metadata.name}: spec.className`);
    assert.equal(id.metadata.labels?.['spire.spiffe.io/class-name'], SPIRE_CLASS, `ClusterSPIFFEID ${id.metadata.name}: class-name label`);
  }
}

function checkSvidVolumes(all: Manifest[]): void {
  checkClassNames(all);
  for (const pod of pods(all)) {
    for (const volume of pod.spec.volumes.filter((v) => v.csi !== undefined)) {
      assert.equal(volume.csi?.driver, 'csi.spire.io');
      assert.equal(volume.csi?.readOnly, true, `${pod.metadata.name}: the driver refuses volumes without readOnly: true`);
      assert.doesNotThrow(() => parseVolumeAttributes(volume.csi?.volumeAttributes ?? {}), `${pod.metadata.name}: volumeAttributes`);
      for (const container of pod.spec.containers) {
        for (const mount of (container.volumeMounts ?? []).filter((m) => m.name === volume.name)) {
          assert.equal(mount.subPath, undefined, `${pod.metadata.name}/${container.name}: a subPath mount never sees rotations`);
          assert.equal(mount.readOnly, true);
        }
      }
    }
    spiffeIdOf(pod, all);
  }
}

/** All `filename:` values in an Envoy config, and the `exact:` URI SAN matchers. */
function envoyFilenames(value: YamlValue, into: string[] = []): string[] {
  if (Array.isArray(value)) value.forEach((item) => envoyFilenames(item, into));
  else if (value !== null && typeof value === 'object') {
    for (const [key, child] of Object.entries(value)) {
      if ((key === 'filename' || key === 'path') && typeof child === 'string') into.push(child);
      else envoyFilenames(child, into);
    }
  }
  return into;
}

function sanMatchers(source: string): string[] {
  return [...source.matchAll(/exact: (spiffe:\/\/\S+)/g)].map((m) => m[1] as string);
}

describe('examples/', () => {
  test('examples/pod.yaml: a volume the driver accepts, for a pod its ClusterSPIFFEID selects', () => {
    const all = manifests('pod.yaml');
    checkSvidVolumes(all);
    const pod = pods(all)[0] as Pod;
    assert.equal(svidMountPath(pod), '/run/svid');
    assert.ok(pod.spec.securityContext?.fsGroup, 'the non-root example relies on fsGroup to read the key');
  });

  test('examples/envoy: SDS files point at the volume, SAN matchers name the peer pod, ConfigMaps hold the files', () => {
    const kustomization = parseDocument(read('envoy', 'kustomization.yaml')) as {
      resources: string[];
      configMapGenerator: { name: string; files: string[] }[];
    };
    const all = kustomization.resources.flatMap((resource) => manifests('envoy', resource));
    checkSvidVolumes(all);
    const byName = new Map(pods(all).map((pod) => [pod.metadata.name, pod]));
    const backend = byName.get('envoy-backend');
    const frontend = byName.get('envoy-frontend');
    assert.ok(backend && frontend);

    for (const [pod, peer] of [
      [backend, frontend],
      [frontend, backend],
    ] as const) {
      const configVolume = pod.spec.volumes.find((v) => v.configMap !== undefined);
      const generator = kustomization.configMapGenerator.find((g) => g.name === configVolume?.configMap?.name);
      assert.ok(generator, `${pod.metadata.name}: its ConfigMap comes from the configMapGenerator`);
      const files = new Map(generator.files.map((entry) => entry.split('=') as [string, string]));
      const configMount = pod.spec.containers.flatMap((c) => c.volumeMounts ?? []).find((m) => m.name === configVolume?.name)?.mountPath;
      assert.equal(configMount, '/etc/envoy');
      const bootstrapFile = files.get('envoy.yaml');
      assert.ok(bootstrapFile);
      const bootstrapSource = read('envoy', bootstrapFile);
      // Every path in the bootstrap is an SDS resource in the ConfigMap (or the ConfigMap's directory).
      for (const file of envoyFilenames(parseDocument(bootstrapSource))) {
        if (file === configMount) continue;
        assert.ok(file.startsWith(`${configMount}/`) && files.has(path.basename(file)), `${bootstrapFile}: ${file} is not in the ConfigMap`);
        // Every path in an SDS resource is on the pod's csi.spire.io volume.
        const sds = parseDocument(read('envoy', files.get(path.basename(file)) as string));
        for (const onVolume of envoyFilenames(sds)) {
          const mount = svidMountPath(pod);
          assert.ok(onVolume === mount || onVolume.startsWith(`${mount}/`), `${file}: ${onVolume} is not on the SVID volume ${mount}`);
          if (onVolume !== mount) assert.match(path.basename(onVolume), /^svid(_key|_bundle)?\.pem$/);
        }
      }
      assert.deepEqual(sanMatchers(bootstrapSource), [spiffeIdOf(peer, all)], `${bootstrapFile} accepts exactly the peer's SPIFFE ID`);
    }
  });

  test('examples/nginx: nginx.conf reads the files of the volume the pod mounts', () => {
    const all = manifests('nginx', 'pod.yaml');
    checkSvidVolumes(all);
    const pod = pods(all)[0] as Pod;
    const mount = svidMountPath(pod);
    const conf = read('nginx', 'nginx.conf');
    const files = [...conf.matchAll(/^\s*ssl_(?:certificate|certificate_key|client_certificate) (\S+);/gm)].map((m) => m[1]);
    assert.deepEqual(files, [`${mount}/svid.pem`, `${mount}/svid_key.pem`, `${mount}/svid_bundle.pem`]);
    const kustomization = parseDocument(read('nginx', 'kustomization.yaml')) as { configMapGenerator: { files: string[] }[] };
    for (const file of kustomization.configMapGenerator.flatMap((g) => g.files)) assert.ok(fs.existsSync(path.join(EXAMPLES, 'nginx', file)));
  });
});
