import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { describe, test } from 'node:test';
import { describeFileNameProblem } from '../../src/fs/file-names.js';
import {
  buildFederatedBundleFiles,
  federatedBundleFileName,
  federatedBundleModeOf,
  federatedTrustDomainIds,
  type FederatedBundleInput,
} from '../../src/volumes/federated-bundles.js';
import { mintCa } from '../support/certs.js';

function pemFingerprints(data: Buffer): string[] {
  return data
    .toString()
    .split(/(?=-----BEGIN CERTIFICATE-----)/)
    .filter((block) => block.includes('BEGIN CERTIFICATE'))
    .map((block) => new X509Certificate(block).fingerprint256);
}

const fingerprint = (der: Buffer): string => new X509Certificate(der).fingerprint256;

describe('federated bundle file names', () => {
  test('are <trust domain>.federated-bundle.pem', () => {
    assert.deepEqual(federatedBundleFileName('spiffe://federated.test'), { name: 'federated.test.federated-bundle.pem' });
    assert.deepEqual(federatedBundleFileName('spiffe://a-b_c.0'), { name: 'a-b_c.0.federated-bundle.pem' });
  });

  test('anything but spiffe://<trust domain> gets no file', () => {
    for (const id of [
      'federated.test',
      'spiffe://',
      'spiffe://Upper.org',
      'spiffe://a/b',
      'spiffe://../x',
      'spiffe://a b',
      'spiffe://a\0b',
      'SPIFFE://a.org',
      'spiffe://ä.org',
    ]) {
      const named = federatedBundleFileName(id);
      assert.ok('problem' in named, `${JSON.stringify(id)} must get no file name`);
    }
  });

  test('a name never starts with "." (the AtomicWriter layout: ..data, ..<timestamp>)', () => {
    for (const id of ['spiffe://..', 'spiffe://.', 'spiffe://.hidden', 'spiffe://..data']) {
      const named = federatedBundleFileName(id);
      assert.ok('problem' in named, id);
      assert.match(named.problem, /starts with "\."|is not a file name/);
    }
  });

  test('a trust domain too long for NAME_MAX gets no file; the longest that fits does', () => {
    const fits = 'a'.repeat(255 - '.federated-bundle.pem'.length);
    const ok = federatedBundleFileName(`spiffe://${fits}`);
    assert.ok('name' in ok);
    assert.equal(describeFileNameProblem(ok.name), undefined);
    const tooLong = federatedBundleFileName(`spiffe://${fits}a`);
    assert.ok('problem' in tooLong);
    assert.match(tooLong.problem, /at most 255 bytes/);
  });
});

describe('which trust domains a volume gets', () => {
  test("the entry's federates_with, without the own trust domain, each once, sorted", () => {
    assert.deepEqual(
      federatedTrustDomainIds(['spiffe://z.org', 'spiffe://example.org', 'spiffe://a.org', 'spiffe://z.org'], 'spiffe://example.org'),
      ['spiffe://a.org', 'spiffe://z.org'],
    );
    assert.deepEqual(federatedTrustDomainIds([], 'spiffe://example.org'), []);
  });

  test('a recorded mode this version does not know, or none recorded, reads as the default', () => {
    assert.equal(federatedBundleModeOf(undefined), 'separate');
    assert.equal(federatedBundleModeOf('some-future-mode'), 'separate');
    assert.equal(federatedBundleModeOf('combined'), 'combined');
    assert.equal(federatedBundleModeOf('none'), 'none');
  });
});

describe('the federated files of a version', () => {
  test('separate: one file per trust domain with exactly its CAs; combined adds own + federated, each CA once', async () => {
    const own = await mintCa({ trustDomain: 'example.org' });
    const partnerA = await mintCa({ trustDomain: 'a.org' });
    const partnerA2 = await mintCa({ trustDomain: 'a.org' });
    const partnerB = await mintCa({ trustDomain: 'b.org' });
    const input: FederatedBundleInput = {
      mode: 'separate',
      combinedFileName: 'combined_bundle.pem',
      ownBundle: [own.certDer],
      federated: new Map([
        ['spiffe://b.org', [partnerB.certDer]],
        ['spiffe://a.org', [partnerA.certDer, partnerA2.certDer]],
      ]),
      takenNames: new Set(['svid.pem', 'svid_key.pem', 'svid_bundle.pem']),
    };
    const separate = buildFederatedBundleFiles(input);
    assert.deepEqual(
      separate.files.map((f) => [f.name, f.mode]),
      [
        ['a.org.federated-bundle.pem', 0o644],
        ['b.org.federated-bundle.pem', 0o644],
      ],
    );
    assert.deepEqual(pemFingerprints(separate.files[0]!.data), [fingerprint(partnerA.certDer), fingerprint(partnerA2.certDer)]);
    assert.deepEqual(pemFingerprints(separate.files[1]!.data), [fingerprint(partnerB.certDer)]);
    assert.deepEqual(separate.skipped, []);

    const combined = buildFederatedBundleFiles({ ...input, mode: 'combined', ownBundle: [own.certDer, partnerB.certDer] });
    assert.deepEqual(
      combined.files.map((f) => f.name),
      ['a.org.federated-bundle.pem', 'b.org.federated-bundle.pem', 'combined_bundle.pem'],
    );
    assert.deepEqual(pemFingerprints(combined.files[2]!.data), [
      fingerprint(own.certDer),
      fingerprint(partnerB.certDer),
      fingerprint(partnerA.certDer),
      fingerprint(partnerA2.certDer),
    ]);
    assert.equal(combined.files[2]!.mode, 0o644);
  });

  test('none writes nothing; combined without federated trust domains is the own bundle', async () => {
    const own = await mintCa({ trustDomain: 'example.org' });
    const partner = await mintCa({ trustDomain: 'a.org' });
    const base: FederatedBundleInput = {
      mode: 'none',
      combinedFileName: 'all.pem',
      ownBundle: [own.certDer],
      federated: new Map([['spiffe://a.org', [partner.certDer]]]),
      takenNames: new Set(),
    };
    assert.deepEqual(buildFederatedBundleFiles(base), { files: [], skipped: [] });
    const alone = buildFederatedBundleFiles({ ...base, mode: 'combined', federated: new Map() });
    assert.deepEqual(
      alone.files.map((f) => f.name),
      ['all.pem'],
    );
    assert.deepEqual(pemFingerprints(alone.files[0]!.data), [fingerprint(own.certDer)]);
  });

  test('a trust domain without a safe name, or whose name another file has, is skipped with the reason', async () => {
    const partner = await mintCa({ trustDomain: 'a.org' });
    const built = buildFederatedBundleFiles({
      mode: 'combined',
      combinedFileName: 'combined_bundle.pem',
      ownBundle: [],
      federated: new Map([
        ['spiffe://..', [partner.certDer]],
        ['spiffe://a.org', [partner.certDer]],
      ]),
      takenNames: new Set(['a.org.federated-bundle.pem']),
    });
    assert.deepEqual(
      built.files.map((f) => f.name),
      ['combined_bundle.pem'],
    );
    assert.deepEqual(pemFingerprints(built.files[0]!.data), [], 'a skipped trust domain is not in the combined file either');
    assert.deepEqual(
      built.skipped.map((s) => s.trustDomainId),
      ['spiffe://..', 'spiffe://a.org'],
    );
    assert.match(built.skipped[1]!.problem, /another file of the volume/);
  });
});
