import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  ATTRIBUTE_PREFIX,
  DEFAULT_FILE_NAMES,
  DEFAULT_LAYOUT,
  DEFAULT_PKCS12_PASSWORD,
  KUBELET_ATTRIBUTE_PREFIX,
  LAYOUTS,
  parseVolumeAttributes,
  SUPPORTED_ATTRIBUTES,
  type VolumeAttributes,
} from '../../src/volumes/attributes.js';
import { expectInvalidArgument } from '../support/invalid-argument.js';

const DEFAULTS: VolumeAttributes = {
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
};

/** What kubelet merges over the user's attributes for an inline volume with podInfoOnMount and tokenRequests. */
const KUBELET_KEYS: Record<string, string> = {
  'csi.storage.k8s.io/pod.name': 'app-0',
  'csi.storage.k8s.io/pod.namespace': 'default',
  'csi.storage.k8s.io/pod.uid': '0f5e8d6a-3c2b-4e1f-9a7d-5b6c8e9f0a1b',
  'csi.storage.k8s.io/serviceAccount.name': 'app',
  'csi.storage.k8s.io/ephemeral': 'true',
  'csi.storage.k8s.io/serviceAccount.tokens': '{"spire":{"token":"eyJhbGciOiJSUzI1NiJ9.secret.sig","expirationTimestamp":"2030-01-01T00:00:00Z"}}',
};

function rejected(volumeContext: Record<string, string>, ...patterns: RegExp[]): string {
  return expectInvalidArgument(() => parseVolumeAttributes(volumeContext), ...patterns);
}

function attr(name: string, value: string): Record<string, string> {
  return { [`${ATTRIBUTE_PREFIX}${name}`]: value };
}

describe('defaults and accepted attributes', () => {
  test('no attributes gives the spiffe-helper names and nothing else', () => {
    assert.deepEqual(parseVolumeAttributes({}), DEFAULTS);
    assert.deepEqual(DEFAULT_FILE_NAMES, { cert: 'svid.pem', key: 'svid_key.pem', bundle: 'svid_bundle.pem' });
  });

  test('the supported attribute list is exactly the documented one', () => {
    assert.deepEqual([...SUPPORTED_ATTRIBUTES].sort(), [
      'csi.spire.io/bundle-file',
      'csi.spire.io/cert-file',
      'csi.spire.io/combined-bundle-file',
      'csi.spire.io/credential-bundle-file',
      'csi.spire.io/federated-bundles',
      'csi.spire.io/fs-group',
      'csi.spire.io/hint',
      'csi.spire.io/jwt-audiences',
      'csi.spire.io/jwt-bundle-file',
      'csi.spire.io/key-file',
      'csi.spire.io/layout',
      'csi.spire.io/pkcs12-file',
      'csi.spire.io/pkcs12-password',
      'csi.spire.io/spiffe-id',
    ]);
  });

  test('custom file names', () => {
    assert.deepEqual(
      parseVolumeAttributes({
        'csi.spire.io/cert-file': 'tls.crt',
        'csi.spire.io/key-file': 'tls.key',
        'csi.spire.io/bundle-file': 'ca.crt',
      }),
      { ...DEFAULTS, certFile: 'tls.crt', keyFile: 'tls.key', bundleFile: 'ca.crt' },
    );
  });

  test('every attribute at once', () => {
    assert.deepEqual(
      parseVolumeAttributes({
        'csi.spire.io/cert-file': 'cert.pem',
        'csi.spire.io/key-file': 'key.pem',
        'csi.spire.io/bundle-file': 'bundle.pem',
        'csi.spire.io/fs-group': '1000',
        'csi.spire.io/spiffe-id': 'spiffe://example.org/ns/default/sa/app',
        'csi.spire.io/hint': 'internal',
      }),
      {
        layout: 'spiffe-helper',
        certFile: 'cert.pem',
        keyFile: 'key.pem',
        bundleFile: 'bundle.pem',
        credentialBundleFile: undefined,
        pkcs12File: undefined,
        pkcs12Password: undefined,
        fsGroup: 1000,
        spiffeId: 'spiffe://example.org/ns/default/sa/app',
        hint: 'internal',
        federatedBundles: 'separate',
        combinedBundleFile: undefined,
      },
    );
  });

  test("kubelet's csi.storage.k8s.io/* keys are ignored, service-account tokens included", () => {
    assert.deepEqual(parseVolumeAttributes(KUBELET_KEYS), DEFAULTS);
    assert.deepEqual(parseVolumeAttributes({ ...KUBELET_KEYS, 'csi.storage.k8s.io/some-future-key': 'x' }), DEFAULTS);
    assert.equal(KUBELET_ATTRIBUTE_PREFIX, 'csi.storage.k8s.io/');
  });

  test('kubelet keys next to our own attributes', () => {
    assert.deepEqual(parseVolumeAttributes({ ...KUBELET_KEYS, 'csi.spire.io/hint': 'h' }), { ...DEFAULTS, hint: 'h' });
  });

  test('a rejection never echoes the service-account token', () => {
    const message = rejected({ ...KUBELET_KEYS, 'csi.spire.io/bogus': 'x' });
    assert.doesNotMatch(message, /eyJhbGciOiJSUzI1NiJ9|secret/);
  });
});

describe('unknown keys are rejected', () => {
  test('an unknown csi.spire.io/* key (a typo) is rejected and the supported list is named', () => {
    const message = rejected(attr('cert_file', 'x.pem'), /unknown volume attribute "csi\.spire\.io\/cert_file"/);
    for (const key of SUPPORTED_ATTRIBUTES) assert.ok(message.includes(key), key);
  });

  test('a key without our prefix is rejected', () => {
    for (const key of ['cert-file', 'foo', 'CSI.SPIRE.IO/cert-file', 'csi.spire.io', 'spire.io/hint', 'csi.spire.io.evil/hint']) {
      rejected({ [key]: 'x' }, new RegExp(`unknown volume attribute "${key.replace(/\./g, '\\.')}"`), /supported: csi\.spire\.io\/cert-file/);
    }
  });

  test('the bare prefix with an empty name is rejected', () => {
    rejected({ 'csi.spire.io/': 'x' }, /unknown volume attribute "csi\.spire\.io\/"/);
  });

  test('several unknown keys are all named', () => {
    rejected({ 'csi.spire.io/one': 'x', 'csi.spire.io/two': 'y' }, /"csi\.spire\.io\/one"/, /"csi\.spire\.io\/two"/);
  });

  test('names of Object.prototype members are rejected like any other unknown key', () => {
    for (const name of ['constructor', 'toString', 'hasOwnProperty', 'valueOf']) {
      rejected(attr(name, 'x'), /unknown volume attribute/);
    }
  });

  test('csi.spire.io/__proto__ is rejected like any other unknown key', {}, () => {
    rejected({ 'csi.spire.io/__proto__': 'x' }, /unknown volume attribute "csi\.spire\.io\/__proto__"/);
  });
});

describe('attributes can never touch selectors (invariant 1)', () => {
  test('every attempt to set a selector is rejected', () => {
    const attempts: Record<string, string>[] = [
      { 'csi.spire.io/selectors': 'k8s:ns:kube-system' },
      { 'csi.spire.io/selector': 'k8s:sa:spire-server' },
      { 'csi.spire.io/k8s:ns': 'kube-system' },
      { 'csi.spire.io/k8s:sa': 'admin' },
      { 'csi.spire.io/pod-uid': '11111111-2222-3333-4444-555555555555' },
      { 'csi.spire.io/pod-name': 'victim' },
      { 'csi.spire.io/namespace': 'kube-system' },
      { 'csi.spire.io/service-account': 'admin' },
      { 'csi.spire.io/node-name': 'other-node' },
      { selectors: 'k8s:ns:kube-system' },
      { 'spiffe.io/spire-selectors': 'k8s:ns:kube-system' },
      { 'k8s:ns': 'kube-system' },
    ];
    for (const attempt of attempts) {
      rejected({ ...KUBELET_KEYS, ...attempt }, /unknown volume attribute/);
    }
  });

  test('the result has no field that could carry a selector', () => {
    assert.deepEqual(Object.keys(parseVolumeAttributes(KUBELET_KEYS)).sort(), [
      'bundleFile',
      'certFile',
      'combinedBundleFile',
      'credentialBundleFile',
      'federatedBundles',
      'fsGroup',
      'hint',
      'keyFile',
      'layout',
      'pkcs12File',
      'pkcs12Password',
      'spiffeId',
    ]);
  });
});

describe('file names', () => {
  for (const key of ['cert-file', 'key-file', 'bundle-file', 'credential-bundle-file', 'pkcs12-file']) {
    test(`${key}: "/" and traversal are rejected`, () => {
      for (const name of ['a/b', '/etc/passwd', '../x', 'x/../../y', 'dir/']) {
        rejected(attr(key, name), new RegExp(`volume attribute "csi\\.spire\\.io/${key}"`), /contains "\/"/);
      }
    });

    test(`${key}: "..", "." and a leading "." are rejected`, () => {
      rejected(attr(key, '..'), /is not a file name/);
      rejected(attr(key, '.'), /is not a file name/);
      rejected(attr(key, '.hidden'), /starts with "\."/);
      rejected(attr(key, '..data'), /starts with "\."/);
    });

    test(`${key}: empty is rejected`, () => {
      rejected(attr(key, ''), new RegExp(`"csi\\.spire\\.io/${key}"=""`), /empty/);
    });

    test(`${key}: 255 bytes is accepted, 300 bytes is rejected`, () => {
      const long255 = 'a'.repeat(255);
      const parsed = parseVolumeAttributes(attr(key, long255));
      assert.ok([parsed.certFile, parsed.keyFile, parsed.bundleFile, parsed.credentialBundleFile, parsed.pkcs12File].includes(long255));
      rejected(attr(key, 'a'.repeat(300)), /300 bytes/, /at most 255 bytes/);
      rejected(attr(key, 'a'.repeat(256)), /256 bytes/);
    });
  }

  test('the problem message names the attribute and its value', () => {
    rejected(attr('key-file', '../../etc/shadow'), /volume attribute "csi\.spire\.io\/key-file"="\.\.\/\.\.\/etc\/shadow"/);
  });

  test('two equal names are rejected', () => {
    rejected(
      { 'csi.spire.io/cert-file': 'same.pem', 'csi.spire.io/key-file': 'same.pem' },
      /every file of a volume needs its own name: csi\.spire\.io\/cert-file and csi\.spire\.io\/key-file are both "same\.pem"; set one of them to another name/,
    );
    rejected({ 'csi.spire.io/bundle-file': 'x', 'csi.spire.io/key-file': 'x' }, /key-file and csi\.spire\.io\/bundle-file are both "x"/);
    const message = rejected({ 'csi.spire.io/cert-file': 'x', 'csi.spire.io/key-file': 'x', 'csi.spire.io/bundle-file': 'x' }, /own name/);
    assert.match(
      message,
      /cert-file and csi\.spire\.io\/key-file are both "x"; csi\.spire\.io\/cert-file and csi\.spire\.io\/bundle-file are both "x"/,
    );
  });

  test('a custom name equal to another default is rejected', () => {
    // The key would otherwise be written over the 0644 certificate, or the other way round.
    rejected(
      { 'csi.spire.io/cert-file': 'svid_key.pem' },
      /csi\.spire\.io\/cert-file and csi\.spire\.io\/key-file \(layout spiffe-helper's default\) are both "svid_key\.pem"/,
    );
    rejected({ 'csi.spire.io/key-file': 'svid.pem' }, /cert-file \(layout spiffe-helper's default\) and csi\.spire\.io\/key-file are both/);
    rejected({ 'csi.spire.io/bundle-file': 'svid_key.pem' }, /own name/);
  });

  test('swapping two default names is fine', () => {
    const parsed = parseVolumeAttributes({ 'csi.spire.io/cert-file': 'svid_key.pem', 'csi.spire.io/key-file': 'svid.pem' });
    assert.equal(parsed.certFile, 'svid_key.pem');
    assert.equal(parsed.keyFile, 'svid.pem');
  });
});

describe('layout', () => {
  test('spiffe-helper is the default and gives the default names', () => {
    assert.deepEqual(parseVolumeAttributes(attr('layout', 'spiffe-helper')), DEFAULTS);
    assert.equal(DEFAULT_LAYOUT, 'spiffe-helper');
    assert.deepEqual(LAYOUTS['spiffe-helper'], DEFAULT_FILE_NAMES);
  });

  test('cert-manager gives tls.crt, tls.key and ca.crt', () => {
    assert.deepEqual(parseVolumeAttributes(attr('layout', 'cert-manager')), {
      ...DEFAULTS,
      layout: 'cert-manager',
      certFile: 'tls.crt',
      keyFile: 'tls.key',
      bundleFile: 'ca.crt',
    });
  });

  test('a name attribute overrides just that name of the layout', () => {
    const parsed = parseVolumeAttributes({ 'csi.spire.io/layout': 'cert-manager', 'csi.spire.io/bundle-file': 'trust.pem' });
    assert.deepEqual([parsed.layout, parsed.certFile, parsed.keyFile, parsed.bundleFile], ['cert-manager', 'tls.crt', 'tls.key', 'trust.pem']);
  });

  test('an unknown layout is rejected and the known ones are named', () => {
    for (const value of ['', 'spiffe', 'Cert-Manager', 'cert-manager ', 'spiffe-filesystem', 'istio']) {
      rejected(
        attr('layout', value),
        new RegExp(`volume attribute "csi\\.spire\\.io/layout"=${JSON.stringify(value).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`),
        /must be one of spiffe-helper, cert-manager/,
      );
    }
  });

  test("a name equal to another of the layout's names is rejected, saying where it came from", () => {
    rejected(
      { 'csi.spire.io/layout': 'cert-manager', 'csi.spire.io/key-file': 'tls.crt' },
      /csi\.spire\.io\/cert-file \(layout cert-manager's default\) and csi\.spire\.io\/key-file are both "tls\.crt"/,
    );
  });

  test('the layout chooses names only: it never reaches selectors or the SVID choice', () => {
    const parsed = parseVolumeAttributes({ ...KUBELET_KEYS, 'csi.spire.io/layout': 'cert-manager' });
    assert.equal(parsed.spiffeId, undefined);
    assert.equal(parsed.hint, undefined);
  });
});

describe('credential-bundle-file', () => {
  test('absent: no credential bundle', () => {
    assert.equal(parseVolumeAttributes({}).credentialBundleFile, undefined);
  });

  test('a name is taken as given, with either layout', () => {
    assert.equal(parseVolumeAttributes(attr('credential-bundle-file', 'credential-bundle.pem')).credentialBundleFile, 'credential-bundle.pem');
    const parsed = parseVolumeAttributes({ 'csi.spire.io/layout': 'cert-manager', 'csi.spire.io/credential-bundle-file': 'tls.pem' });
    assert.deepEqual([parsed.certFile, parsed.credentialBundleFile], ['tls.crt', 'tls.pem']);
  });

  test('it must differ from every other name, the layout defaults included', () => {
    rejected(
      attr('credential-bundle-file', 'svid_key.pem'),
      /key-file \(layout spiffe-helper's default\) and csi\.spire\.io\/credential-bundle-file are both "svid_key\.pem"/,
    );
    rejected(
      { 'csi.spire.io/layout': 'cert-manager', 'csi.spire.io/credential-bundle-file': 'ca.crt' },
      /bundle-file \(layout cert-manager's default\) and csi\.spire\.io\/credential-bundle-file/,
    );
    rejected(
      { 'csi.spire.io/cert-file': 'both.pem', 'csi.spire.io/credential-bundle-file': 'both.pem' },
      /cert-file and csi\.spire\.io\/credential-bundle-file are both "both\.pem"/,
    );
  });
});

describe('pkcs12-file and pkcs12-password', () => {
  test('absent: no keystore and no password', () => {
    const parsed = parseVolumeAttributes({});
    assert.equal(parsed.pkcs12File, undefined);
    assert.equal(parsed.pkcs12Password, undefined);
  });

  test('a file without a password gets the documented default, changeit', () => {
    assert.equal(DEFAULT_PKCS12_PASSWORD, 'changeit');
    const parsed = parseVolumeAttributes(attr('pkcs12-file', 'keystore.p12'));
    assert.deepEqual([parsed.pkcs12File, parsed.pkcs12Password], ['keystore.p12', 'changeit']);
  });

  test('a password is taken as given: printable ASCII, spaces included, up to 128 characters', () => {
    for (const password of ['s3cret', 'a', 'with space & $ymbols!~', 'p'.repeat(128)]) {
      assert.equal(
        parseVolumeAttributes({ 'csi.spire.io/pkcs12-file': 'ks.p12', 'csi.spire.io/pkcs12-password': password }).pkcs12Password,
        password,
      );
    }
  });

  test('an empty, over-long or non-ASCII password is rejected without echoing it', () => {
    const cases: [string, RegExp][] = [
      ['', /must not be empty \(leave the attribute out for the default "changeit"\)/],
      ['p'.repeat(129), /at most 128 characters/],
      ['pässwort-geheim', /printable ASCII/],
      ['tab\there-geheim', /printable ASCII/],
    ];
    for (const [password, pattern] of cases) {
      const message = rejected(
        { 'csi.spire.io/pkcs12-file': 'ks.p12', 'csi.spire.io/pkcs12-password': password },
        /"csi\.spire\.io\/pkcs12-password"/,
        pattern,
      );
      if (password.length > 0) assert.ok(!message.includes(password.slice(0, 8)), message);
    }
  });

  test('a password without a file is rejected, saying to set the file', () => {
    rejected(attr('pkcs12-password', 'changeme'), /pkcs12-password is set but csi\.spire\.io\/pkcs12-file is not: set csi\.spire\.io\/pkcs12-file/);
  });

  test('the keystore needs its own name too', () => {
    rejected(
      { 'csi.spire.io/layout': 'cert-manager', 'csi.spire.io/pkcs12-file': 'tls.key' },
      /key-file \(layout cert-manager's default\) and csi\.spire\.io\/pkcs12-file are both "tls\.key"/,
    );
    rejected(
      { 'csi.spire.io/credential-bundle-file': 'creds', 'csi.spire.io/pkcs12-file': 'creds' },
      /credential-bundle-file and csi\.spire\.io\/pkcs12-file are both "creds"/,
    );
  });
});

describe('federated-bundles and combined-bundle-file', () => {
  test('absent: one file per federated trust domain, no combined file', () => {
    const parsed = parseVolumeAttributes({});
    assert.equal(parsed.federatedBundles, 'separate');
    assert.equal(parsed.combinedBundleFile, undefined);
  });

  test('combined gets the documented default name, or the one asked for', () => {
    assert.equal(parseVolumeAttributes(attr('federated-bundles', 'combined')).combinedBundleFile, 'combined_bundle.pem');
    const custom = parseVolumeAttributes({ 'csi.spire.io/federated-bundles': 'combined', 'csi.spire.io/combined-bundle-file': 'all-cas.pem' });
    assert.equal(custom.federatedBundles, 'combined');
    assert.equal(custom.combinedBundleFile, 'all-cas.pem');
  });

  test('none is accepted and writes no combined file', () => {
    const parsed = parseVolumeAttributes(attr('federated-bundles', 'none'));
    assert.equal(parsed.federatedBundles, 'none');
    assert.equal(parsed.combinedBundleFile, undefined);
  });

  test('an unknown mode is rejected and the known ones are named', () => {
    for (const value of ['', 'Combined', 'merged', 'true']) {
      rejected(attr('federated-bundles', value), /"csi\.spire\.io\/federated-bundles"/, /must be one of separate, combined, none/);
    }
  });

  test('a combined file name without combined is rejected, saying what to set', () => {
    rejected(
      attr('combined-bundle-file', 'all.pem'),
      /combined-bundle-file is set but csi\.spire\.io\/federated-bundles is separate: set csi\.spire\.io\/federated-bundles to combined/,
    );
    rejected({ 'csi.spire.io/federated-bundles': 'none', 'csi.spire.io/combined-bundle-file': 'all.pem' }, /federated-bundles is none/);
  });

  test('the combined file name follows the file-name rules and must differ from the others', () => {
    rejected(
      { 'csi.spire.io/federated-bundles': 'combined', 'csi.spire.io/combined-bundle-file': '../x' },
      /"csi\.spire\.io\/combined-bundle-file"/,
      /contains "\/"/,
    );
    rejected(
      { 'csi.spire.io/federated-bundles': 'combined', 'csi.spire.io/combined-bundle-file': 'svid_bundle.pem' },
      /bundle-file \(layout spiffe-helper's default\) and csi\.spire\.io\/combined-bundle-file are both "svid_bundle\.pem"/,
    );
  });

  test('names ending in .federated-bundle.pem are reserved while federated files are written', () => {
    rejected(
      attr('cert-file', 'example.org.federated-bundle.pem'),
      /cert-file="example\.org\.federated-bundle\.pem"/,
      /reserved for the federated trust bundles/,
    );
    rejected(
      { 'csi.spire.io/federated-bundles': 'combined', 'csi.spire.io/combined-bundle-file': 'all.federated-bundle.pem' },
      /combined-bundle-file="all\.federated-bundle\.pem"/,
      /set csi\.spire\.io\/federated-bundles to none/,
    );
    assert.equal(
      parseVolumeAttributes({ 'csi.spire.io/federated-bundles': 'none', 'csi.spire.io/cert-file': 'x.federated-bundle.pem' }).certFile,
      'x.federated-bundle.pem',
    );
  });
});

describe('fs-group', () => {
  test('0, 1 and 4294967294 are accepted', () => {
    assert.equal(parseVolumeAttributes(attr('fs-group', '0')).fsGroup, 0);
    assert.equal(parseVolumeAttributes(attr('fs-group', '1')).fsGroup, 1);
    assert.equal(parseVolumeAttributes(attr('fs-group', '4294967294')).fsGroup, 4294967294);
    assert.equal(parseVolumeAttributes(attr('fs-group', '2000')).fsGroup, 2000);
  });

  test('0 (root) and 4294967295 ((gid_t)-1) are rejected', () => {
    rejected(attr('fs-group', '4294967295'), /"csi\.spire\.io\/fs-group"="4294967295"/, /between 0 and 4294967294/);
    rejected(attr('fs-group', '9999999999'), /between 0 and 4294967294/);
  });

  test('anything that is not plain decimal digits is rejected', () => {
    for (const value of ['-1', '12a', ' 5', '5 ', '+5', '0x10', '1e3', '1.0', '', '12345678901']) {
      rejected(attr('fs-group', value), /"csi\.spire\.io\/fs-group"/, /must be a decimal group id/);
    }
  });
});

describe('spiffe-id', () => {
  test('a SPIFFE ID is accepted', () => {
    for (const id of ['spiffe://example.org/ns/default/sa/app', 'spiffe://example.org', 'spiffe://td-1.example_x/a.b/C-d_e']) {
      assert.equal(parseVolumeAttributes(attr('spiffe-id', id)).spiffeId, id);
    }
  });

  test('anything else is rejected', () => {
    for (const id of [
      '',
      'example.org/ns/default',
      'https://example.org/ns/default',
      'SPIFFE://example.org/x',
      'spiffe://Example.org/x',
      'spiffe://example.org/',
      'spiffe://example.org//x',
      'spiffe://example.org/a b',
      'spiffe://example.org/a?b',
      'spiffe://example.org/a#b',
      'spiffe://example.org:443/a',
      'spiffe://user@example.org/a',
      'spiffe:///a',
    ]) {
      rejected(attr('spiffe-id', id), /"csi\.spire\.io\/spiffe-id"/, /must be a SPIFFE ID/);
    }
  });

  test('more than 2048 characters is rejected', () => {
    rejected(attr('spiffe-id', `spiffe://example.org/${'a'.repeat(2048)}`), /"csi\.spire\.io\/spiffe-id"/);
  });

  // SPIFFE ID spec §2.2: https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md#22-path
  test('path segments "." and ".." are rejected (SPIFFE ID spec §2.2)', () => {
    rejected(attr('spiffe-id', 'spiffe://example.org/a/../b'), /must be a SPIFFE ID/);
    rejected(attr('spiffe-id', 'spiffe://example.org/./b'), /must be a SPIFFE ID/);
  });
});

describe('hint', () => {
  test('a hint is accepted as is', () => {
    assert.equal(parseVolumeAttributes(attr('hint', 'external')).hint, 'external');
    assert.equal(parseVolumeAttributes(attr('hint', 'with spaces, commas')).hint, 'with spaces, commas');
    assert.equal(parseVolumeAttributes(attr('hint', 'h'.repeat(1024))).hint, 'h'.repeat(1024));
  });

  test('an empty or over-long hint is rejected', () => {
    rejected(attr('hint', ''), /"csi\.spire\.io\/hint"=""/, /must not be empty/);
    rejected(attr('hint', 'h'.repeat(1025)), /"csi\.spire\.io\/hint"/);
  });
});

describe('several problems', () => {
  test('every bad attribute is reported in one message', () => {
    rejected({ 'csi.spire.io/fs-group': 'x', 'csi.spire.io/cert-file': '../x' }, /"csi\.spire\.io\/fs-group"/, /"csi\.spire\.io\/cert-file"/);
  });
});
