import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import type { AccessModeName, NodePublishVolumeRequest, VolumeCapability } from '../../src/csi/messages.js';
import { parsePublishRequest } from '../../src/csi/publish-request.js';
import type { PublishSpec } from '../../src/volumes/publish-spec.js';
import { KubeletSimulator, type Pod } from '../support/kubelet-simulator.js';
import { expectInvalidArgument } from '../support/invalid-argument.js';

const KUBELET_ROOT = '/var/lib/kubelet';
// Only publishRequest/volumeFor/createPod are used: no connection is ever made.
const kubelet = new KubeletSimulator({ csiSocketPath: '/nonexistent/spire-csi-unit/csi.sock', kubeletRootDir: KUBELET_ROOT });
after(() => kubelet.close());

const pod: Pod = kubelet.createPod({ uid: '0f5e8d6a-3c2b-4e1f-9a7d-5b6c8e9f0a1b', name: 'app-0', namespace: 'team-a', serviceAccount: 'app' });
const victim: Pod = kubelet.createPod({
  uid: '7d1c2b3a-9e8f-4a5b-8c7d-6e5f4a3b2c1d',
  name: 'spire-server-0',
  namespace: 'spire',
  serviceAccount: 'spire-server',
});

function parse(request: NodePublishVolumeRequest, kubeletRootDir = KUBELET_ROOT): PublishSpec {
  return parsePublishRequest(request, { kubeletRootDir });
}

function rejected(request: NodePublishVolumeRequest, ...patterns: RegExp[]): string {
  return expectInvalidArgument(() => parse(request), ...patterns);
}

function mountCapability(overrides: Partial<VolumeCapability> = {}): VolumeCapability {
  return {
    mount: { fs_type: '', mount_flags: [], volume_mount_group: '' },
    access_type: 'mount',
    access_mode: { mode: 'SINGLE_NODE_WRITER' },
    ...overrides,
  };
}

/** What csi-sanity sends: no pod info, a target path outside kubelet's tree. */
function sanityRequest(overrides: Partial<NodePublishVolumeRequest>): NodePublishVolumeRequest {
  return {
    volume_id: 'sanity-volume',
    publish_context: {},
    staging_target_path: '',
    target_path: '/tmp/csi-mount/target',
    volume_capability: mountCapability(),
    readonly: false,
    secrets: {},
    volume_context: {},
    ...overrides,
  };
}

describe('a request as kubelet sends it', () => {
  test('is parsed into the publish spec', () => {
    const request = kubelet.publishRequest(pod);
    const volume = kubelet.volumeFor(pod);
    assert.deepEqual(parse(request), {
      volumeId: volume.volumeId,
      targetPath: volume.targetPath,
      volumeName: 'svid',
      pod: { uid: pod.uid, name: 'app-0', namespace: 'team-a', serviceAccount: 'app' },
      attributes: {
        layout: 'spiffe-helper',
        certFile: 'svid.pem',
        keyFile: 'svid_key.pem',
        bundleFile: 'svid_bundle.pem',
        credentialBundleFile: undefined,
        pkcs12File: undefined,
        pkcs12Password: undefined,
        fsGroup: undefined,
        spiffeId: undefined,
        hint: undefined,
        federatedBundles: 'separate',
        combinedBundleFile: undefined,
      },
      fsGroup: null,
    } satisfies PublishSpec);
  });

  test('another volume name and user attributes', () => {
    const spec = parse(
      kubelet.publishRequest(pod, {
        volumeName: 'spiffe',
        attributes: { 'csi.spire.io/cert-file': 'tls.crt', 'csi.spire.io/spiffe-id': 'spiffe://example.org/app', 'csi.spire.io/hint': 'int' },
      }),
    );
    assert.equal(spec.volumeName, 'spiffe');
    assert.equal(spec.attributes.certFile, 'tls.crt');
    assert.equal(spec.attributes.spiffeId, 'spiffe://example.org/app');
    assert.equal(spec.attributes.hint, 'int');
  });

  test('the service-account tokens kubelet may add are accepted and not kept', () => {
    const request = kubelet.publishRequest(pod);
    request.volume_context['csi.storage.k8s.io/serviceAccount.tokens'] = '{"spire":{"token":"eyJ.secret.sig"}}';
    const spec = parse(request);
    assert.doesNotMatch(JSON.stringify(spec), /eyJ\.secret\.sig|tokens/);
  });

  test('secrets are never carried into the spec', () => {
    const request = kubelet.publishRequest(pod);
    request.secrets = { password: 'hunter2' };
    assert.doesNotMatch(JSON.stringify(parse(request)), /hunter2/);
  });

  test('the spec has no place for selectors', () => {
    assert.deepEqual(Object.keys(parse(kubelet.publishRequest(pod))).sort(), [
      'attributes',
      'fsGroup',
      'pod',
      'targetPath',
      'volumeId',
      'volumeName',
    ]);
  });

  test('every single-node access mode is accepted', () => {
    for (const mode of ['SINGLE_NODE_WRITER', 'SINGLE_NODE_READER_ONLY', 'SINGLE_NODE_SINGLE_WRITER', 'SINGLE_NODE_MULTI_WRITER'] as const) {
      const request = kubelet.publishRequest(pod);
      request.volume_capability = mountCapability({ access_mode: { mode } });
      assert.equal(parse(request).volumeName, 'svid', mode);
    }
  });

  test('fs_type "tmpfs" is accepted', () => {
    const request = kubelet.publishRequest(pod);
    request.volume_capability = mountCapability({ mount: { fs_type: 'tmpfs', mount_flags: [], volume_mount_group: '' } });
    assert.equal(parse(request).volumeName, 'svid');
  });

  test('a configured kubelet root directory', () => {
    const other = new KubeletSimulator({ csiSocketPath: '/nonexistent/spire-csi-unit/csi.sock', kubeletRootDir: '/data/kubelet' });
    try {
      assert.equal(parse(other.publishRequest(pod), '/data/kubelet').volumeName, 'svid');
      rejected(other.publishRequest(pod), /target_path .* does not belong to pod/, /--kubelet-root-dir/);
    } finally {
      other.close();
    }
  });
});

describe("csi-sanity's requests (empty volume_context)", () => {
  test('no volume_id', () => {
    rejected(sanityRequest({ volume_id: '' }), /^volume_id is required$/);
  });

  test('no target_path', () => {
    rejected(sanityRequest({ target_path: '' }), /^target_path is required$/);
  });

  test('no volume_capability', () => {
    rejected(sanityRequest({ volume_capability: null }), /^volume_capability is required$/);
  });

  test('a complete request without pod info says to set podInfoOnMount', () => {
    rejected(sanityRequest({ readonly: true }), /podInfoOnMount: true/);
  });

  test('readonly false is reported before the missing pod info', () => {
    rejected(sanityRequest({}), /readOnly must be set to true/);
  });
});

describe('capabilities', () => {
  test('block access is refused', () => {
    const request = kubelet.publishRequest(pod);
    request.volume_capability = { block: {}, access_type: 'block', access_mode: { mode: 'SINGLE_NODE_WRITER' } };
    rejected(request, /block access is not supported/, /volumeDevices/);
  });

  test('a block member without access_type is refused too', () => {
    const request = kubelet.publishRequest(pod);
    request.volume_capability = { block: {}, mount: null, access_mode: { mode: 'SINGLE_NODE_WRITER' } };
    rejected(request, /block access is not supported/);
  });

  test('no mount member is refused', () => {
    const request = kubelet.publishRequest(pod);
    request.volume_capability = { mount: null, access_mode: { mode: 'SINGLE_NODE_WRITER' } };
    rejected(request, /volume_capability must be a mount capability/);
  });

  test('a missing access mode is refused', () => {
    const request = kubelet.publishRequest(pod);
    request.volume_capability = mountCapability({ access_mode: null });
    rejected(request, /volume_capability\.access_mode UNKNOWN is not supported/, /SINGLE_NODE_WRITER/);
  });

  test('multi-node and unknown access modes are refused', () => {
    for (const mode of ['MULTI_NODE_MULTI_WRITER', 'MULTI_NODE_READER_ONLY', 'MULTI_NODE_SINGLE_WRITER', 'UNKNOWN'] satisfies AccessModeName[]) {
      const request = kubelet.publishRequest(pod);
      request.volume_capability = mountCapability({ access_mode: { mode } });
      rejected(request, new RegExp(`access_mode ${mode} is not supported`), /node-local/);
    }
  });

  test('fs_type ext4 is refused', () => {
    const request = kubelet.publishRequest(pod);
    request.volume_capability = mountCapability({ mount: { fs_type: 'ext4', mount_flags: [], volume_mount_group: '' } });
    rejected(request, /fsType "ext4" is not supported/, /remove fsType/);
  });

  test('mount flags are refused', () => {
    for (const flags of [['ro'], ['context="system_u:object_r:container_file_t:s0:c1,c2"'], ['exec', 'suid']]) {
      const request = kubelet.publishRequest(pod);
      request.volume_capability = mountCapability({ mount: { fs_type: '', mount_flags: flags, volume_mount_group: '' } });
      rejected(request, /mount flags are not supported/, /seLinuxMount/);
    }
  });

  test('readonly false is refused and the message names readOnly', () => {
    rejected(kubelet.publishRequest(pod, { readOnly: false }), /pod\.spec\.volumes\[\]\.csi\.readOnly must be set to true/);
  });
});

describe('fsGroup', () => {
  test("volume_mount_group (the pod's fsGroup) is used", () => {
    assert.equal(parse(kubelet.publishRequest(pod, { fsGroup: 1000 })).fsGroup, 1000);
    assert.equal(parse(kubelet.publishRequest(pod, { fsGroup: 4294967294 })).fsGroup, 4294967294);
  });

  test('no volume_mount_group means no group', () => {
    assert.equal(parse(kubelet.publishRequest(pod)).fsGroup, null);
  });

  test('csi.spire.io/fs-group overrides volume_mount_group', () => {
    const spec = parse(kubelet.publishRequest(pod, { fsGroup: 1000, attributes: { 'csi.spire.io/fs-group': '2000' } }));
    assert.equal(spec.fsGroup, 2000);
    assert.equal(spec.attributes.fsGroup, 2000);
  });

  test('csi.spire.io/fs-group without volume_mount_group', () => {
    assert.equal(parse(kubelet.publishRequest(pod, { attributes: { 'csi.spire.io/fs-group': '3000' } })).fsGroup, 3000);
  });

  test('a bad volume_mount_group is refused', () => {
    for (const value of ['abc', '-1', ' 5', '12a', '4294967295', '1.5']) {
      const request = kubelet.publishRequest(pod);
      request.volume_capability = mountCapability({ mount: { fs_type: '', mount_flags: [], volume_mount_group: value } });
      rejected(request, new RegExp(`volume_mount_group ${JSON.stringify(value).replace(/[.+]/g, '\\$&')}`), /pod\.spec\.securityContext\.fsGroup/);
    }
  });

  test('volume_mount_group 0 (Kubernetes allows fsGroup: 0) is the root group', () => {
    assert.equal(parse(kubelet.publishRequest(pod, { fsGroup: 0 })).fsGroup, 0);
  });

  test('a bad csi.spire.io/fs-group is refused even with a good volume_mount_group', () => {
    rejected(kubelet.publishRequest(pod, { fsGroup: 1000, attributes: { 'csi.spire.io/fs-group': '-5' } }), /"csi\.spire\.io\/fs-group"="-5"/);
  });
});

describe('the pod cannot influence its selectors (invariant 1)', () => {
  test('user attributes that name pod fields or selectors are refused', () => {
    const attempts: Record<string, string>[] = [
      { 'csi.spire.io/pod-uid': victim.uid },
      { 'csi.spire.io/pod-name': victim.name },
      { 'csi.spire.io/namespace': victim.namespace },
      { 'csi.spire.io/service-account': victim.serviceAccount },
      { 'csi.spire.io/node-name': 'other-node' },
      { 'csi.spire.io/selectors': 'k8s:ns:spire' },
      { selectors: 'k8s:sa:spire-server' },
      { 'spiffe.io/spire-selectors': 'k8s:ns:spire' },
    ];
    for (const attributes of attempts) {
      rejected(kubelet.publishRequest(pod, { attributes }), /unknown volume attribute/);
    }
  });

  test("user attributes with kubelet's own keys are overwritten by kubelet, so the pod stays the real one", () => {
    const spec = parse(
      kubelet.publishRequest(pod, {
        attributes: {
          'csi.storage.k8s.io/pod.uid': victim.uid,
          'csi.storage.k8s.io/pod.name': victim.name,
          'csi.storage.k8s.io/pod.namespace': victim.namespace,
          'csi.storage.k8s.io/serviceAccount.name': victim.serviceAccount,
        },
      }),
    );
    assert.deepEqual(spec.pod, pod);
  });

  test("a request that claims another pod's identity but another pod's target path is refused", () => {
    // The identity keys say "victim", the path and id belong to "pod".
    const request = kubelet.publishRequest(pod);
    request.volume_context['csi.storage.k8s.io/pod.uid'] = victim.uid;
    request.volume_context['csi.storage.k8s.io/pod.namespace'] = victim.namespace;
    request.volume_context['csi.storage.k8s.io/serviceAccount.name'] = victim.serviceAccount;
    rejected(request, new RegExp(`target_path .* does not belong to pod ${victim.uid}`));
  });

  test("the victim's path with the attacker's pod info is refused", () => {
    const request = kubelet.publishRequest(pod);
    const target = kubelet.volumeFor(victim);
    request.target_path = target.targetPath;
    request.volume_id = target.volumeId;
    rejected(request, new RegExp(`target_path .* does not belong to pod ${pod.uid}`));
  });

  test("the pod's own path with another volume's id is refused", () => {
    const request = kubelet.publishRequest(pod);
    request.volume_id = kubelet.volumeFor(pod, 'other').volumeId;
    rejected(request, /volume_id .* does not belong to volume "svid"/);
  });

  test('a non-ephemeral (PersistentVolume) request is refused', () => {
    const request = kubelet.publishRequest(pod);
    request.volume_context['csi.storage.k8s.io/ephemeral'] = 'false';
    rejected(request, /only inline ephemeral volumes/);
  });

  test('a request whose path climbs out of the pod directory is refused', () => {
    const request = kubelet.publishRequest(pod);
    request.target_path = `${KUBELET_ROOT}/pods/${pod.uid}/volumes/kubernetes.io~csi/../../../${victim.uid}/volumes/kubernetes.io~csi/svid/mount`;
    rejected(request, /does not belong to pod/);
  });
});
