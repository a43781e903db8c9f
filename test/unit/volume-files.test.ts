import assert from 'node:assert/strict';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { before, describe, test } from 'node:test';
import type { X509SvidWithKey } from '../../src/spire/messages.js';
import { buildVolumeFiles, pickSvid, spiffeIdOf, type PickedSvid } from '../../src/volumes/volume-files.js';
import { mintCa, mintSvid, type MintedCa, type MintedSvid } from '../support/certs.js';

/** An SVID as the agent sends it; the certificate bytes do not matter to pickSvid. */
function agentSvid(path: string, hint = '', trustDomain = 'example.org'): X509SvidWithKey {
  return {
    x509_svid: {
      cert_chain: [Buffer.from(`cert of ${path}`)],
      id: { trust_domain: trustDomain, path },
      expires_at: 2_000_000_000,
      hint,
    },
    x509_svid_key: Buffer.from(`key of ${path}`),
  };
}

const NO_CHOICE = { spiffeId: null, hint: null };

function picked(result: ReturnType<typeof pickSvid>): PickedSvid {
  assert.ok(!('problem' in result), 'problem' in result ? result.problem : '');
  return result;
}

function problem(result: ReturnType<typeof pickSvid>): string {
  assert.ok('problem' in result, `expected no SVID, got ${JSON.stringify((result as PickedSvid).spiffeId)}`);
  return result.problem;
}

describe('spiffeIdOf', () => {
  test('joins trust domain and path', () => {
    assert.equal(spiffeIdOf(agentSvid('/ns/default/sa/app')), 'spiffe://example.org/ns/default/sa/app');
  });

  test('undefined without an SVID or an id', () => {
    assert.equal(spiffeIdOf({ x509_svid: null, x509_svid_key: Buffer.alloc(0) }), undefined);
    assert.equal(spiffeIdOf({ x509_svid: { cert_chain: [], id: null, expires_at: 0, hint: '' }, x509_svid_key: Buffer.alloc(0) }), undefined);
  });
});

describe('pickSvid', () => {
  const first = agentSvid('/ns/default/sa/app', 'internal');
  const second = agentSvid('/ns/default/sa/app-external', 'external');
  const third = agentSvid('/ns/default/sa/app', 'external');
  const svids = [first, second, third];

  test('the first SVID by default', () => {
    const result = picked(pickSvid(svids, NO_CHOICE));
    assert.deepEqual(result, {
      spiffeId: 'spiffe://example.org/ns/default/sa/app',
      trustDomainId: 'spiffe://example.org',
      certChain: first.x509_svid?.cert_chain,
      keyDer: first.x509_svid_key,
      hint: 'internal',
    });
  });

  test('by SPIFFE ID', () => {
    const result = picked(pickSvid(svids, { spiffeId: 'spiffe://example.org/ns/default/sa/app-external', hint: null }));
    assert.equal(result.spiffeId, 'spiffe://example.org/ns/default/sa/app-external');
    assert.equal(result.keyDer, second.x509_svid_key);
  });

  test('by SPIFFE ID, the first of several with that ID', () => {
    const result = picked(pickSvid(svids, { spiffeId: 'spiffe://example.org/ns/default/sa/app', hint: null }));
    assert.equal(result.keyDer, first.x509_svid_key);
  });

  test('by hint', () => {
    const result = picked(pickSvid(svids, { spiffeId: null, hint: 'external' }));
    assert.equal(result.keyDer, second.x509_svid_key);
    assert.equal(result.hint, 'external');
  });

  test('by SPIFFE ID and hint together', () => {
    const result = picked(pickSvid(svids, { spiffeId: 'spiffe://example.org/ns/default/sa/app', hint: 'external' }));
    assert.equal(result.keyDer, third.x509_svid_key);
    assert.equal(result.certChain, third.x509_svid?.cert_chain);
  });

  test('the trust domain comes from the chosen SVID', () => {
    const foreign = agentSvid('/w', '', 'other.org');
    const result = picked(pickSvid([foreign], NO_CHOICE));
    assert.equal(result.spiffeId, 'spiffe://other.org/w');
    assert.equal(result.trustDomainId, 'spiffe://other.org');
  });

  test('SVIDs without an id are skipped', () => {
    const broken: X509SvidWithKey[] = [
      { x509_svid: null, x509_svid_key: Buffer.from('k0') },
      { x509_svid: { cert_chain: [], id: null, expires_at: 0, hint: '' }, x509_svid_key: Buffer.from('k1') },
      second,
    ];
    assert.equal(picked(pickSvid(broken, NO_CHOICE)).keyDer, second.x509_svid_key);
  });

  test('no SPIFFE ID matching: the problem lists every offered ID and hint', () => {
    const text = problem(pickSvid(svids, { spiffeId: 'spiffe://example.org/ns/kube-system/sa/admin', hint: null }));
    assert.match(text, /none of the 3 SVIDs the agent offers has SPIFFE ID spiffe:\/\/example\.org\/ns\/kube-system\/sa\/admin/);
    assert.ok(
      text.includes(
        '[spiffe://example.org/ns/default/sa/app (hint internal), spiffe://example.org/ns/default/sa/app-external (hint external), spiffe://example.org/ns/default/sa/app (hint external)]',
      ),
      text,
    );
  });

  test('no hint matching', () => {
    const text = problem(pickSvid(svids, { spiffeId: null, hint: 'missing' }));
    assert.match(text, /none of the 3 SVIDs the agent offers has hint "missing"/);
  });

  test('an ID and a hint that never occur together', () => {
    const text = problem(pickSvid(svids, { spiffeId: 'spiffe://example.org/ns/default/sa/app-external', hint: 'internal' }));
    assert.match(text, /has SPIFFE ID spiffe:\/\/example\.org\/ns\/default\/sa\/app-external and hint "internal"/);
  });

  test('an empty list', () => {
    assert.equal(problem(pickSvid([], NO_CHOICE)), 'none of the 0 SVIDs the agent offers has a SPIFFE ID: []');
  });

  test('only SVIDs without an id', () => {
    const text = problem(pickSvid([{ x509_svid: null, x509_svid_key: Buffer.from('secret-key') }], NO_CHOICE));
    assert.equal(text, 'none of the 1 SVIDs the agent offers has a SPIFFE ID: [?]');
  });

  test('the problem never carries key bytes', () => {
    const text = problem(pickSvid(svids, { spiffeId: 'spiffe://example.org/none', hint: null }));
    assert.doesNotMatch(text, /key of/);
  });

  test('a prefix of a SPIFFE ID does not match', () => {
    problem(pickSvid(svids, { spiffeId: 'spiffe://example.org/ns/default/sa/ap', hint: null }));
    problem(pickSvid(svids, { spiffeId: 'spiffe://example.org/ns/default/sa/app/', hint: null }));
  });
});

describe('buildVolumeFiles', () => {
  let root: MintedCa;
  let intermediate: MintedCa;
  let leaf: MintedSvid;
  let svid: PickedSvid;
  const names = { cert: 'svid.pem', key: 'svid_key.pem', bundle: 'svid_bundle.pem' };

  before(async () => {
    root = await mintCa({ trustDomain: 'example.org' });
    intermediate = await mintCa({ trustDomain: 'example.org', parent: root });
    leaf = await mintSvid({ ca: intermediate, spiffeId: 'spiffe://example.org/app' });
    svid = {
      spiffeId: 'spiffe://example.org/app',
      trustDomainId: 'spiffe://example.org',
      certChain: leaf.certChain,
      keyDer: leaf.keyPkcs8Der,
      hint: '',
    };
  });

  function pemBlocks(text: string, label: string): string[] {
    return text.match(new RegExp(`-----BEGIN ${label}-----\\n[A-Za-z0-9+/=\\n]+-----END ${label}-----\\n`, 'g')) ?? [];
  }

  test('three files, certificate 0644, key 0600, bundle 0644', () => {
    const files = buildVolumeFiles(svid, [root.certDer], names, null);
    assert.deepEqual(
      files.map((f) => [f.name, f.mode.toString(8)]),
      [
        ['svid.pem', '644'],
        ['svid_key.pem', '600'],
        ['svid_bundle.pem', '644'],
      ],
    );
  });

  test('with an fsGroup the key is 0640 and the others stay 0644', () => {
    const files = buildVolumeFiles(svid, [root.certDer], names, 1000);
    assert.deepEqual(
      files.map((f) => f.mode),
      [0o644, 0o640, 0o644],
    );
  });

  test('the key is never world-readable', () => {
    for (const fsGroup of [null, 1, 4294967294]) {
      const key = buildVolumeFiles(svid, [root.certDer], names, fsGroup)[1];
      assert.equal((key?.mode ?? 0o777) & 0o007, 0);
    }
  });

  test('custom names are used as given', () => {
    const files = buildVolumeFiles(svid, [root.certDer], { cert: 'tls.crt', key: 'tls.key', bundle: 'ca.crt' }, null);
    assert.deepEqual(
      files.map((f) => f.name),
      ['tls.crt', 'tls.key', 'ca.crt'],
    );
  });

  test('the certificate file holds the leaf then the intermediates, as PEM', () => {
    const [cert] = buildVolumeFiles(svid, [root.certDer], names, null);
    const blocks = pemBlocks(cert?.data.toString('utf8') ?? '', 'CERTIFICATE');
    assert.equal(blocks.length, 2);
    assert.equal(blocks.join(''), cert?.data.toString('utf8'));
    assert.ok(new X509Certificate(blocks[0] ?? '').raw.equals(leaf.certDer));
    assert.ok(new X509Certificate(blocks[1] ?? '').raw.equals(intermediate.certDer));
    assert.doesNotMatch(cert?.data.toString('utf8') ?? '', /PRIVATE KEY/);
  });

  test('the key file holds the PKCS#8 key as one PRIVATE KEY block matching the leaf', () => {
    const key = buildVolumeFiles(svid, [root.certDer], names, null)[1];
    const text = key?.data.toString('utf8') ?? '';
    assert.equal(pemBlocks(text, 'PRIVATE KEY').join(''), text);
    assert.equal(pemBlocks(text, 'PRIVATE KEY').length, 1);
    const keyObject = createPrivateKey(text);
    assert.ok(keyObject.export({ type: 'pkcs8', format: 'der' }).equals(leaf.keyPkcs8Der));
    assert.ok(new X509Certificate(leaf.certDer).checkPrivateKey(keyObject));
  });

  test('the bundle file holds every bundle certificate in order', async () => {
    const next = await mintCa({ trustDomain: 'example.org' });
    const bundle = buildVolumeFiles(svid, [root.certDer, next.certDer], names, null)[2];
    const blocks = pemBlocks(bundle?.data.toString('utf8') ?? '', 'CERTIFICATE');
    assert.equal(blocks.length, 2);
    assert.ok(new X509Certificate(blocks[0] ?? '').raw.equals(root.certDer));
    assert.ok(new X509Certificate(blocks[1] ?? '').raw.equals(next.certDer));
    assert.doesNotMatch(bundle?.data.toString('utf8') ?? '', /PRIVATE KEY/);
  });

  test('the same input gives byte-identical files (so an unchanged update writes nothing)', () => {
    const a = buildVolumeFiles(svid, [root.certDer], names, null);
    const b = buildVolumeFiles(svid, [root.certDer], names, null);
    assert.equal(a.length, b.length);
    a.forEach((file, i) => assert.ok(file.data.equals(b[i]?.data ?? Buffer.alloc(0))));
  });

  describe('credential bundle (Kubernetes Pod Certificates format)', () => {
    const withBundle = { ...names, credentialBundle: 'credential-bundle.pem' };

    test('absent from the names: no fourth file', () => {
      assert.equal(buildVolumeFiles(svid, [root.certDer], names, null).length, 3);
      assert.equal(buildVolumeFiles(svid, [root.certDer], { ...names, credentialBundle: undefined }, null).length, 3);
    });

    test('a fourth file with the key mode: 0600, or 0640 with an fsGroup', () => {
      assert.deepEqual(
        buildVolumeFiles(svid, [root.certDer], withBundle, null).map((f) => [f.name, f.mode.toString(8)]),
        [
          ['svid.pem', '644'],
          ['svid_key.pem', '600'],
          ['svid_bundle.pem', '644'],
          ['credential-bundle.pem', '600'],
        ],
      );
      assert.equal(buildVolumeFiles(svid, [root.certDer], withBundle, 1000)[3]?.mode, 0o640);
    });

    test('byte for byte: the PKCS#8 PRIVATE KEY block, then the chain leaf first, 64-column base64, nothing else', () => {
      const file = buildVolumeFiles(svid, [root.certDer], withBundle, null)[3];
      const pem = (der: Buffer, label: string): string =>
        `-----BEGIN ${label}-----\n${(der.toString('base64').match(/.{1,64}/g) ?? []).join('\n')}\n-----END ${label}-----\n`;
      // What kubelet's podcertificate manager writes: pem.EncodeToMemory of the key, then of each certificate.
      const expected = pem(leaf.keyPkcs8Der, 'PRIVATE KEY') + pem(leaf.certDer, 'CERTIFICATE') + pem(intermediate.certDer, 'CERTIFICATE');
      assert.equal(file?.data.toString('utf8'), expected);
      assert.ok(file?.data.equals(Buffer.from(expected, 'ascii')));
    });

    test('it is the key file followed by the certificate file, and parses back into a matching key and leaf', () => {
      const [cert, key, , bundleFile] = buildVolumeFiles(svid, [root.certDer], withBundle, null);
      const text = bundleFile?.data.toString('utf8') ?? '';
      assert.equal(text, `${key?.data.toString('utf8') ?? ''}${cert?.data.toString('utf8') ?? ''}`);
      assert.ok(text.startsWith('-----BEGIN PRIVATE KEY-----\n'));
      assert.doesNotMatch(text, /RSA PRIVATE KEY|EC PRIVATE KEY|\r/);
      const keyObject = createPrivateKey(text); // the first PEM block
      const certs = pemBlocks(text, 'CERTIFICATE').map((block) => new X509Certificate(block));
      assert.equal(certs.length, 2);
      assert.ok(certs[0]?.checkPrivateKey(keyObject));
      assert.ok(certs[0]?.raw.equals(leaf.certDer));
      assert.ok(certs[1]?.raw.equals(intermediate.certDer));
      // The trust bundle is not part of it: it holds the pod's own credentials only.
      assert.ok(!certs.some((c) => c.raw.equals(root.certDer)));
    });
  });
});
