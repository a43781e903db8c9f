import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import { checkPodBinding, expectedTargetPath, inlineVolumeId, kubeletVolumeAt, POD_INFO_KEYS, readPodInfo } from '../../src/volumes/pod-binding.js';
import { expectInvalidArgument } from '../support/invalid-argument.js';

const ROOT = '/var/lib/kubelet';
const UID = '0f5e8d6a-3c2b-4e1f-9a7d-5b6c8e9f0a1b';
const OTHER_UID = '7d1c2b3a-9e8f-4a5b-8c7d-6e5f4a3b2c1d';

/** kubelet's makeVolumeHandle, computed here without the module under test. */
function kubeletVolumeHandle(podUid: string, volumeName: string): string {
  return 'csi-' + createHash('sha256').update(`${podUid}${volumeName}`, 'utf8').digest('hex');
}

/** kubelet's target path, spelled out by hand. */
function kubeletTargetPath(podUid: string, volumeName: string, root = ROOT): string {
  return `${root}/pods/${podUid}/volumes/kubernetes.io~csi/${volumeName}/mount`;
}

const expectInvalid = expectInvalidArgument;

function bind(targetPath: string, volumeId: string, podUid = UID, kubeletRootDir = ROOT): string {
  return checkPodBinding({ targetPath, volumeId, podUid, kubeletRootDir });
}

describe('inlineVolumeId', () => {
  test("equals kubelet's csi- + hex(sha256(podUID + volumeName))", () => {
    for (const [uid, name] of [
      [UID, 'svid'],
      [OTHER_UID, 'spiffe'],
      ['d41d8cd98f00b204e9800998ecf8427e', 'x'],
      [UID, 'a'.repeat(63)],
    ] as const) {
      assert.equal(inlineVolumeId(uid, name), kubeletVolumeHandle(uid, name));
    }
  });

  test('a fixed vector computed with sha256sum', () => {
    // printf '%s' "0f5e8d6a-3c2b-4e1f-9a7d-5b6c8e9f0a1bsvid" | sha256sum
    assert.equal(inlineVolumeId(UID, 'svid'), 'csi-6c8fa669a66af04a87929cb3925b31e2340dd920c7ba5cbad896e542a2331a30');
  });

  test('the id is "csi-" and 64 lower-case hex digits', () => {
    assert.match(inlineVolumeId(UID, 'svid'), /^csi-[0-9a-f]{64}$/);
  });

  test('different pods or volume names give different ids', () => {
    assert.notEqual(inlineVolumeId(UID, 'svid'), inlineVolumeId(OTHER_UID, 'svid'));
    assert.notEqual(inlineVolumeId(UID, 'svid'), inlineVolumeId(UID, 'svid2'));
  });
});

describe('expectedTargetPath', () => {
  test("is kubelet's layout", () => {
    assert.equal(expectedTargetPath(ROOT, UID, 'svid'), kubeletTargetPath(UID, 'svid'));
    assert.equal(expectedTargetPath('/data/kubelet', UID, 'svid'), kubeletTargetPath(UID, 'svid', '/data/kubelet'));
  });
});

describe('checkPodBinding accepts exactly what kubelet sends', () => {
  test("kubelet's path and id give back the volume name", () => {
    assert.equal(bind(kubeletTargetPath(UID, 'svid'), kubeletVolumeHandle(UID, 'svid')), 'svid');
  });

  test('volume names that are DNS labels, up to 63 characters', () => {
    for (const name of ['a', 'spiffe-svid', 'v1', '0', 'a'.repeat(63)]) {
      assert.equal(bind(kubeletTargetPath(UID, name), kubeletVolumeHandle(UID, name)), name);
    }
  });

  test('another kubelet root directory when configured', () => {
    const root = '/data/kubelet';
    assert.equal(bind(kubeletTargetPath(UID, 'svid', root), kubeletVolumeHandle(UID, 'svid'), UID, root), 'svid');
  });

  test('a static pod uid (32 hex digits)', () => {
    const uid = 'd41d8cd98f00b204e9800998ecf8427e';
    assert.equal(bind(kubeletTargetPath(uid, 'svid'), kubeletVolumeHandle(uid, 'svid'), uid), 'svid');
  });
});

describe('checkPodBinding refuses requests that are not bound to the pod (invariant 2)', () => {
  const id = kubeletVolumeHandle(UID, 'svid');

  test("another pod's uid in the target path", () => {
    const message = expectInvalid(
      () => bind(kubeletTargetPath(OTHER_UID, 'svid'), id),
      /target_path ".*" does not belong to pod 0f5e8d6a-3c2b-4e1f-9a7d-5b6c8e9f0a1b/,
      /expected \/var\/lib\/kubelet\/pods\/0f5e8d6a-3c2b-4e1f-9a7d-5b6c8e9f0a1b\/volumes\/kubernetes\.io~csi\/<volume-name>\/mount/,
      /--kubelet-root-dir/,
    );
    assert.ok(message.includes(OTHER_UID));
  });

  test("another pod's path and that pod's own volume id", () => {
    expectInvalid(() => bind(kubeletTargetPath(OTHER_UID, 'svid'), kubeletVolumeHandle(OTHER_UID, 'svid')), /does not belong to pod/);
  });

  test('the volume id of another volume of the same pod', () => {
    expectInvalid(
      () => bind(kubeletTargetPath(UID, 'svid'), kubeletVolumeHandle(UID, 'other')),
      /volume_id "csi-[0-9a-f]{64}" does not belong to volume "svid" of pod 0f5e8d6a-3c2b-4e1f-9a7d-5b6c8e9f0a1b/,
      new RegExp(`kubelet would send ${id}`),
    );
  });

  test('the volume id of the same volume name in another pod', () => {
    expectInvalid(
      () => bind(kubeletTargetPath(UID, 'svid'), kubeletVolumeHandle(OTHER_UID, 'svid')),
      /volume_id .* does not belong to volume "svid"/,
    );
  });

  test('volume ids that are not kubelet-made', () => {
    for (const volumeId of ['', 'svid', id.toUpperCase(), id.slice(4), `${id} `, `csi-${'0'.repeat(64)}`, id.replace(/^csi-/, 'CSI-')]) {
      expectInvalid(() => bind(kubeletTargetPath(UID, 'svid'), volumeId), /volume_id .* does not belong to volume "svid"/);
    }
  });

  test('".." segments', () => {
    for (const targetPath of [
      `${ROOT}/pods/${UID}/volumes/kubernetes.io~csi/svid/../svid/mount`,
      `${ROOT}/pods/${UID}/../${UID}/volumes/kubernetes.io~csi/svid/mount`,
      `${ROOT}/../kubelet/pods/${UID}/volumes/kubernetes.io~csi/svid/mount`,
      `${ROOT}/pods/${UID}/volumes/kubernetes.io~csi/svid/mount/..`,
      `${ROOT}/pods/${UID}/volumes/kubernetes.io~csi/svid/./mount`,
    ]) {
      expectInvalid(() => bind(targetPath, id), /does not belong to pod/);
    }
  });

  test('double slashes', () => {
    for (const targetPath of [
      `${ROOT}/pods/${UID}/volumes/kubernetes.io~csi//svid/mount`,
      `${ROOT}//pods/${UID}/volumes/kubernetes.io~csi/svid/mount`,
      `/${ROOT}/pods/${UID}/volumes/kubernetes.io~csi/svid/mount`,
      `${ROOT}/pods/${UID}/volumes/kubernetes.io~csi/svid//mount`,
    ]) {
      expectInvalid(() => bind(targetPath, id), /does not belong to pod/);
    }
  });

  test('a trailing slash', () => {
    expectInvalid(() => bind(`${kubeletTargetPath(UID, 'svid')}/`, id), /does not belong to pod/);
  });

  test('another kubelet root', () => {
    for (const root of ['/var/lib/kubelet2', '/var/lib', '/data/kubelet', '/', '/var/lib/kubelet/pods']) {
      expectInvalid(() => bind(kubeletTargetPath(UID, 'svid', root), id), /does not belong to pod/, /--kubelet-root-dir/);
    }
  });

  test('the final "mount" is missing or different', () => {
    for (const targetPath of [
      `${ROOT}/pods/${UID}/volumes/kubernetes.io~csi/svid`,
      `${ROOT}/pods/${UID}/volumes/kubernetes.io~csi/svid/mnt`,
      `${ROOT}/pods/${UID}/volumes/kubernetes.io~csi/svid/mount/x`,
      `${ROOT}/pods/${UID}/volumes/kubernetes.io~csi/svid/Mount`,
      `${ROOT}/pods/${UID}/volumes/kubernetes.io~csi/mount`,
      `${ROOT}/pods/${UID}/volumes/kubernetes.io~csi/svidmount`,
    ]) {
      expectInvalid(() => bind(targetPath, id), /does not belong to pod/);
    }
  });

  test('another volume plugin directory', () => {
    for (const plugin of ['kubernetes.io~empty-dir', 'kubernetes.io~secret', 'kubernetes.io~projected']) {
      expectInvalid(() => bind(`${ROOT}/pods/${UID}/volumes/${plugin}/svid/mount`, id), /does not belong to pod/);
    }
  });

  test('an upper-case or otherwise non-DNS-label volume name', () => {
    for (const name of ['SVID', 'Svid', 'svid_1', 'svid.pem', '-svid', 'svid-', 'a'.repeat(64), 'svid mount']) {
      expectInvalid(() => bind(kubeletTargetPath(UID, name), kubeletVolumeHandle(UID, name)), /does not belong to pod/, /<volume-name>/);
    }
  });

  test('path traversal through the volume name', () => {
    // The "volume name" would climb into another pod's volume directory.
    const climbs = [
      `../../../${OTHER_UID}/volumes/kubernetes.io~csi/svid`,
      `svid/mount/../../../../../${OTHER_UID}/volumes/kubernetes.io~csi/svid`,
      'svid/mount/x',
      '..',
      '.',
    ];
    for (const name of climbs) {
      const targetPath = `${ROOT}/pods/${UID}/volumes/kubernetes.io~csi/${name}/mount`;
      expectInvalid(() => bind(targetPath, kubeletVolumeHandle(UID, name)), /does not belong to pod/, new RegExp(UID));
    }
  });

  test('a relative target path', () => {
    expectInvalid(() => bind(`var/lib/kubelet/pods/${UID}/volumes/kubernetes.io~csi/svid/mount`, id), /does not belong to pod/);
  });

  test('an empty target path', () => {
    expectInvalid(() => bind('', id), /does not belong to pod/);
  });
});

describe('kubeletVolumeAt', () => {
  const root = '/var/lib/kubelet';
  const uid = '0f5e8d6a-3c2b-4e1f-9a7d-5b6c8e9f0a1b';
  test("reads pod uid and volume name from kubelet's inline volume layout", () => {
    assert.deepEqual(kubeletVolumeAt(root, `${root}/pods/${uid}/volumes/kubernetes.io~csi/spiffe/mount`), { podUid: uid, volumeName: 'spiffe' });
  });
  test('anything else is not a kubelet volume path', () => {
    for (const target of [
      `${root}/pods/${uid}/volumes/kubernetes.io~csi/spiffe`,
      `${root}/pods/${uid}/volumes/kubernetes.io~csi/spiffe/mount/x`,
      `${root}/pods/${uid}/volumes/kubernetes.io~empty-dir/spiffe/mount`,
      `${root}/pods/${uid}/volumes/kubernetes.io~csi/../csi/mount`,
      `${root}/pods/../pods/${uid}/volumes/kubernetes.io~csi/spiffe/mount`,
      `${root}/pods/${uid}/volumes/kubernetes.io~csi/Spiffe/mount`,
      `${root}/pods/UPPER/volumes/kubernetes.io~csi/spiffe/mount`,
      `/var/lib/other/pods/${uid}/volumes/kubernetes.io~csi/spiffe/mount`,
      `${root}/pods//volumes/kubernetes.io~csi/spiffe/mount`,
    ]) {
      assert.equal(kubeletVolumeAt(root, target), undefined, target);
    }
  });
});

describe('readPodInfo', () => {
  const full: Record<string, string> = {
    [POD_INFO_KEYS.name]: 'app-0',
    [POD_INFO_KEYS.namespace]: 'default',
    [POD_INFO_KEYS.uid]: UID,
    [POD_INFO_KEYS.serviceAccount]: 'app',
    [POD_INFO_KEYS.ephemeral]: 'true',
  };

  test('the keys are the ones kubelet sends with podInfoOnMount', () => {
    assert.deepEqual(POD_INFO_KEYS, {
      name: 'csi.storage.k8s.io/pod.name',
      namespace: 'csi.storage.k8s.io/pod.namespace',
      uid: 'csi.storage.k8s.io/pod.uid',
      serviceAccount: 'csi.storage.k8s.io/serviceAccount.name',
      ephemeral: 'csi.storage.k8s.io/ephemeral',
    });
  });

  test("kubelet's pod info is read", () => {
    assert.deepEqual(readPodInfo(full), { uid: UID, name: 'app-0', namespace: 'default', serviceAccount: 'app' });
  });

  test('user attributes and tokens next to the pod info are ignored', () => {
    const info = readPodInfo({ ...full, 'csi.spire.io/hint': 'x', 'csi.storage.k8s.io/serviceAccount.tokens': '{}' });
    assert.deepEqual(Object.keys(info).sort(), ['name', 'namespace', 'serviceAccount', 'uid']);
  });

  test('dotted pod and service-account names are fine', () => {
    const info = readPodInfo({ ...full, [POD_INFO_KEYS.name]: 'web.v1-0', [POD_INFO_KEYS.serviceAccount]: 'sa.team' });
    assert.equal(info.name, 'web.v1-0');
    assert.equal(info.serviceAccount, 'sa.team');
  });

  test('no pod info at all (csi-sanity, or podInfoOnMount off) says to set podInfoOnMount', () => {
    expectInvalid(
      () => readPodInfo({}),
      /volume_context has no csi\.storage\.k8s\.io\/ephemeral/,
      /podInfoOnMount: true/,
      /volumeLifecycleModes: \[Ephemeral\]/,
    );
  });

  test('each missing or empty key says to set podInfoOnMount', () => {
    for (const key of [POD_INFO_KEYS.uid, POD_INFO_KEYS.namespace, POD_INFO_KEYS.name, POD_INFO_KEYS.serviceAccount]) {
      const without = { ...full };
      delete without[key];
      expectInvalid(() => readPodInfo(without), new RegExp(`volume_context has no ${key.replace(/\./g, '\\.')}`), /podInfoOnMount: true/);
      expectInvalid(() => readPodInfo({ ...full, [key]: '' }), new RegExp(`volume_context has no ${key.replace(/\./g, '\\.')}`), /podInfoOnMount/);
    }
  });

  test('ephemeral absent says to set podInfoOnMount', () => {
    const without = { ...full };
    delete without[POD_INFO_KEYS.ephemeral];
    expectInvalid(() => readPodInfo(without), /no csi\.storage\.k8s\.io\/ephemeral/, /podInfoOnMount: true/);
  });

  test('ephemeral other than "true" is refused: only inline volumes', () => {
    for (const value of ['false', 'True', 'TRUE', '1', '', 'yes']) {
      expectInvalid(
        () => readPodInfo({ ...full, [POD_INFO_KEYS.ephemeral]: value }),
        new RegExp(`csi\\.storage\\.k8s\\.io/ephemeral is "${value}"`),
        /only inline ephemeral volumes/,
        /not PersistentVolumes/,
      );
    }
  });

  test('bad pod uids are refused', () => {
    for (const uid of ['0F5E8D6A-3C2B-4E1F-9A7D-5B6C8E9F0A1B', '../other', 'a/b', 'a.b', '-abc', 'abc-', `${UID} `, 'a'.repeat(65), '..']) {
      expectInvalid(() => readPodInfo({ ...full, [POD_INFO_KEYS.uid]: uid }), /csi\.storage\.k8s\.io\/pod\.uid=.* is not a pod UID/);
    }
  });

  test('bad namespaces are refused', () => {
    for (const namespace of ['Default', 'kube.system', 'a/b', '-ns', 'ns-', 'a'.repeat(64), 'ns_1', '..']) {
      expectInvalid(
        () => readPodInfo({ ...full, [POD_INFO_KEYS.namespace]: namespace }),
        /csi\.storage\.k8s\.io\/pod\.namespace=.* is not a namespace name/,
      );
    }
  });

  test('bad pod names and service-account names are refused', () => {
    for (const value of ['App', 'a/b', 'a..b', '.a', 'a.', 'a b', 'a'.repeat(254), 'k8s:ns:kube-system']) {
      expectInvalid(() => readPodInfo({ ...full, [POD_INFO_KEYS.name]: value }), /pod\.name=.* is not a pod name/);
      expectInvalid(() => readPodInfo({ ...full, [POD_INFO_KEYS.serviceAccount]: value }), /serviceAccount\.name=.* is not a service account name/);
    }
  });

  test('the message shows the bad value JSON-quoted', () => {
    expectInvalid(() => readPodInfo({ ...full, [POD_INFO_KEYS.namespace]: 'a"b' }), /pod\.namespace="a\\"b"/);
  });
});
