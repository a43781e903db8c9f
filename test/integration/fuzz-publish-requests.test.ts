/**
 * Hardening issue #8, requests: property-based fuzzing (fast-check) of
 * NodePublishVolume through the real gRPC server on its Unix socket.
 *
 * Every mutated request starts as exactly what kubelet sends for a random pod
 * (KubeletSimulator.publishRequest, with random valid attributes and kubelet's
 * own extra keys), which the driver's own validation must accept, and is then
 * broken by one to four mutations, each of which makes it invalid by
 * construction: hostile volume_context keys and values, pod info removed or
 * mangled, csi.storage.k8s.io/ephemeral, target paths, volume ids, capability,
 * access mode, fs_type, mount flags, volume_mount_group, readonly. Noise the
 * driver must ignore (secrets, publish_context, staging_target_path, extra
 * csi.storage.k8s.io/* keys) rides along. An independent reading of the
 * validation rules (`specViolations`, written from the rules in attributes.ts,
 * pod-binding.ts and publish-request.ts, not calling them) must find at least
 * one violation in what goes on the wire, so no case can be valid by accident.
 *
 * Properties: in process, parsePublishRequest throws INVALID_ARGUMENT for every
 * mutated request (many cases, cheap). Over gRPC, for mutated requests, for
 * arbitrary requests not derived from kubelet's, and for raw bytes as the body:
 * INVALID_ARGUMENT within CALL_DEADLINE_MS (a hang fails; bytes that do not
 * decode get grpc-js's INTERNAL before the driver sees them), the agent is
 * never asked, nothing appears or changes under the harness directory
 * (kubelet dir, state dir, sockets) nor at a target path outside it, and no
 * secret or service-account token reaches the logs or the error. At the end
 * the publish metric counted exactly those calls as INVALID_ARGUMENT, Probe
 * answers, and the driver still publishes a valid volume.
 *
 * FUZZ_SEED=<n> replays a run (fast-check prints the seed and the shrunk
 * counterexample on failure); FUZZ_RUNS=<n> overrides every run count.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { CSI_NODE_METHODS, type NodePublishVolumeRequest } from '../../src/csi/messages.js';
import { csiNodeService } from '../support/grpc-services.js';
import { parsePublishRequest } from '../../src/csi/publish-request.js';
import { Harness } from '../support/driver-harness.js';
import { isServiceError, type Pod } from '../support/kubelet-simulator.js';
import { expectInvalidArgument } from '../support/invalid-argument.js';
import { assertValidSvidVolume, pathExists } from '../support/volume-assertions.js';
import { fcParameters, runs } from '../support/fuzz.js';
import { POD_INFO_KEYS } from '../../src/volumes/pod-binding.js';

const CALL_DEADLINE_MS = 5000;
const RUNS = { inProcess: 5000, mutated: 600, arbitrary: 300, rawBytes: 500 };

// ------------------------------------------------------------ the wire form

const publishMethod = csiNodeService().service['NodePublishVolume'];
assert.ok(publishMethod, 'csi.v1.Node/NodePublishVolume is in the proto');

/**
 * What the driver receives for `request`: encoded as grpc-js encodes it (in
 * kubelet's place), decoded as the driver's server decodes it. protobufjs's
 * own decoder is laxer than the format (it reads a truncated string as empty,
 * keeps two members of a oneof); test/unit/protobuf-codec.test.ts checks the
 * driver's against it for well-formed messages.
 */
function onTheWire(request: object): NodePublishVolumeRequest {
  return decodeOnTheDriver(publishMethod!.requestSerialize(request));
}

function decodeOnTheDriver(bytes: Buffer): NodePublishVolumeRequest {
  return CSI_NODE_METHODS.NodePublishVolume!.decodeRequest(bytes) as NodePublishVolumeRequest;
}

function wire(text: string): string {
  return onTheWire({ volume_id: text }).volume_id;
}

// -------------------------------------- the rules, read independently of src/

const K = POD_INFO_KEYS;
const POD_INFO_KEY_SET = new Set<string>(Object.values(K));
const SPIRE_PREFIX = 'csi.spire.io/';
const KUBELET_PREFIX = 'csi.storage.k8s.io/';
const SUPPORTED = ['cert-file', 'key-file', 'bundle-file', 'fs-group', 'spiffe-id', 'hint'];
const FILE_KEYS = ['cert-file', 'key-file', 'bundle-file'] as const;
const DEFAULT_NAMES: Record<(typeof FILE_KEYS)[number], string> = {
  'cert-file': 'svid.pem',
  'key-file': 'svid_key.pem',
  'bundle-file': 'svid_bundle.pem',
};
const SINGLE_NODE_MODES = ['SINGLE_NODE_WRITER', 'SINGLE_NODE_READER_ONLY', 'SINGLE_NODE_SINGLE_WRITER', 'SINGLE_NODE_MULTI_WRITER'];

/** RFC 1123 label: at most 63 of [a-z0-9-], alphanumeric at both ends. */
function isDnsLabel(s: string): boolean {
  return s.length >= 1 && s.length <= 63 && /^[a-z0-9]$|^[a-z0-9][a-z0-9-]*[a-z0-9]$/.test(s);
}
/** RFC 1123 subdomain: labels joined by dots, at most 253 characters. */
function isDnsSubdomain(s: string): boolean {
  return s.length >= 1 && s.length <= 253 && s.split('.').every((label) => /^[a-z0-9]$|^[a-z0-9][a-z0-9-]*[a-z0-9]$/.test(label));
}
/** The driver's pod UID rule: a UUID or a static pod's hex hash, so [a-z0-9-], at most 64, alphanumeric ends. */
function isPodUid(s: string): boolean {
  return s.length >= 1 && s.length <= 64 && /^[a-z0-9]$|^[a-z0-9][a-z0-9-]*[a-z0-9]$/.test(s);
}
function isGid(s: string): boolean {
  return /^[0-9]{1,10}$/.test(s) && Number(s) <= 4294967294;
}
/** SPIFFE ID spec: lower-case trust domain, path segments of [A-Za-z0-9._-] that are not "." or "..". */
function isSpiffeId(s: string): boolean {
  if (s.length > 2048) return false;
  const match = /^spiffe:\/\/[a-z0-9._-]+((?:\/[A-Za-z0-9._-]+)*)$/.exec(s);
  return (
    match !== null &&
    (match[1] ?? '')
      .split('/')
      .slice(1)
      .every((segment) => segment !== '.' && segment !== '..')
  );
}
/** A plain, visible file name at the volume root that fits NAME_MAX. */
function isFileName(s: string): boolean {
  return s !== '' && !s.includes('\0') && !s.includes('/') && !s.startsWith('.') && Buffer.byteLength(s) <= 255;
}

function inlineVolumeId(uid: string, volumeName: string): string {
  return `csi-${createHash('sha256')
    .update(uid + volumeName)
    .digest('hex')}`;
}

/** Every rule the request breaks, read from the rules rather than from src/. Empty means the driver must accept it. */
function specViolations(w: NodePublishVolumeRequest, kubeletRootDir: string): string[] {
  const violations: string[] = [];
  if (!w.volume_id) violations.push('volume_id empty');
  if (!w.target_path) violations.push('target_path empty');
  const capability = w.volume_capability;
  if (!capability) {
    violations.push('no capability');
  } else {
    if (capability.block) violations.push('block');
    if (!capability.mount) violations.push('no mount');
    if (!capability.access_mode || !SINGLE_NODE_MODES.includes(String(capability.access_mode.mode))) violations.push('access mode');
    if (capability.mount && capability.mount.fs_type !== '' && capability.mount.fs_type !== 'tmpfs') violations.push('fs_type');
    if (capability.mount && capability.mount.mount_flags.length > 0) violations.push('mount flags');
  }
  if (!w.readonly) violations.push('readonly');

  const context = w.volume_context;
  const get = (key: string): string | undefined => (Object.prototype.hasOwnProperty.call(context, key) ? context[key] : undefined);
  if (get(K.ephemeral) !== 'true') violations.push('ephemeral');
  const uid = get(K.uid);
  if (uid === undefined || !isPodUid(uid)) violations.push('pod uid');
  const namespace = get(K.namespace);
  if (namespace === undefined || !isDnsLabel(namespace)) violations.push('namespace');
  for (const [key, what] of [
    [K.name, 'pod name'],
    [K.serviceAccount, 'service account'],
  ] as const) {
    const value = get(key);
    if (value === undefined || !isDnsSubdomain(value)) violations.push(what);
  }
  if (uid !== undefined && isPodUid(uid)) {
    const prefix = `${kubeletRootDir}/pods/${uid}/volumes/kubernetes.io~csi/`;
    const name = w.target_path.startsWith(prefix) && w.target_path.endsWith('/mount') ? w.target_path.slice(prefix.length, -'/mount'.length) : '';
    if (!isDnsLabel(name)) violations.push('target path');
    else if (w.volume_id !== inlineVolumeId(uid, name)) violations.push('volume id');
  }

  const attributes = new Map<string, string>();
  for (const [key, value] of Object.entries(context)) {
    if (key.startsWith(KUBELET_PREFIX)) continue;
    if (!key.startsWith(SPIRE_PREFIX) || !SUPPORTED.includes(key.slice(SPIRE_PREFIX.length))) {
      violations.push('unknown attribute');
      continue;
    }
    attributes.set(key.slice(SPIRE_PREFIX.length), value);
  }
  const names = FILE_KEYS.map((key) => attributes.get(key) ?? DEFAULT_NAMES[key]);
  if (!names.every(isFileName)) violations.push('file name');
  if (new Set(names).size !== names.length) violations.push('duplicate file names');
  const fsGroup = attributes.get('fs-group');
  if (fsGroup !== undefined && !isGid(fsGroup)) violations.push('fs-group');
  const spiffeId = attributes.get('spiffe-id');
  if (spiffeId !== undefined && !isSpiffeId(spiffeId)) violations.push('spiffe-id');
  const hint = attributes.get('hint');
  if (hint !== undefined && (hint.length === 0 || hint.length > 1024)) violations.push('hint');
  const group = capability?.mount?.volume_mount_group ?? '';
  if (fsGroup === undefined && group !== '' && !isGid(group)) violations.push('volume_mount_group');
  return violations;
}

// ------------------------------------------------------------- generators

/** Characters that no pod UID, namespace, pod name or service account may contain, whatever the wire does to them. */
const hostileChar = fc.constantFrom(
  '/',
  '\\',
  '\0',
  ' ',
  '\t',
  '\n',
  'A',
  'Z',
  '_',
  ':',
  '@',
  '%2e',
  '*',
  'é',
  'ı',
  '\u202e',
  '\ufeff',
  '\ud800',
  '\udfff',
  '😀',
);
const hostileText = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 64 }),
  fc.string({ unit: 'grapheme', maxLength: 64 }),
  fc.constantFrom('', '\0', '..', '../../../etc/passwd', '/', '%00', '\ud800', 'true', 'spiffe://example.org/admin', 'x'.repeat(5000)),
);
const dnsLabel = fc.stringMatching(/^[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?$/);
const dnsSubdomain = fc.array(dnsLabel, { minLength: 1, maxLength: 3 }).map((labels) => labels.join('.'));
const podUid = fc.oneof(fc.uuid({ version: 4 }), fc.stringMatching(/^[0-9a-f]{32}$/));
const validFileName = fc.stringMatching(/^[a-z][a-z0-9_.-]{0,30}$/);
const validSpiffeId = fc.tuple(dnsLabel, dnsLabel).map(([ns, sa]) => `spiffe://example.org/ns/${ns}/sa/${sa}`);
const secretValue = fc.uint8Array({ minLength: 8, maxLength: 8 }).map((bytes) => `S3CR3T-${Buffer.from(bytes).toString('hex')}`);
const invalidGid = fc.oneof(
  fc.constantFrom('-1', '4294967295', '4294967296', '99999999999', '0x10', '1e3', '+1', ' 1', '1 ', '\u0661', 'abc', '1.5', '１', '1\0'),
  fc.string({ unit: 'binary', minLength: 1, maxLength: 20 }).filter((s) => !isGid(wire(s))),
);
const invalidSpiffeId = fc.oneof(
  fc.constantFrom(
    '',
    'spiffe://',
    'spiffe://example.org/',
    'spiffe://EXAMPLE.org/x',
    'spiffe://example.org/../admin',
    'spiffe://example.org/./x',
    'spiffe://example.org/x/..',
    'spiffe://example.org//x',
    'spiffe://example.org/x?y',
    'spiffe://example.org/x#y',
    'spiffe://user@example.org/x',
    'spiffe://example.org:8080/x',
    'SPIFFE://example.org/x',
    'https://example.org/x',
    'spiffe://example.org/x\0',
    `spiffe://example.org/${'a'.repeat(2048)}`,
  ),
  // Upper case is fine in the path but not in the trust domain; "_" is fine in both (SPIFFE ID spec §2.1, §2.2:
  // https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md), so it makes no invalid ID here.
  fc
    .tuple(
      dnsLabel,
      hostileChar.filter((c) => c !== '_'),
    )
    .map(([segment, c]) => (/^[A-Z]$/.test(c) ? `spiffe://exam${c}ple.org/${segment}` : `spiffe://example.org/${segment}/x${c}`)),
  fc.string({ unit: 'binary', maxLength: 80 }).filter((s) => !isSpiffeId(wire(s))),
);
const invalidFileName = fc.oneof(
  fc.constantFrom(
    '',
    '.',
    '..',
    '..data',
    '..data_tmp',
    '..2026_01_01_00_00_00.x',
    '.hidden',
    'a/b',
    '/etc/passwd',
    '../../../../etc/cron.d/x',
    'x\0y',
    'é'.repeat(128),
    'a'.repeat(256),
  ),
  fc.tuple(fc.string({ unit: 'binary', maxLength: 20 }), fc.string({ unit: 'binary', maxLength: 20 })).map(([a, b]) => `${a}/${b}`),
  fc.string({ unit: 'binary', maxLength: 40 }).map((s) => `.${s}`),
  fc.string({ unit: 'binary', maxLength: 40 }).filter((s) => !isFileName(wire(s))),
);

interface Base {
  pod: Pod;
  volumeName: string;
  attributes: Record<string, string>;
  fsGroup: number | undefined;
  secrets: Record<string, string>;
  noise: { publish_context: Record<string, string>; staging_target_path: string };
}

/** The other pods a spoofing mutation may name: one per field, so that no combination of mutations can describe one consistent other pod. */
interface Others {
  uidOf: Pod;
  pathOf: Pod;
  idOf: Pod;
}

interface Mutation {
  /** At most one mutation per field in a case. */
  field: string;
  label: string;
  apply: (request: NodePublishVolumeRequest, base: Base) => void;
}

function mutation(field: string, label: string, apply: Mutation['apply']): Mutation {
  // fast-check prints a counterexample with this.
  return { field, label, apply, [fc.toStringMethod]: () => `mutation(${JSON.stringify(label)})` } as Mutation;
}

function insertAt(text: string, index: number, insert: string): string {
  const at = index % (text.length + 1);
  return text.slice(0, at) + insert + text.slice(at);
}

function baseArbitrary(): fc.Arbitrary<Base> {
  return fc.record({
    pod: fc.record({ uid: podUid, name: dnsSubdomain, namespace: dnsLabel, serviceAccount: dnsSubdomain }),
    volumeName: fc.oneof(fc.constant('svid'), dnsLabel),
    attributes: fc
      .record({
        names: fc.option(fc.uniqueArray(validFileName, { minLength: 3, maxLength: 3 })),
        spiffeId: fc.option(validSpiffeId),
        hint: fc.option(fc.string({ unit: 'binary', minLength: 1, maxLength: 40 })),
        token: fc.option(secretValue),
        kubeletExtras: fc.dictionary(
          fc.string({ maxLength: 20 }).filter((s) => !POD_INFO_KEY_SET.has(wire(KUBELET_PREFIX + s)) && wire(s) !== 'serviceAccount.tokens'),
          hostileText,
          { maxKeys: 3 },
        ),
      })
      .map(({ names, spiffeId, hint, token, kubeletExtras }) => {
        const attributes: Record<string, string> = {};
        if (names) FILE_KEYS.forEach((key, i) => (attributes[SPIRE_PREFIX + key] = names[i]!));
        if (spiffeId) attributes[`${SPIRE_PREFIX}spiffe-id`] = spiffeId;
        if (hint) attributes[`${SPIRE_PREFIX}hint`] = hint;
        for (const [key, value] of Object.entries(kubeletExtras)) attributes[KUBELET_PREFIX + key] = value;
        // kubelet's tokenRequests: a service-account token, as secret as csi_secret fields.
        if (token)
          attributes[`${KUBELET_PREFIX}serviceAccount.tokens`] = JSON.stringify({ spire: { token, expirationTimestamp: '2030-01-01T00:00:00Z' } });
        return attributes;
      }),
    fsGroup: fc.option(fc.integer({ min: 0, max: 4294967294 }), { nil: undefined }),
    secrets: fc.dictionary(fc.string({ maxLength: 12 }), secretValue, { maxKeys: 3 }),
    noise: fc.record({
      publish_context: fc.dictionary(fc.string({ maxLength: 12 }), hostileText, { maxKeys: 2 }),
      staging_target_path: fc.oneof(fc.constant(''), hostileText),
    }),
  });
}

function mutationArbitraries(kubeletRootDir: string, symlinkedRoot: string, others: Others): fc.Arbitrary<Mutation>[] {
  const expectedPath = (uid: string, volumeName: string): string =>
    path.join(kubeletRootDir, 'pods', uid, 'volumes', 'kubernetes.io~csi', volumeName, 'mount');

  const podField = (key: string, limit: number, field: string): fc.Arbitrary<Mutation> =>
    fc.oneof(
      fc.constant(mutation(field, `${field} removed`, (r) => void delete r.volume_context[key])),
      fc.constant(mutation(field, `${field} empty`, (r) => void (r.volume_context[key] = ''))),
      fc
        .tuple(hostileChar, fc.nat())
        .map(([c, at]) =>
          mutation(field, `${field} with ${JSON.stringify(c)}`, (r) => void (r.volume_context[key] = insertAt(r.volume_context[key] ?? 'x', at, c))),
        ),
      fc.constantFrom('-', '.').chain((edge) =>
        fc.boolean().map((front) =>
          mutation(field, `${field} ${front ? 'starting' : 'ending'} with ${edge}`, (r) => {
            const value = r.volume_context[key] ?? 'x';
            r.volume_context[key] = front ? edge + value : value + edge;
          }),
        ),
      ),
      fc.integer({ min: 1, max: 300 }).map((extra) =>
        mutation(field, `${field} longer than ${limit}`, (r) => {
          const value = r.volume_context[key] ?? 'x';
          r.volume_context[key] = value + 'a'.repeat(Math.max(1, limit + extra - value.length));
        }),
      ),
    );

  const targetPath: fc.Arbitrary<Mutation> = fc.oneof(
    fc
      .constantFrom<[string, (p: string, b: Base) => string]>(
        ['relative', (p) => p.slice(1)],
        ['trailing slash', (p) => `${p}/`],
        ['"/../" inside', (p) => p.replace('/volumes/', '/volumes/../volumes/')],
        ['"/./" inside', (p) => p.replace('/volumes/', '/./volumes/')],
        ['double slash', (p) => p.replace('/pods/', '//pods/')],
        [
          'escapes the pod directory',
          (p, b) => `${path.dirname(p)}/../../../../${others.pathOf.uid}/volumes/kubernetes.io~csi/${b.volumeName}/mount`,
        ],
        ["another pod's path", (_p, b) => expectedPath(others.pathOf.uid, b.volumeName)],
        ['another volume of the same pod', (_p, b) => expectedPath(b.pod.uid, 'other-path-vol')],
        ['another kubelet root', (_p, b) => path.join('/var/lib/kubelet/pods', b.pod.uid, 'volumes/kubernetes.io~csi', b.volumeName, 'mount')],
        ['through a symlink to the kubelet root', (p) => symlinkedRoot + p.slice(kubeletRootDir.length)],
        ['below mount', (p) => `${p}/..data`],
        ['mount/../mount', (p) => `${p}/../mount`],
        ['without /mount', (p) => path.dirname(p)],
        ['empty-dir plugin', (p) => p.replace('kubernetes.io~csi', 'kubernetes.io~empty-dir')],
        ['a PV global mount', () => path.join(kubeletRootDir, 'plugins/kubernetes.io/csi/csi.spire.io/abc/globalmount')],
        ['the pod directory', (_p, b) => path.join(kubeletRootDir, 'pods', b.pod.uid)],
        ['empty', () => ''],
        ['/', () => '/'],
        ['/etc', () => '/etc'],
        ['/proc/self/root prefix', (p) => `/proc/self/root${p}`],
        ['4096-byte volume name', (_p, b) => expectedPath(b.pod.uid, 'v'.repeat(4096))],
      )
      .map(([label, change]) => mutation('target_path', `target_path ${label}`, (r, b) => void (r.target_path = change(r.target_path, b)))),
    fc
      .constantFrom('SVID', 'a_b', 'x'.repeat(64), '..', '.', '', 'a/b', '-a', 'a.b', 'a-', 'é')
      .map((name) =>
        mutation(
          'target_path',
          `target_path with volume name ${JSON.stringify(name)}`,
          (r, b) => void (r.target_path = expectedPath(b.pod.uid, name)),
        ),
      ),
    fc
      .tuple(hostileChar, fc.nat())
      .map(([c, at]) =>
        mutation('target_path', `target_path with ${JSON.stringify(c)} inserted`, (r) => void (r.target_path = insertAt(r.target_path, at, c))),
      ),
    fc.string({ unit: 'binary', maxLength: 300 }).map((p) => mutation('target_path', 'target_path random', (r) => void (r.target_path = p))),
  );

  const volumeId: fc.Arbitrary<Mutation> = fc.oneof(
    fc
      .constantFrom<[string, (id: string, b: Base) => string]>(
        ['empty', () => ''],
        ["another pod's id", (_id, b) => inlineVolumeId(others.idOf.uid, b.volumeName)],
        ['another volume of the same pod', (_id, b) => inlineVolumeId(b.pod.uid, 'other-id-vol')],
        ['upper case', (id) => id.toUpperCase()],
        ['one hex digit changed', (id) => id.slice(0, -1) + (id.endsWith('0') ? '1' : '0')],
        ['truncated', (id) => id.slice(0, -1)],
        ['with a trailing NUL', (id) => `${id}\0`],
        ['without the csi- prefix', (id) => id.slice(4)],
        ['a PV handle', () => 'pvc-0f5e8d6a-3c2b-4e1f-9a7d-5b6c8e9f0a1b'],
        ['sha256 of uid alone', (_id, b) => `csi-${createHash('sha256').update(b.pod.uid).digest('hex')}`],
      )
      .map(([label, change]) => mutation('volume_id', `volume_id ${label}`, (r, b) => void (r.volume_id = change(r.volume_id, b)))),
    fc.string({ unit: 'binary', maxLength: 200 }).map((id) => mutation('volume_id', 'volume_id random', (r) => void (r.volume_id = id))),
  );

  const blockCapability = (): NodePublishVolumeRequest['volume_capability'] => ({ block: {}, access_mode: { mode: 'SINGLE_NODE_WRITER' } });
  const capability: fc.Arbitrary<Mutation> = fc.constantFrom(
    mutation('capability', 'no volume_capability', (r) => void (r.volume_capability = null)),
    mutation('capability', 'block access', (r) => void (r.volume_capability = blockCapability())),
    // Not 'block and mount both set': on the wire the last member of a oneof wins
    // (https://protobuf.dev/programming-guides/proto3/#oneof), here mount.
    mutation('capability', 'no access type', (r) => void (r.volume_capability = { access_mode: { mode: 'SINGLE_NODE_WRITER' } })),
  );

  const accessMode: fc.Arbitrary<Mutation> = fc
    .constantFrom<unknown>(null, 'UNKNOWN', 'MULTI_NODE_READER_ONLY', 'MULTI_NODE_SINGLE_WRITER', 'MULTI_NODE_MULTI_WRITER', 99, 0)
    .map((mode) =>
      mutation('access_mode', `access mode ${String(mode)}`, (r) => {
        if (!r.volume_capability) return;
        (r.volume_capability as { access_mode: unknown }).access_mode = mode === null ? null : { mode };
      }),
    );

  const mountField = (field: 'fs_type' | 'mount_flags' | 'volume_mount_group', label: string, value: unknown): Mutation =>
    mutation(field, label, (r) => {
      const mount = r.volume_capability?.mount as unknown as Record<string, unknown> | undefined | null;
      if (mount) mount[field] = value;
    });
  const fsType = fc
    .oneof(
      fc.constantFrom('ext4', 'xfs', 'TMPFS', 'tmpfs ', ' tmpfs', 'tmpfs\0', 'ramfs', 'nfs', 'bind', 'overlay', '..', '/dev/sda1'),
      fc.string({ unit: 'binary', minLength: 1, maxLength: 40 }).filter((s) => wire(s) !== 'tmpfs' && wire(s) !== ''),
    )
    .map((value) => mountField('fs_type', `fs_type ${JSON.stringify(value).slice(0, 40)}`, value));
  const mountFlags = fc
    .array(
      fc.oneof(
        fc.constantFrom('ro', 'rw', 'bind', 'remount', 'nosuid', 'exec', '', 'suid,dev', 'context="system_u:object_r:container_file_t:s0"'),
        hostileText,
      ),
      {
        minLength: 1,
        maxLength: 5,
      },
    )
    .map((flags) => mountField('mount_flags', `${flags.length} mount flags`, flags));
  const mountGroup = invalidGid.map((value) => mountField('volume_mount_group', `volume_mount_group ${JSON.stringify(value).slice(0, 40)}`, value));

  const readonly = fc.constant(mutation('readonly', 'readonly false', (r) => void (r.readonly = false)));

  const ephemeral = fc.oneof(
    fc.constant(mutation('ephemeral', 'ephemeral removed', (r) => void delete r.volume_context[K.ephemeral])),
    fc
      .oneof(
        fc.constantFrom('false', 'True', 'TRUE', 'true ', ' true', 'true\0', '1', 'yes', '', 'tru', 'truee', '"true"'),
        fc.string({ unit: 'binary', maxLength: 20 }).filter((s) => wire(s) !== 'true'),
      )
      .map((value) => mutation('ephemeral', `ephemeral ${JSON.stringify(value)}`, (r) => void (r.volume_context[K.ephemeral] = value))),
  );

  const setAttribute = (label: string, key: string, value: string): Mutation =>
    mutation(
      'attributes',
      label,
      (r) => void Object.defineProperty(r.volume_context, key, { value, enumerable: true, writable: true, configurable: true }),
    );
  const attributes: fc.Arbitrary<Mutation> = fc.oneof(
    fc
      .tuple(
        fc
          .oneof(
            fc.constantFrom(
              'selectors',
              'selector',
              'pod-uid',
              'spiffe_id',
              'certFile',
              'Cert-File',
              'cert-file ',
              '__proto__',
              'constructor',
              'toString',
              'hasOwnProperty',
              'valueOf',
              '',
              'fs-group/../x',
              'hint\0',
            ),
            fc.string({ unit: 'binary', maxLength: 30 }),
          )
          .filter((suffix) => !SUPPORTED.includes(wire(suffix))),
        hostileText,
      )
      .map(([suffix, value]) => setAttribute(`unknown key ${JSON.stringify(SPIRE_PREFIX + suffix).slice(0, 60)}`, SPIRE_PREFIX + suffix, value)),
    fc
      .tuple(
        fc
          .oneof(
            fc.constantFrom(
              'selectors',
              'k8s:ns',
              '__proto__',
              'constructor',
              '',
              'CSI.SPIRE.IO/cert-file',
              'csi.spire.io',
              'csi.storage.k8s.io',
              'spire.io/x',
              'csi.spire.io\0/cert-file',
              ' csi.spire.io/hint',
            ),
            fc.string({ unit: 'binary', maxLength: 30 }),
          )
          .filter((key) => !wire(key).startsWith(SPIRE_PREFIX) && !wire(key).startsWith(KUBELET_PREFIX)),
        hostileText,
      )
      .map(([key, value]) => setAttribute(`foreign key ${JSON.stringify(key).slice(0, 60)}`, key, value)),
    fc
      .tuple(fc.constantFrom(...FILE_KEYS), invalidFileName)
      .map(([key, value]) => setAttribute(`${key} ${JSON.stringify(value).slice(0, 40)}`, SPIRE_PREFIX + key, value)),
    fc.tuple(fc.uniqueArray(fc.constantFrom(...FILE_KEYS), { minLength: 2, maxLength: 2 }), validFileName).map(([[a, b], name]) =>
      mutation('attributes', `${a} and ${b} both ${name}`, (r) => {
        r.volume_context[SPIRE_PREFIX + a!] = name;
        r.volume_context[SPIRE_PREFIX + b!] = name;
      }),
    ),
    fc.constantFrom(...FILE_KEYS).chain((key) =>
      fc.constantFrom(...FILE_KEYS.filter((other) => other !== key)).map((other) =>
        mutation('attributes', `${key} set to the ${other} default`, (r) => {
          // Clash with the other name as the driver will see it, set or default.
          r.volume_context[SPIRE_PREFIX + key] = r.volume_context[SPIRE_PREFIX + other] ?? DEFAULT_NAMES[other];
        }),
      ),
    ),
    invalidGid.map((value) => setAttribute(`fs-group ${JSON.stringify(value).slice(0, 40)}`, `${SPIRE_PREFIX}fs-group`, value)),
    fc.constant(setAttribute('fs-group empty', `${SPIRE_PREFIX}fs-group`, '')),
    invalidSpiffeId.map((value) => setAttribute(`spiffe-id ${JSON.stringify(value).slice(0, 40)}`, `${SPIRE_PREFIX}spiffe-id`, value)),
    fc
      .oneof(
        fc.constant(''),
        fc.integer({ min: 1025, max: 4000 }).map((n) => 'h'.repeat(n)),
        fc.string({ unit: 'binary', minLength: 1025, maxLength: 1100 }),
      )
      .map((value) => setAttribute(`hint of ${value.length} characters`, `${SPIRE_PREFIX}hint`, value)),
  );

  const removeAllPodInfo = fc.constant(
    mutation('pod info', 'all pod info removed (podInfoOnMount: false)', (r) => {
      for (const key of Object.keys(r.volume_context)) if (key.startsWith(KUBELET_PREFIX)) delete r.volume_context[key];
    }),
  );
  const spoofedUid = fc.constant(mutation('pod.uid', "another pod's uid in the pod info", (r) => void (r.volume_context[K.uid] = others.uidOf.uid)));

  return [
    attributes,
    attributes,
    targetPath,
    volumeId,
    capability,
    accessMode,
    fsType,
    mountFlags,
    mountGroup,
    readonly,
    ephemeral,
    removeAllPodInfo,
    spoofedUid,
    podField(K.uid, 64, 'pod.uid'),
    podField(K.namespace, 63, 'pod.namespace'),
    podField(K.name, 253, 'pod.name'),
    podField(K.serviceAccount, 253, 'serviceAccount.name'),
  ];
}

// ------------------------------------------------------------- observation

async function snapshot(root: string): Promise<string[]> {
  const lines: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    const entries = (await fs.readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const entry of entries) {
      const full = path.join(dir, entry.name);
      const stat = await fs.lstat(full);
      let line = `${path.relative(root, full)} ${stat.mode.toString(8)} ${stat.uid}:${stat.gid}`;
      if (entry.isFile())
        line += ` ${createHash('sha256')
          .update(await fs.readFile(full))
          .digest('hex')}`;
      if (entry.isSymbolicLink()) line += ` -> ${await fs.readlink(full)}`;
      lines.push(line);
      if (entry.isDirectory()) await walk(full);
    }
  };
  await walk(root);
  return lines;
}

describe('fuzzing NodePublishVolume requests: only INVALID_ARGUMENT, nothing touched, never a hang or a crash', () => {
  let h: Harness;
  let others: Others;
  let symlinkedRoot: string;
  let rawClient: grpc.Client;
  /** Calls that reached the driver's handler, to compare with its metric at the end. */
  let handledCalls = 0;
  let secretsSent = 0;

  before(async () => {
    h = await Harness.start({ publishTimeoutMs: 2000 });
    others = { uidOf: h.kubelet.createPod(), pathOf: h.kubelet.createPod(), idOf: h.kubelet.createPod() };
    symlinkedRoot = path.join(h.dir, 'kubelet-link');
    await fs.symlink(h.config.kubeletRootDir, symlinkedRoot);
    await fs.mkdir(path.join(h.config.kubeletRootDir, 'pods'), { recursive: true });
    rawClient = new grpc.Client(`unix:${h.config.csiSocketPath}`, grpc.credentials.createInsecure());
  });
  after(async () => {
    rawClient.close();
    await h.close();
  });

  /** Sends `request`, asserts INVALID_ARGUMENT within the bound, that nothing was touched and that no secret leaked. */
  async function assertRefusedUntouched(
    request: object,
    secrets: string[],
    kubeletPrepares?: { podUid: string; targetPath: string },
  ): Promise<string> {
    // kubelet creates the parent of the pod's own target path before calling.
    if (kubeletPrepares) await fs.mkdir(path.dirname(kubeletPrepares.targetPath), { recursive: true, mode: 0o750 });
    const targetPath = (request as { target_path?: unknown }).target_path;
    const outside = typeof targetPath === 'string' && !targetPath.startsWith(h.dir) ? targetPath : undefined;
    const outsideExisted = outside === undefined ? false : await pathExists(outside);
    const before = await snapshot(h.dir);
    const logLines = h.logs.lines.length;
    const subscriptions = h.agent.receivedSelectorSets().length;
    const started = Date.now();
    handledCalls++;
    const outcome = await h.kubelet.nodeCall('NodePublishVolume', request, CALL_DEADLINE_MS).then(
      () => undefined,
      (err: unknown) => err,
    );
    const elapsed = Date.now() - started;
    assert.ok(isServiceError(outcome), `the driver accepted the request (${elapsed} ms)`);
    assert.equal(grpc.status[outcome.code], 'INVALID_ARGUMENT', `${outcome.details} (after ${elapsed} ms)`);
    assert.ok(outcome.details.length > 0, 'the error says what is wrong');
    assert.equal(h.agent.receivedSelectorSets().length, subscriptions, 'the agent was not asked for anything');
    assert.deepEqual(await snapshot(h.dir), before, 'nothing changed under the harness directory');
    if (outside !== undefined) assert.equal(await pathExists(outside), outsideExisted, `nothing created at ${outside}`);
    assert.equal(h.driver?.volumes.volumeCount, 0, 'no volume is managed');
    const newLogs = h.logs.lines.slice(logLines).join('\n');
    for (const secret of secrets) {
      assert.ok(!newLogs.includes(secret), 'no secret in the logs');
      assert.ok(!outcome.details.includes(secret), 'no secret in the error');
    }
    if (kubeletPrepares) await fs.rm(path.join(h.config.kubeletRootDir, 'pods', kubeletPrepares.podUid), { recursive: true, force: true });
    return outcome.details;
  }

  /** A kubelet request for `base`, checked valid, then broken by `chosen`. */
  function buildCase(
    base: Base,
    chosen: Mutation[],
  ): { request: NodePublishVolumeRequest; validTargetPath: string; violations: string[]; secrets: string[] } {
    const root = h.config.kubeletRootDir;
    const request = h.kubelet.publishRequest(base.pod, { volumeName: base.volumeName, attributes: base.attributes, fsGroup: base.fsGroup });
    request.secrets = { ...base.secrets };
    request.publish_context = { ...base.noise.publish_context };
    request.staging_target_path = base.noise.staging_target_path;
    // Control: before the mutations, the driver's own validation and the rules agree the request is valid.
    assert.deepEqual(specViolations(onTheWire(request), root), [], 'the unmutated request breaks no rule');
    parsePublishRequest(onTheWire(request), { kubeletRootDir: root });
    const validTargetPath = request.target_path;
    for (const m of chosen) m.apply(request, base);
    const violations = specViolations(onTheWire(request), root);
    assert.ok(violations.length > 0, `generator bug: ${chosen.map((m) => m.label).join(' + ')} left a valid request`);
    const secrets = Object.values(base.secrets);
    const token = /S3CR3T-[0-9a-f]{16}/.exec(base.attributes[`${KUBELET_PREFIX}serviceAccount.tokens`] ?? '')?.[0];
    if (token) secrets.push(token);
    return { request, validTargetPath, violations, secrets };
  }

  function mutationsArbitrary(): fc.Arbitrary<Mutation[]> {
    return fc.uniqueArray(fc.oneof(...mutationArbitraries(h.config.kubeletRootDir, symlinkedRoot, others)), {
      minLength: 1,
      maxLength: 4,
      selector: (m) => m.field,
    });
  }

  it(`mutated kubelet requests, in process: parsePublishRequest throws INVALID_ARGUMENT (${runs(RUNS.inProcess)} cases)`, (t) => {
    let cases = 0;
    const started = Date.now();
    fc.assert(
      fc.property(baseArbitrary(), mutationsArbitrary(), (base, chosen) => {
        const { request, secrets } = buildCase(base, chosen);
        cases++;
        const message = expectInvalidArgument(() => parsePublishRequest(onTheWire(request), { kubeletRootDir: h.config.kubeletRootDir }));
        for (const secret of secrets) assert.ok(!message.includes(secret), 'no secret in the error');
      }),
      fcParameters(RUNS.inProcess),
    );
    t.diagnostic(`mutated requests in process: ${cases} cases in ${Date.now() - started} ms`);
  });

  it(`mutated kubelet requests over gRPC (${runs(RUNS.mutated)} cases)`, async (t) => {
    const seen = new Map<string, number>();
    const violationCounts = new Map<string, number>();
    let cases = 0;
    const started = Date.now();
    await fc.assert(
      fc.asyncProperty(baseArbitrary(), mutationsArbitrary(), async (base, chosen) => {
        const { request, validTargetPath, violations, secrets } = buildCase(base, chosen);
        cases++;
        for (const m of chosen) seen.set(m.field, (seen.get(m.field) ?? 0) + 1);
        for (const v of new Set(violations)) violationCounts.set(v, (violationCounts.get(v) ?? 0) + 1);
        secretsSent += secrets.length;
        await assertRefusedUntouched(request, secrets, { podUid: base.pod.uid, targetPath: validTargetPath });
      }),
      fcParameters(RUNS.mutated),
    );
    t.diagnostic(`mutated requests over gRPC: ${cases} cases in ${Date.now() - started} ms`);
    t.diagnostic(`mutated fields: ${[...seen].map(([f, n]) => `${f}=${n}`).join(', ')}`);
    t.diagnostic(`rules broken: ${[...violationCounts].map(([v, n]) => `${v}=${n}`).join(', ')}`);
    t.diagnostic(`secrets and service-account tokens sent, none logged or echoed: ${secretsSent}`);
  });

  it(`arbitrary requests, not derived from kubelet's (${runs(RUNS.arbitrary)} cases)`, async (t) => {
    const root = h.config.kubeletRootDir;
    const anyString = fc.oneof(fc.string({ unit: 'binary', maxLength: 80 }), hostileText);
    const knownKey = fc.constantFrom(...Object.values(K), ...SUPPORTED.map((s) => SPIRE_PREFIX + s));
    const requestArbitrary = fc.record({
      volume_id: fc.oneof(anyString, fc.constant(inlineVolumeId(others.pathOf.uid, 'svid'))),
      target_path: fc.oneof(anyString, fc.constant(path.join(root, 'pods', others.pathOf.uid, 'volumes/kubernetes.io~csi/svid/mount'))),
      volume_capability: fc.option(
        fc.record({
          block: fc.option(fc.constant({})),
          mount: fc.option(
            fc.record({
              fs_type: fc.oneof(fc.constant(''), anyString),
              mount_flags: fc.array(anyString, { maxLength: 3 }),
              volume_mount_group: anyString,
            }),
          ),
          access_mode: fc.option(
            fc.record({
              mode: fc.constantFrom(
                'UNKNOWN',
                'SINGLE_NODE_WRITER',
                'SINGLE_NODE_READER_ONLY',
                'MULTI_NODE_MULTI_WRITER',
                'SINGLE_NODE_MULTI_WRITER',
              ),
            }),
          ),
        }),
      ),
      readonly: fc.boolean(),
      volume_context: fc.dictionary(fc.oneof(knownKey, anyString), fc.oneof(fc.constant('true'), podUid, dnsLabel, anyString), { maxKeys: 8 }),
      secrets: fc.dictionary(fc.string({ maxLength: 12 }), secretValue, { maxKeys: 2 }),
      publish_context: fc.dictionary(anyString, anyString, { maxKeys: 2 }),
      staging_target_path: anyString,
    });
    let cases = 0;
    const started = Date.now();
    await fc.assert(
      fc.asyncProperty(requestArbitrary, async (request) => {
        assert.ok(specViolations(onTheWire(request), root).length > 0, 'generator bug: a valid request');
        cases++;
        await assertRefusedUntouched(request, Object.values(request.secrets));
      }),
      fcParameters(RUNS.arbitrary),
    );
    t.diagnostic(`arbitrary requests: ${cases} cases in ${Date.now() - started} ms`);
  });

  it(`raw bytes as the request body (${runs(RUNS.rawBytes)} cases): INVALID_ARGUMENT when they decode, the server's INTERNAL when not`, async (t) => {
    const root = h.config.kubeletRootDir;
    const valid = publishMethod.requestSerialize(h.kubelet.publishRequest(h.kubelet.createPod(), { attributes: { 'csi.spire.io/hint': 'h' } }));
    const bytes = fc.oneof(
      fc.uint8Array({ maxLength: 2048 }).map((b) => Buffer.from(b)),
      fc.integer({ min: 0, max: valid.length - 1 }).map((n) => valid.subarray(0, n)),
      fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })).map(([i, x]) => {
        const copy = Buffer.from(valid);
        copy[i % copy.length] = copy[i % copy.length]! ^ x;
        return copy;
      }),
      fc.tuple(fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 64 })).map(([i, insert]) => {
        const at = i % (valid.length + 1);
        return Buffer.concat([valid.subarray(0, at), Buffer.from(insert), valid.subarray(at)]);
      }),
    );
    const outcomes = new Map<string, number>();
    let cases = 0;
    const started = Date.now();
    await fc.assert(
      fc.asyncProperty(bytes, async (body) => {
        let decoded: NodePublishVolumeRequest | undefined;
        try {
          decoded = decodeOnTheDriver(body);
        } catch {
          decoded = undefined;
        }
        // A flipped byte inside a free-form field can leave a valid request: not a case.
        fc.pre(decoded === undefined || specViolations(decoded, root).length > 0);
        cases++;
        const before = await snapshot(h.dir);
        const subscriptions = h.agent.receivedSelectorSets().length;
        if (decoded !== undefined) handledCalls++;
        const err = await new Promise<grpc.ServiceError | null>((resolve) => {
          rawClient.makeUnaryRequest(
            '/csi.v1.Node/NodePublishVolume',
            (b: Buffer) => b,
            (b: Buffer) => b,
            body,
            { deadline: Date.now() + CALL_DEADLINE_MS },
            (e) => resolve(e),
          );
        });
        assert.ok(err, 'the driver accepted the bytes');
        const code = grpc.status[err.code] ?? String(err.code);
        outcomes.set(code, (outcomes.get(code) ?? 0) + 1);
        if (decoded !== undefined) assert.equal(code, 'INVALID_ARGUMENT', err.details);
        else assert.equal(code, 'INTERNAL', err.details); // the server answers before the handler sees anything
        assert.equal(h.agent.receivedSelectorSets().length, subscriptions, 'the agent was not asked for anything');
        assert.deepEqual(await snapshot(h.dir), before, 'nothing changed under the harness directory');
      }),
      fcParameters(RUNS.rawBytes),
    );
    t.diagnostic(`raw bodies: ${cases} cases in ${Date.now() - started} ms (${[...outcomes].map(([c, n]) => `${c}=${n}`).join(', ')})`);
  });

  it('afterwards the driver is up: Probe answers and a valid publish writes a valid volume', async (t) => {
    assert.deepEqual(await h.kubelet.identityCall('Probe'), { ready: { value: true } });
    const published = await h.metrics.publishTotal.get();
    const invalid = published.values.find((v) => v.labels['result'] === 'INVALID_ARGUMENT')?.value ?? 0;
    assert.equal(invalid, handledCalls, 'every call that reached the handler was counted as INVALID_ARGUMENT');
    assert.deepEqual(
      published.values.filter((v) => v.labels['result'] !== 'INVALID_ARGUMENT'),
      [],
      'and nothing else',
    );
    const pod = h.kubelet.createPod();
    const spiffeId = `spiffe://example.org/after-fuzz-${randomBytes(4).toString('hex')}`;
    await h.agent.addEntry({ spiffeId, selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod, { timeoutMs: 10_000 });
    await assertValidSvidVolume(volume.targetPath, spiffeId);
    await h.kubelet.unpublish(volume);
    t.diagnostic(`requests refused with INVALID_ARGUMENT by the driver's handler: ${handledCalls}`);
  });
});
