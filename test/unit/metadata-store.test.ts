import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { createLogger } from '../../src/observability/logger.js';
import { MetadataStore, type VolumeRecord } from '../../src/volumes/metadata-store.js';
import { makeScratchDir, removeScratchDir } from '../support/scratch.js';

const KUBELET_ROOT = '/var/lib/kubelet';

function volumeIdFor(uid: string, name: string): string {
  return `csi-${createHash('sha256')
    .update(uid + name)
    .digest('hex')}`;
}

function record(uid: string, overrides: Partial<VolumeRecord> = {}): VolumeRecord {
  return {
    version: 1,
    volumeId: volumeIdFor(uid, 'svid'),
    targetPath: `${KUBELET_ROOT}/pods/${uid}/volumes/kubernetes.io~csi/svid/mount`,
    volumeName: 'svid',
    pod: { uid, name: `app-${uid.slice(0, 8)}`, namespace: 'default', serviceAccount: 'app' },
    files: { cert: 'svid.pem', key: 'svid_key.pem', bundle: 'svid_bundle.pem' },
    fsGroup: null,
    spiffeId: null,
    hint: null,
    tmpfs: false,
    createdAt: '2026-01-01T00:00:00.000Z',
    ...overrides,
  };
}

const UID_A = '0f5e8d6a-3c2b-4e1f-9a7d-5b6c8e9f0a1b';
const UID_B = '7d1c2b3a-9e8f-4a5b-8c7d-6e5f4a3b2c1d';
const UID_C = '11111111-2222-4333-8444-555555555555';

let stateDir: string;
let logLines: string[];
let store: MetadataStore;

beforeEach(async () => {
  stateDir = await makeScratchDir('metadata-store');
  logLines = [];
  const logger = createLogger({ level: 'info', destination: { write: (line: string) => void logLines.push(line) } });
  store = new MetadataStore(stateDir, logger);
  await store.init();
});

afterEach(async () => {
  await removeScratchDir(stateDir);
});

function byVolumeId(records: VolumeRecord[]): VolumeRecord[] {
  return [...records].sort((a, b) => a.volumeId.localeCompare(b.volumeId));
}

describe('layout', () => {
  test('init creates volumes/, quarantine/ and tombstones/ readable only by the driver', async () => {
    assert.equal(store.volumesDir, path.join(stateDir, 'volumes'));
    assert.equal(store.quarantineDir, path.join(stateDir, 'quarantine'));
    assert.equal(store.tombstonesDir, path.join(stateDir, 'tombstones'));
    for (const dir of [store.volumesDir, store.quarantineDir, store.tombstonesDir]) {
      const stat = await fs.stat(dir);
      assert.ok(stat.isDirectory());
      assert.equal(stat.mode & 0o077, 0, `${dir} is ${(stat.mode & 0o777).toString(8)}`);
    }
  });

  test('init twice is fine and keeps the records', async () => {
    await store.write(record(UID_A));
    await store.init();
    assert.equal((await store.loadAll()).records.length, 1);
  });

  test('pathOf is <state>/volumes/<volumeId>.json', () => {
    const id = volumeIdFor(UID_A, 'svid');
    assert.equal(store.pathOf(id), path.join(stateDir, 'volumes', `${id}.json`));
  });
});

describe('write and read back', () => {
  test('a written record reads back equal, via read and loadAll', async () => {
    const a = record(UID_A);
    const b = record(UID_B, { fsGroup: 1000, spiffeId: 'spiffe://example.org/b', hint: 'internal', tmpfs: true });
    await store.write(a);
    await store.write(b);
    assert.deepEqual(await store.read(a.volumeId), a);
    assert.deepEqual(await store.read(b.volumeId), b);
    const loaded = await store.loadAll();
    assert.deepEqual(loaded.quarantined, []);
    assert.deepEqual(byVolumeId(loaded.records), byVolumeId([a, b]));
  });

  test('the file is mode 0600 and pretty JSON ending in a newline', async () => {
    const a = record(UID_A);
    await store.write(a);
    const file = store.pathOf(a.volumeId);
    const stat = await fs.stat(file);
    assert.equal(stat.mode & 0o777, 0o600);
    const text = await fs.readFile(file, 'utf8');
    assert.ok(text.endsWith('}\n'));
    assert.deepEqual(JSON.parse(text), a);
  });

  test('0600 regardless of the umask', async () => {
    const previous = process.umask(0);
    try {
      const a = record(UID_A);
      await store.write(a);
      assert.equal((await fs.stat(store.pathOf(a.volumeId))).mode & 0o777, 0o600);
    } finally {
      process.umask(previous);
    }
  });

  test('a rewrite replaces the record and leaves no temp file', async () => {
    const a = record(UID_A, { tmpfs: false });
    await store.write(a);
    await store.write({ ...a, tmpfs: true });
    assert.equal((await store.read(a.volumeId))?.tmpfs, true);
    assert.deepEqual(await fs.readdir(store.volumesDir), [`${a.volumeId}.json`]);
  });

  test('a write that fails (a directory in the way) leaves that directory and no temp file behind', async () => {
    const a = record(UID_A);
    // A non-empty directory where the record goes: rename(2) refuses to replace it.
    await fs.mkdir(path.join(store.pathOf(a.volumeId), 'inside'), { recursive: true });
    await assert.rejects(store.write(a), (err: NodeJS.ErrnoException) => ['EISDIR', 'ENOTEMPTY', 'EEXIST'].includes(err.code ?? ''));
    assert.deepEqual(await fs.readdir(store.volumesDir), [`${a.volumeId}.json`]);
    assert.deepEqual(await fs.readdir(store.pathOf(a.volumeId)), ['inside']);
  });

  test('a symbolic link in place of a record is replaced, never written through', async () => {
    const a = record(UID_A);
    const outside = path.join(stateDir, 'outside.txt');
    await fs.writeFile(outside, 'untouched');
    await fs.symlink(outside, store.pathOf(a.volumeId));
    await store.write(a);
    assert.equal(await fs.readFile(outside, 'utf8'), 'untouched');
    assert.ok((await fs.lstat(store.pathOf(a.volumeId))).isFile());
    assert.deepEqual(await store.read(a.volumeId), a);
  });

  test('concurrent writes of different records each land whole', async () => {
    const uids = Array.from({ length: 20 }, (_, i) => `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`);
    const records = uids.map((uid) => record(uid));
    await Promise.all(records.map((r) => store.write(r)));
    for (const r of records) assert.deepEqual(await store.read(r.volumeId), r);
    assert.equal((await fs.readdir(store.volumesDir)).length, records.length);
  });

  test('read of an unknown volume is undefined', async () => {
    assert.equal(await store.read(volumeIdFor(UID_C, 'svid')), undefined);
  });

  test('read of a corrupt file is undefined, not a throw', async () => {
    const id = volumeIdFor(UID_C, 'svid');
    await fs.writeFile(store.pathOf(id), '{ not json');
    assert.equal(await store.read(id), undefined);
  });

  test('loadAll of an empty state directory', async () => {
    assert.deepEqual(await store.loadAll(), { records: [], quarantined: [], unsupported: [] });
  });
});

describe('remove', () => {
  test('remove deletes the record', async () => {
    const a = record(UID_A);
    const b = record(UID_B);
    await store.write(a);
    await store.write(b);
    await store.remove(a.volumeId);
    assert.equal(await store.read(a.volumeId), undefined);
    assert.deepEqual((await store.loadAll()).records, [b]);
  });

  test('removing an unknown volume is fine (unpublish is idempotent)', async () => {
    await store.remove(volumeIdFor(UID_C, 'svid'));
    await store.remove(volumeIdFor(UID_C, 'svid'));
  });
});

describe('nothing invalid or secret is written', () => {
  test('the JSON keys are exactly the expected, non-secret set', async () => {
    const a = record(UID_A, { fsGroup: 2000, spiffeId: 'spiffe://example.org/a', hint: 'h' });
    await store.write(a);
    const json = JSON.parse(await fs.readFile(store.pathOf(a.volumeId), 'utf8')) as Record<string, Record<string, unknown>>;
    assert.deepEqual(Object.keys(json).sort(), [
      'createdAt',
      'files',
      'fsGroup',
      'hint',
      'pod',
      'spiffeId',
      'targetPath',
      'tmpfs',
      'version',
      'volumeId',
      'volumeName',
    ]);
    assert.deepEqual(Object.keys(json['pod'] ?? {}).sort(), ['name', 'namespace', 'serviceAccount', 'uid']);
    assert.deepEqual(Object.keys(json['files'] ?? {}).sort(), ['bundle', 'cert', 'key']);
  });

  test('a record carrying a key, tokens or secrets is refused and nothing is written', async () => {
    const secrets: Record<string, unknown>[] = [
      { keyDer: 'MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg' },
      { x509_svid_key: 'secret' },
      { privateKey: '-----BEGIN PRIVATE KEY-----' },
      { tokens: '{"spire":{"token":"eyJ.secret.sig"}}' },
      { secrets: { password: 'hunter2' } },
    ];
    for (const extra of secrets) {
      const a = { ...record(UID_A), ...extra };
      await assert.rejects(store.write(a), Error, Object.keys(extra)[0]);
    }
    assert.deepEqual(await fs.readdir(store.volumesDir), []);
  });

  test('an extra field inside pod or files never reaches the file', async () => {
    const a = record(UID_A);
    (a.pod as Record<string, unknown>)['token'] = 'eyJ.secret.sig';
    (a.files as Record<string, unknown>)['keyPem'] = '-----BEGIN PRIVATE KEY-----';
    // Refusing it would be as good as dropping it; writing it is not.
    await store.write(a).catch(() => undefined);
    const text = await fs.readFile(store.pathOf(a.volumeId), 'utf8').catch(() => '');
    assert.doesNotMatch(text, /eyJ\.secret\.sig|PRIVATE KEY|token|keyPem/);
  });

  test('a record whose volumeId is not a kubelet volume handle is refused', async () => {
    for (const volumeId of ['../../etc/passwd', 'csi-xyz', `csi-${'A'.repeat(64)}`, '']) {
      await assert.rejects(store.write(record(UID_A, { volumeId })), Error, JSON.stringify(volumeId));
    }
    assert.deepEqual(await fs.readdir(store.volumesDir), []);
    assert.deepEqual(await fs.readdir(stateDir).then((names) => names.sort()), ['quarantine', 'tombstones', 'volumes']);
  });

  test('other schema violations are refused', async () => {
    const bad: Partial<Record<keyof VolumeRecord, unknown>>[] = [
      { version: 2 },
      { targetPath: 'relative/path' },
      { volumeName: '' },
      { fsGroup: -1 },
      { fsGroup: 1.5 },
      { createdAt: 5 },
      { tmpfs: 'yes' },
    ];
    for (const overrides of bad) {
      await assert.rejects(store.write({ ...record(UID_A), ...overrides } as VolumeRecord), Error, JSON.stringify(overrides));
    }
  });
});

describe('loadAll quarantines bad files, never failing the others (invariant 6)', () => {
  test('corrupt JSON, a schema-invalid file and a misnamed file are quarantined; the valid ones load', async () => {
    const a = record(UID_A);
    const b = record(UID_B);
    await store.write(a);
    await store.write(b);

    const corruptName = `${volumeIdFor(UID_C, 'corrupt')}.json`;
    const invalidName = `${volumeIdFor(UID_C, 'invalid')}.json`;
    const misnamedName = `${volumeIdFor(UID_C, 'misnamed')}.json`;
    await fs.writeFile(path.join(store.volumesDir, corruptName), '{"version":1, "volumeId": "csi-');
    const invalid: Record<string, unknown> = { ...record(UID_C), volumeId: volumeIdFor(UID_C, 'invalid') };
    delete invalid['pod'];
    await fs.writeFile(path.join(store.volumesDir, invalidName), JSON.stringify(invalid));
    // A valid record stored under another volume's name: resuming it would mix up two volumes.
    await fs.writeFile(path.join(store.volumesDir, misnamedName), JSON.stringify(record(UID_C)));

    const loaded = await store.loadAll();
    assert.deepEqual(byVolumeId(loaded.records), byVolumeId([a, b]));
    assert.equal(loaded.quarantined.length, 3);
    for (const name of [corruptName, invalidName, misnamedName]) {
      const moved = loaded.quarantined.find((q) => path.basename(q).startsWith(`${name}.`));
      assert.ok(moved, `${name} was not quarantined: ${loaded.quarantined.join(', ')}`);
      assert.equal(path.dirname(moved), store.quarantineDir);
      await fs.access(moved);
    }
    assert.deepEqual((await fs.readdir(store.volumesDir)).sort(), [`${a.volumeId}.json`, `${b.volumeId}.json`].sort());
    assert.equal((await fs.readdir(store.quarantineDir)).length, 3);

    // The quarantined copies keep their content for a human to look at.
    const corruptCopy = loaded.quarantined.find((q) => path.basename(q).startsWith(`${corruptName}.`)) ?? '';
    assert.equal(await fs.readFile(corruptCopy, 'utf8'), '{"version":1, "volumeId": "csi-');

    // One error log line per quarantined file, naming both places.
    const errors = logLines.map((line) => JSON.parse(line) as Record<string, unknown>).filter((entry) => entry['level'] === 'error');
    assert.equal(errors.length, 3);
    for (const entry of errors) {
      assert.match(String(entry['msg']), /quarantine/);
      assert.equal(typeof entry['file'], 'string');
      assert.equal(typeof entry['quarantined_to'], 'string');
    }
    assert.ok(errors.some((entry) => /does not match volumeId/.test(String(entry['err']))));

    // A second start finds only the good ones and quarantines nothing more.
    const again = await store.loadAll();
    assert.deepEqual(again.quarantined, []);
    assert.equal(again.records.length, 2);
  });

  test('fields added by a newer version are ignored: the record loads, the unknown values are neither kept nor logged', async () => {
    const c = record(UID_C);
    await fs.writeFile(
      store.pathOf(c.volumeId),
      JSON.stringify({ ...c, keyDer: 'MIGHAgEAMBMG', pod: { ...c.pod, ip: '10.1.2.3' }, files: { ...c.files, jwt: 'token' } }),
    );
    const loaded = await store.loadAll();
    assert.deepEqual(loaded.records, [c]);
    assert.deepEqual(loaded.quarantined, []);
    assert.deepEqual(await store.read(c.volumeId), c);
    assert.doesNotMatch(logLines.join('\n'), /MIGHAgEAMBMG|10\.1\.2\.3/);
  });

  test('layout and credentialBundle: written with version 1, read back; records from before them still load without them', async () => {
    const withLayout = record(UID_A, {
      layout: 'cert-manager',
      files: { cert: 'tls.crt', key: 'tls.key', bundle: 'ca.crt', credentialBundle: 'credential-bundle.pem' },
    });
    await store.write(withLayout);
    const json = JSON.parse(await fs.readFile(store.pathOf(withLayout.volumeId), 'utf8')) as Record<string, unknown>;
    assert.equal(json['version'], 1, 'new fields only: the version stays 1 so an older driver still resumes the volume');
    assert.equal(json['layout'], 'cert-manager');
    assert.deepEqual(await store.read(withLayout.volumeId), withLayout);
    const old = record(UID_B);
    await store.write(old);
    const oldJson = JSON.parse(await fs.readFile(store.pathOf(old.volumeId), 'utf8')) as Record<string, Record<string, unknown>>;
    assert.equal('layout' in oldJson, false);
    assert.deepEqual(Object.keys(oldJson['files'] ?? {}).sort(), ['bundle', 'cert', 'key']);
    const loaded = await store.read(old.volumeId);
    assert.equal(loaded?.layout, undefined);
    assert.equal(loaded?.files.credentialBundle, undefined);
  });

  test('jwt (audiences and file names, never a token): written with version 1, read back for the resume; records without it load without it', async () => {
    const withJwt = record(UID_A, {
      jwt: { svids: [{ file: 'jwt_svid.token', audiences: ['vault', 'https://api.example.com'] }], bundleFile: 'bundle.json' },
    });
    await store.write(withJwt);
    const json = JSON.parse(await fs.readFile(store.pathOf(withJwt.volumeId), 'utf8')) as Record<string, unknown>;
    assert.equal(json['version'], 1);
    assert.deepEqual(json['jwt'], {
      svids: [{ file: 'jwt_svid.token', audiences: ['vault', 'https://api.example.com'] }],
      bundleFile: 'bundle.json',
    });
    assert.deepEqual(await store.read(withJwt.volumeId), withJwt);
    const plain = record(UID_B);
    await store.write(plain);
    assert.equal((await store.read(plain.volumeId))?.jwt, undefined);
    // A token smuggled into the record never reaches the file: only this version's own fields are written.
    const smuggled = { ...record(UID_C), jwt: { svids: [{ file: 'a', audiences: ['x'], token: 'eyJ.secret.sig' }], bundleFile: 'b' } };
    await store.write(smuggled);
    assert.doesNotMatch(await fs.readFile(store.pathOf(smuggled.volumeId), 'utf8'), /secret|token/);
  });

  test('a layout this version does not know (a newer driver added it) loads: the resolved names are what it writes', async () => {
    const c = record(UID_C, { layout: 'some-future-layout', files: { cert: 'a.pem', key: 'b.pem', bundle: 'c.pem' } });
    await fs.writeFile(store.pathOf(c.volumeId), JSON.stringify(c));
    const loaded = await store.loadAll();
    assert.deepEqual(loaded.records, [c]);
    assert.deepEqual(loaded.quarantined, []);
  });

  test('a record of a newer, incompatible version stays in place, unresumed and not quarantined, and still counts as ours', async () => {
    const c = record(UID_C);
    const text = JSON.stringify({ ...c, version: 2, somethingNew: true });
    await fs.writeFile(store.pathOf(c.volumeId), text);
    const loaded = await store.loadAll();
    assert.deepEqual(loaded.records, []);
    assert.deepEqual(loaded.quarantined, []);
    assert.deepEqual(loaded.unsupported, [c.volumeId]);
    assert.equal(await fs.readFile(store.pathOf(c.volumeId), 'utf8'), text, 'left exactly as the newer version wrote it');
    assert.equal(await store.read(c.volumeId), undefined);
    assert.equal(await store.knows(c.volumeId), true);
    assert.match(logLines.join('\n'), /written by a newer driver version/);
    await store.remove(c.volumeId);
    assert.equal(await store.knows(c.volumeId), false);
  });

  test('a quarantined record leaves a tombstone that remove() clears; a misnamed file leaves none', async () => {
    const id = volumeIdFor(UID_C, 'svid');
    await fs.writeFile(store.pathOf(id), '{"version": 1, "volu');
    await fs.writeFile(path.join(store.volumesDir, 'not-a-volume-id.json'), 'garbage');
    const loaded = await store.loadAll();
    assert.equal(loaded.quarantined.length, 2);
    assert.deepEqual(await store.tombstones(), [id]);
    assert.equal(await store.knows(id), true);
    assert.equal(await store.read(id), undefined);
    const tombstone = JSON.parse(await fs.readFile(path.join(store.tombstonesDir, id), 'utf8')) as Record<string, unknown>;
    assert.equal(tombstone['volumeId'], id);
    assert.ok(loaded.quarantined.includes(String(tombstone['quarantinedTo'])));
    await store.remove(id);
    assert.deepEqual(await store.tombstones(), []);
    assert.equal(await store.knows(id), false);
    assert.equal(await store.knows('../../etc/passwd'), false);
  });

  test('an empty file and a JSON array are quarantined', async () => {
    await fs.writeFile(path.join(store.volumesDir, `${volumeIdFor(UID_A, 'empty')}.json`), '');
    await fs.writeFile(path.join(store.volumesDir, `${volumeIdFor(UID_A, 'array')}.json`), '[]');
    await store.write(record(UID_B));
    const loaded = await store.loadAll();
    assert.equal(loaded.records.length, 1);
    assert.equal(loaded.quarantined.length, 2);
  });

  test('a directory named like a record is quarantined, not fatal', async () => {
    await fs.mkdir(path.join(store.volumesDir, `${volumeIdFor(UID_A, 'dir')}.json`));
    await store.write(record(UID_B));
    const loaded = await store.loadAll();
    assert.equal(loaded.records.length, 1);
    assert.equal(loaded.quarantined.length, 1);
  });

  test('temp files a crash left (ours, and those of write-file-atomic in older versions) are removed, not loaded or quarantined', async () => {
    const a = record(UID_A);
    await store.write(a);
    const tempNames = [`${a.volumeId}.json.1234567890`, `${volumeIdFor(UID_B, 'svid')}.json.3f2a9b1c`, `${a.volumeId}.json.0123456789ab.tmp`];
    for (const name of tempNames) await fs.writeFile(path.join(store.volumesDir, name), '{"partial":');
    const loaded = await store.loadAll();
    assert.deepEqual(loaded.records, [a]);
    assert.deepEqual(loaded.quarantined, []);
    assert.deepEqual(await fs.readdir(store.volumesDir), [`${a.volumeId}.json`]);
    assert.deepEqual(await fs.readdir(store.quarantineDir), []);
  });
});

describe('volume ids that are not kubelet volume handles (NodeUnpublishVolume passes volume_id through unchecked)', () => {
  test('remove() with a path-like volume id does not delete files outside volumes/', {}, async () => {
    const outside = path.join(stateDir, 'outside.json');
    await fs.writeFile(outside, '{}');
    await store.remove('../outside');
    await fs.access(outside);
  });

  test('read() does not return a record whose volumeId is not the one asked for', {}, async () => {
    const a = record(UID_A);
    await store.write(a);
    assert.equal(await store.read(`../volumes/${a.volumeId}`), undefined);
  });
});
