import assert from 'node:assert/strict';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { before, describe, test } from 'node:test';
import { bundleToPem, certificatesToPem, derToPem, splitConcatenatedDer } from '../../src/x509/pem.js';
import { parseSubjectAltName } from '../../src/x509/subject-alt-name.js';
import { checkSvid, digestOfLeafMaterial, trustDomainIdOf, type LeafCheckMemo, type SvidMaterial } from '../../src/x509/svid-check.js';
import { exportPkcs8, mintCa, mintEcSec1KeyDer, mintRsaPkcs1KeyDer, mintSvid, type MintedCa, type MintedSvid } from '../support/certs.js';

const TD = 'example.org';
const SPIFFE_ID = 'spiffe://example.org/ns/default/sa/app';

let ca: MintedCa;
let intermediate: MintedCa;
let svid: MintedSvid;
let other: MintedSvid;

before(async () => {
  ca = await mintCa({ trustDomain: TD });
  intermediate = await mintCa({ trustDomain: TD, parent: ca });
  svid = await mintSvid({ ca, spiffeId: SPIFFE_ID });
  other = await mintSvid({ ca, spiffeId: 'spiffe://example.org/other' });
});

/** A DER SEQUENCE whose content is `length` filler bytes, with a minimal length encoding. */
function sequence(length: number, fill = 0x05): Buffer {
  let header: number[];
  if (length < 0x80) header = [0x30, length];
  else if (length < 0x100) header = [0x30, 0x81, length];
  else if (length < 0x10000) header = [0x30, 0x82, length >> 8, length & 0xff];
  else header = [0x30, 0x83, length >> 16, (length >> 8) & 0xff, length & 0xff];
  return Buffer.concat([Buffer.from(header), Buffer.alloc(length, fill)]);
}

function material(overrides: Partial<SvidMaterial> = {}): SvidMaterial {
  return { spiffeId: SPIFFE_ID, certChain: svid.certChain, keyDer: svid.keyPkcs8Der, bundle: [ca.certDer], ...overrides };
}

function failure(result: ReturnType<typeof checkSvid>): string {
  assert.equal(result.ok, false, 'expected the SVID to be refused');
  if (result.ok) throw new Error('unreachable');
  return result.reason;
}

describe('derToPem', () => {
  test('64-character base64 lines between the header and the footer', () => {
    const pem = derToPem(ca.certDer, 'CERTIFICATE');
    const lines = pem.split('\n');
    assert.equal(lines[0], '-----BEGIN CERTIFICATE-----');
    assert.equal(lines.at(-2), '-----END CERTIFICATE-----');
    assert.equal(lines.at(-1), '', 'the PEM ends with a newline');
    const body = lines.slice(1, -2);
    assert.ok(body.length > 1);
    for (const line of body.slice(0, -1)) assert.equal(line.length, 64);
    const last = body.at(-1) ?? '';
    assert.ok(last.length >= 1 && last.length <= 64);
    assert.equal(Buffer.from(body.join(''), 'base64').toString('hex'), ca.certDer.toString('hex'));
  });

  test("round trip through Node's X509Certificate", () => {
    for (const der of [ca.certDer, intermediate.certDer, svid.certDer]) {
      const cert = new X509Certificate(derToPem(der, 'CERTIFICATE'));
      assert.ok(cert.raw.equals(der));
    }
  });

  test('a length that is an exact multiple of 48 bytes has no empty line', () => {
    const pem = derToPem(Buffer.alloc(96, 1), 'CERTIFICATE');
    assert.equal(pem.split('\n').length, 5);
    assert.doesNotMatch(pem, /\n\n/);
  });

  test('a PKCS#8 key round trips through createPrivateKey', () => {
    const pem = derToPem(svid.keyPkcs8Der, 'PRIVATE KEY');
    assert.match(pem, /^-----BEGIN PRIVATE KEY-----\n/);
    assert.match(pem, /\n-----END PRIVATE KEY-----\n$/);
    const key = createPrivateKey(pem);
    assert.ok(key.export({ type: 'pkcs8', format: 'der' }).equals(svid.keyPkcs8Der));
    assert.ok(new X509Certificate(svid.certDer).checkPrivateKey(key));
  });

  test('certificatesToPem concatenates in order', () => {
    const pem = certificatesToPem([svid.certDer, intermediate.certDer, ca.certDer]);
    const blocks = pem.match(/-----BEGIN CERTIFICATE-----\n[\s\S]*?-----END CERTIFICATE-----\n/g) ?? [];
    assert.equal(blocks.length, 3);
    assert.equal(blocks.join(''), pem);
    assert.ok(new X509Certificate(blocks[0] ?? '').raw.equals(svid.certDer));
    assert.ok(new X509Certificate(blocks[1] ?? '').raw.equals(intermediate.certDer));
    assert.ok(new X509Certificate(blocks[2] ?? '').raw.equals(ca.certDer));
    assert.equal(certificatesToPem([]), '');
  });

  test('bundleToPem: certificatesToPem bytes, made once per list', () => {
    const bundle = [intermediate.certDer, ca.certDer];
    const pem = bundleToPem(bundle);
    assert.equal(pem.toString(), certificatesToPem(bundle));
    assert.equal(bundleToPem(bundle), pem, 'the same list: the same bytes, not made again');
    const other = [ca.certDer];
    assert.equal(bundleToPem(other).toString(), certificatesToPem(other), 'another list (a new bundle) gets its own');
  });
});

describe('splitConcatenatedDer', () => {
  test('one certificate', () => {
    const parts = splitConcatenatedDer(ca.certDer);
    assert.equal(parts.length, 1);
    assert.ok(parts[0]?.equals(ca.certDer));
  });

  test('two and three real certificates (long-form lengths above 255 bytes)', () => {
    assert.ok(ca.certDer.length > 255 && ca.certDer[1] === 0x82);
    const two = splitConcatenatedDer(Buffer.concat([ca.certDer, intermediate.certDer]));
    assert.deepEqual(
      two.map((b) => b.toString('hex')),
      [ca.certDer, intermediate.certDer].map((b) => b.toString('hex')),
    );
    const three = [svid.certDer, intermediate.certDer, ca.certDer];
    const split = splitConcatenatedDer(Buffer.concat(three));
    assert.equal(split.length, 3);
    split.forEach((part, i) => {
      assert.ok(part.equals(three[i] as Buffer));
      assert.ok(new X509Certificate(part).raw.equals(three[i] as Buffer));
    });
  });

  test('short form, 0x81 (128-255 bytes), 0x82 and 0x83 lengths together', () => {
    const short = sequence(5);
    const oneByte = sequence(200, 0x06);
    const edge = sequence(128, 0x07);
    const large = sequence(70_000, 0x08);
    assert.equal(oneByte[1], 0x81);
    assert.equal(edge[1], 0x81);
    assert.equal(large[1], 0x83);
    const parts = [short, oneByte, ca.certDer, edge, large, sequence(127), sequence(0)];
    const split = splitConcatenatedDer(Buffer.concat(parts));
    assert.equal(split.length, parts.length);
    split.forEach((part, i) => assert.ok(part.equals(parts[i] as Buffer), `part ${i}`));
  });

  test('empty input gives no certificates', () => {
    assert.deepEqual(splitConcatenatedDer(Buffer.alloc(0)), []);
  });

  test('a truncated certificate is refused, never returned half', () => {
    assert.throws(
      () => splitConcatenatedDer(ca.certDer.subarray(0, ca.certDer.length - 1)),
      /bundle is truncated: the structure at byte 0 runs past the end/,
    );
    const two = Buffer.concat([ca.certDer, intermediate.certDer]);
    assert.throws(() => splitConcatenatedDer(two.subarray(0, two.length - 10)), new RegExp(`truncated: the structure at byte ${ca.certDer.length}`));
  });

  test('a truncated header is refused', () => {
    assert.throws(() => splitConcatenatedDer(Buffer.from([0x30])), /bundle is truncated at byte 0/);
    assert.throws(() => splitConcatenatedDer(Buffer.from([0x30, 0x82, 0x01])), /bundle is truncated at byte 0/);
    assert.throws(
      () => splitConcatenatedDer(Buffer.concat([ca.certDer, Buffer.from([0x30, 0x84, 0, 0])])),
      new RegExp(`truncated at byte ${ca.certDer.length}`),
    );
    assert.throws(() => splitConcatenatedDer(Buffer.from([0x30, 0x84, 0xff, 0xff, 0xff, 0xff])), /truncated/);
  });

  test('garbage is refused with the byte offset', () => {
    assert.throws(() => splitConcatenatedDer(Buffer.from('not a certificate')), /expected a SEQUENCE tag at byte 0/);
    assert.throws(() => splitConcatenatedDer(Buffer.from(derToPem(ca.certDer, 'CERTIFICATE'))), /expected a SEQUENCE tag at byte 0/);
    assert.throws(
      () => splitConcatenatedDer(Buffer.concat([ca.certDer, Buffer.from([0x00])])),
      new RegExp(`expected a SEQUENCE tag at byte ${ca.certDer.length}`),
    );
    assert.throws(() => splitConcatenatedDer(Buffer.from([0x31, 0x00])), /expected a SEQUENCE tag/);
  });

  test('the indefinite length (BER, not DER) is refused', () => {
    assert.throws(() => splitConcatenatedDer(Buffer.from([0x30, 0x80, 0x02, 0x01, 0x05, 0x00, 0x00])), /unsupported DER length encoding at byte 0/);
  });

  test('more than four length bytes is refused', () => {
    assert.throws(() => splitConcatenatedDer(Buffer.from([0x30, 0x85, 0, 0, 0, 0, 1, 0x05])), /unsupported DER length encoding/);
    assert.throws(() => splitConcatenatedDer(Buffer.from([0x30, 0xff])), /unsupported DER length encoding/);
  });
});

describe('parseSubjectAltName', () => {
  test('nothing', () => {
    assert.deepEqual(parseSubjectAltName(undefined), []);
    assert.deepEqual(parseSubjectAltName(''), []);
  });

  test('one plain entry', () => {
    assert.deepEqual(parseSubjectAltName('URI:spiffe://example.org/a/b'), [{ type: 'URI', value: 'spiffe://example.org/a/b' }]);
  });

  test('several entries', () => {
    assert.deepEqual(parseSubjectAltName('URI:spiffe://example.org/a, DNS:app.example.org, IP Address:10.0.0.1, email:a@b'), [
      { type: 'URI', value: 'spiffe://example.org/a' },
      { type: 'DNS', value: 'app.example.org' },
      { type: 'IP Address', value: '10.0.0.1' },
      { type: 'email', value: 'a@b' },
    ]);
  });

  test('a JSON-quoted value with a comma is one entry, not two', () => {
    assert.deepEqual(parseSubjectAltName('URI:"spiffe://example.org/x\\u002c URI:spiffe://example.org/y", DNS:d'), [
      { type: 'URI', value: 'spiffe://example.org/x, URI:spiffe://example.org/y' },
      { type: 'DNS', value: 'd' },
    ]);
    assert.deepEqual(parseSubjectAltName('URI:"spiffe://example.org/a,b"'), [{ type: 'URI', value: 'spiffe://example.org/a,b' }]);
  });

  test('a JSON-quoted value with quotes and backslashes', () => {
    assert.deepEqual(parseSubjectAltName('URI:"spiffe://example.org/q\\"uote\\\\", URI:spiffe://example.org/z'), [
      { type: 'URI', value: 'spiffe://example.org/q"uote\\' },
      { type: 'URI', value: 'spiffe://example.org/z' },
    ]);
  });

  test("Node's own output for SANs that need quoting", async () => {
    const tricky = await mintSvid({
      ca,
      spiffeId: 'unused',
      uriSans: ['spiffe://example.org/x, URI:spiffe://example.org/y', 'spiffe://example.org/q"uote'],
      dnsNames: ['d.example'],
    });
    const text = new X509Certificate(tricky.certDer).subjectAltName;
    assert.deepEqual(parseSubjectAltName(text), [
      { type: 'URI', value: 'spiffe://example.org/x, URI:spiffe://example.org/y' },
      { type: 'URI', value: 'spiffe://example.org/q"uote' },
      { type: 'DNS', value: 'd.example' },
    ]);
  });

  test('text that is not a SAN list throws', () => {
    assert.throws(() => parseSubjectAltName('no colon here'), /unparseable subjectAltName/);
    assert.throws(() => parseSubjectAltName('URI:"a"junk'), /unparseable subjectAltName near "junk"/);
    assert.throws(() => parseSubjectAltName('URI:"unterminated'));
  });
});

describe('checkSvid accepts a valid SVID', () => {
  test('an SVID from a root CA', () => {
    const result = checkSvid(material());
    assert.equal(result.ok, true);
    if (!result.ok) return;
    assert.equal(result.svid.spiffeId, SPIFFE_ID);
    assert.equal(result.svid.serialNumber.toLowerCase(), svid.serialHex);
    assert.equal(result.svid.notAfter.getTime(), svid.notAfter.getTime());
  });

  test('an SVID from an intermediate, with the chain', async () => {
    const leaf = await mintSvid({ ca: intermediate, spiffeId: SPIFFE_ID });
    assert.equal(leaf.certChain.length, 2);
    assert.equal(checkSvid(material({ certChain: leaf.certChain, keyDer: leaf.keyPkcs8Der })).ok, true);
  });

  test('a valid SVID with an RSA key', async () => {
    const rsa = await mintSvid({ ca, spiffeId: SPIFFE_ID, keyAlgorithm: 'rsa-2048' });
    assert.equal(checkSvid(material({ certChain: rsa.certChain, keyDer: rsa.keyPkcs8Der })).ok, true);
  });

  test('one second before notAfter is still valid', () => {
    assert.equal(checkSvid(material(), new Date(svid.notAfter.getTime() - 1000)).ok, true);
  });
});

describe('checkSvid with a memo: an SVID whose checks passed is checked against each new bundle without re-parsing its own bytes', () => {
  test('the same SVID against a new bundle: validity always, the chain again once its CA is gone', async () => {
    const memo: LeafCheckMemo = {};
    assert.equal(checkSvid(material(), undefined, memo).ok, true);
    assert.equal(memo.passed?.digest, digestOfLeafMaterial(material()), 'the SVID is remembered');
    assert.deepEqual(memo.passed?.authority, ca.certDer, 'with the bundle CA that signed it');
    // A bundle change: the same SVID against a bundle that still holds its CA, then one that does not.
    const otherCa = await mintCa({ trustDomain: TD });
    assert.equal(checkSvid(material({ bundle: [otherCa.certDer, ca.certDer] }), undefined, memo).ok, true);
    assert.match(failure(checkSvid(material({ bundle: [otherCa.certDer] }), undefined, memo)), /does not lead to a CA of the trust bundle/);
    assert.match(failure(checkSvid(material(), new Date(svid.notAfter.getTime() + 1000), memo)), /expired/, 'validity is always checked');
  });

  test('what the memo skips: the checks of the remembered bytes alone (shown with a memo forged for a mismatched key)', async () => {
    const mismatched = material({ keyDer: other.keyPkcs8Der });
    assert.match(failure(checkSvid(mismatched)), /does not match the leaf/);
    const remembered = { spiffeId: SPIFFE_ID, serialNumber: '01', notBefore: svid.notBefore, notAfter: svid.notAfter };
    const forged = (authority: Buffer): LeafCheckMemo => ({ passed: { digest: digestOfLeafMaterial(mismatched), svid: remembered, authority } });
    assert.equal(checkSvid(mismatched, undefined, forged(ca.certDer)).ok, true);
    // ...and the chain's signatures while the bundle holds the remembered CA byte for byte: a
    // bundle of a CA that did not sign the chain passes with a memo naming that CA...
    const otherCa = await mintCa({ trustDomain: TD });
    assert.equal(checkSvid(material({ keyDer: other.keyPkcs8Der, bundle: [otherCa.certDer] }), undefined, forged(otherCa.certDer)).ok, true);
    // ...and fails in full once the remembered CA is not in the bundle.
    assert.match(
      failure(checkSvid(material({ keyDer: other.keyPkcs8Der, bundle: [otherCa.certDer] }), undefined, forged(ca.certDer))),
      /does not lead to a CA of the trust bundle/,
    );
    // The remembered validity is still checked against the clock.
    assert.match(failure(checkSvid(mismatched, new Date(svid.notAfter.getTime() + 1000), forged(ca.certDer))), /expired/);
  });

  test('other bytes, or the same bytes for another SPIFFE ID, are checked in full', () => {
    const memo: LeafCheckMemo = {};
    assert.equal(checkSvid(material(), undefined, memo).ok, true);
    assert.match(failure(checkSvid(material({ keyDer: other.keyPkcs8Der }), undefined, memo)), /does not match the leaf/);
    assert.match(
      failure(checkSvid(material({ spiffeId: 'spiffe://example.org/else' }), undefined, memo)),
      /exactly one URI SAN equal to spiffe:\/\/example.org\/else/,
    );
    assert.equal(checkSvid(material(), undefined, memo).ok, true);
  });

  test('a failed check is not remembered', () => {
    const memo: LeafCheckMemo = {};
    assert.equal(checkSvid(material({ keyDer: other.keyPkcs8Der }), undefined, memo).ok, false);
    assert.equal(memo.passed, undefined);
  });
});

describe('checkSvid refuses anything invalid (invariant 5)', () => {
  test('an empty chain', () => {
    assert.match(failure(checkSvid(material({ certChain: [] }))), /the certificate chain is empty/);
  });

  test('an unparsable certificate in the chain', () => {
    assert.match(failure(checkSvid(material({ certChain: [Buffer.from('garbage')] }))), /a certificate in the chain does not parse/);
    assert.match(failure(checkSvid(material({ certChain: [svid.certDer, Buffer.from([0x30, 0x00])] }))), /a certificate in the chain does not parse/);
  });

  test('an RSA PKCS#1 key', () => {
    assert.match(failure(checkSvid(material({ keyDer: mintRsaPkcs1KeyDer() }))), /the private key is not a PKCS#8 DER key/);
  });

  test('an EC SEC1 key', () => {
    assert.match(failure(checkSvid(material({ keyDer: mintEcSec1KeyDer() }))), /the private key is not a PKCS#8 DER key/);
  });

  test('a key that is not a key at all', () => {
    assert.match(failure(checkSvid(material({ keyDer: Buffer.alloc(0) }))), /not a PKCS#8 DER key/);
    assert.match(failure(checkSvid(material({ keyDer: Buffer.from(derToPem(svid.keyPkcs8Der, 'PRIVATE KEY')) }))), /not a PKCS#8 DER key/);
  });

  test('the key of another certificate', () => {
    const reason = failure(checkSvid(material({ keyDer: other.keyPkcs8Der })));
    assert.match(reason, /the private key does not match the leaf certificate/);
  });

  test('the right key with its private value damaged: the point it carries still matches the leaf, the value does not', () => {
    const damaged = Buffer.from(svid.keyPkcs8Der);
    // In the shape SPIRE writes, the 32-byte private value starts at byte 36 (after the OCTET STRING header 04 20).
    assert.deepEqual([...damaged.subarray(34, 36)], [0x04, 0x20]);
    damaged[40] = (damaged[40] as number) ^ 0x01;
    assert.match(failure(checkSvid(material({ keyDer: damaged }))), /the private key is inconsistent/);
  });

  test("the CA's key with the leaf", async () => {
    assert.match(failure(checkSvid(material({ keyDer: await exportPkcs8(ca.keys) }))), /does not match the leaf/);
  });

  test('the right key with the certificates in the wrong order', async () => {
    const leaf = await mintSvid({ ca: intermediate, spiffeId: SPIFFE_ID });
    const reversed = [...leaf.certChain].reverse();
    assert.match(failure(checkSvid(material({ certChain: reversed, keyDer: leaf.keyPkcs8Der }))), /does not match the leaf/);
  });

  test('two URI SANs', async () => {
    const two = await mintSvid({ ca, spiffeId: SPIFFE_ID, extraUriSans: ['spiffe://example.org/admin'] });
    const reason = failure(checkSvid(material({ certChain: two.certChain, keyDer: two.keyPkcs8Der })));
    assert.match(reason, /exactly one URI SAN equal to spiffe:\/\/example\.org\/ns\/default\/sa\/app/);
    assert.match(reason, /found \[spiffe:\/\/example\.org\/ns\/default\/sa\/app, spiffe:\/\/example\.org\/admin\]/);
  });

  test('a URI SAN other than the SPIFFE ID the agent names', () => {
    const reason = failure(checkSvid(material({ spiffeId: 'spiffe://example.org/ns/kube-system/sa/admin' })));
    assert.match(reason, /exactly one URI SAN equal to spiffe:\/\/example\.org\/ns\/kube-system\/sa\/admin/);
    assert.match(reason, /found \[spiffe:\/\/example\.org\/ns\/default\/sa\/app\]/);
  });

  test('a URI SAN with an embedded ", URI:" is one SAN, not a match', async () => {
    const sneaky = await mintSvid({ ca, spiffeId: 'unused', uriSans: [`${SPIFFE_ID}, URI:spiffe://example.org/other`] });
    const reason = failure(checkSvid(material({ certChain: sneaky.certChain, keyDer: sneaky.keyPkcs8Der })));
    assert.match(reason, /exactly one URI SAN/);
  });

  test('no URI SAN, only a DNS name', async () => {
    const dnsOnly = await mintSvid({ ca, spiffeId: SPIFFE_ID, uriSans: [], dnsNames: ['app.example.org'] });
    const reason = failure(checkSvid(material({ certChain: dnsOnly.certChain, keyDer: dnsOnly.keyPkcs8Der })));
    assert.match(reason, /exactly one URI SAN equal to spiffe:\/\/example\.org\/ns\/default\/sa\/app, found \[\]/);
  });

  test('no SAN at all', async () => {
    const none = await mintSvid({ ca, spiffeId: SPIFFE_ID, uriSans: [] });
    assert.match(failure(checkSvid(material({ certChain: none.certChain, keyDer: none.keyPkcs8Der }))), /found \[\]/);
  });

  test('an expired leaf', async () => {
    const now = Date.now();
    const expired = await mintSvid({ ca, spiffeId: SPIFFE_ID, notBefore: new Date(now - 2 * 3600_000), notAfter: new Date(now - 3600_000) });
    const reason = failure(checkSvid(material({ certChain: expired.certChain, keyDer: expired.keyPkcs8Der })));
    assert.match(reason, /the leaf certificate expired at/);
    assert.ok(reason.includes(expired.notAfter.toISOString()));
  });

  test('expired at exactly notAfter and after it', () => {
    assert.match(failure(checkSvid(material(), svid.notAfter)), /expired at/);
    assert.match(failure(checkSvid(material(), new Date(svid.notAfter.getTime() + 1000))), /expired at/);
  });

  test('an empty bundle', () => {
    assert.match(failure(checkSvid(material({ bundle: [] }))), /the trust bundle for spiffe:\/\/example\.org is empty/);
  });

  test('an unparsable bundle certificate', () => {
    assert.match(failure(checkSvid(material({ bundle: [ca.certDer, Buffer.from('garbage')] }))), /a trust bundle certificate does not parse/);
    assert.match(failure(checkSvid(material({ bundle: [Buffer.from([0x30, 0x00])] }))), /a trust bundle certificate does not parse/);
  });

  test('a reason never contains key material', () => {
    const keyBase64 = svid.keyPkcs8Der.toString('base64');
    const keyHex = svid.keyPkcs8Der.toString('hex');
    for (const m of [material({ certChain: other.certChain }), material({ spiffeId: 'spiffe://x/y' }), material({ bundle: [] })]) {
      const reason = failure(checkSvid(m));
      assert.ok(!reason.includes(keyBase64.slice(0, 40)) && !reason.includes(keyHex.slice(0, 40)));
    }
  });
});

describe('trustDomainIdOf', () => {
  test('the trust domain part of a SPIFFE ID', () => {
    assert.equal(trustDomainIdOf('spiffe://example.org/ns/x'), 'spiffe://example.org');
    assert.equal(trustDomainIdOf('spiffe://example.org'), 'spiffe://example.org');
    assert.equal(trustDomainIdOf('spiffe://td.example/a/b/c'), 'spiffe://td.example');
  });

  test('anything else comes back unchanged', () => {
    assert.equal(trustDomainIdOf('not-a-spiffe-id'), 'not-a-spiffe-id');
    assert.equal(trustDomainIdOf('spiffe://'), 'spiffe://');
  });
});

describe('checkSvid refuses well-formed material that is not a valid SVID for the volume', () => {
  test('a certificate as PEM text, or with bytes after its DER', () => {
    const pem = Buffer.from(derToPem(svid.certDer, 'CERTIFICATE'));
    assert.match(failure(checkSvid(material({ certChain: [pem] }))), /certificate 0 of the chain is not DER/);
    const trailing = Buffer.concat([svid.certDer, Buffer.from([0, 1, 2, 3])]);
    assert.match(failure(checkSvid(material({ certChain: [trailing] }))), /certificate 0 of the chain has 4 bytes after its DER structure/);
  });

  test('a key with bytes after its DER', () => {
    const trailing = Buffer.concat([svid.keyPkcs8Der, Buffer.from([0])]);
    assert.match(failure(checkSvid(material({ keyDer: trailing }))), /not a PKCS#8 DER key: the private key has 1 bytes after its DER structure/);
  });

  test('a leaf that only becomes valid beyond the clock-skew tolerance; within it, accepted', async () => {
    const later = await mintSvid({ ca, spiffeId: SPIFFE_ID, notBefore: new Date(Date.now() + 3600_000), notAfter: new Date(Date.now() + 7200_000) });
    assert.match(failure(checkSvid(material({ certChain: later.certChain, keyDer: later.keyPkcs8Der }))), /not valid before .*clock/);
    const skewed = await mintSvid({ ca, spiffeId: SPIFFE_ID, notBefore: new Date(Date.now() + 60_000), notAfter: new Date(Date.now() + 7200_000) });
    assert.equal(checkSvid(material({ certChain: skewed.certChain, keyDer: skewed.keyPkcs8Der })).ok, true);
  });

  test('a leaf that is a CA', async () => {
    const caLeaf = await mintSvid({ ca, spiffeId: SPIFFE_ID, isCa: true });
    assert.match(failure(checkSvid(material({ certChain: caLeaf.certChain, keyDer: caLeaf.keyPkcs8Der }))), /leaf certificate is a CA/);
  });

  test('a leaf signed by a CA that is not in the bundle', async () => {
    const foreign = await mintSvid({ ca: await mintCa({ trustDomain: TD }), spiffeId: SPIFFE_ID });
    assert.match(
      failure(checkSvid(material({ certChain: foreign.certChain, keyDer: foreign.keyPkcs8Der }))),
      /does not lead to a CA of the trust bundle of spiffe:\/\/example\.org/,
    );
  });

  test('an intermediate chain whose root is missing from the bundle, and a chain with a link that does not sign the one before', async () => {
    const leaf = await mintSvid({ ca: intermediate, spiffeId: SPIFFE_ID });
    assert.match(
      failure(checkSvid(material({ certChain: leaf.certChain, keyDer: leaf.keyPkcs8Der, bundle: [other.certDer] }))),
      /does not lead to a CA/,
    );
    const copies = [svid.certDer, svid.certDer, svid.certDer];
    assert.match(failure(checkSvid(material({ certChain: copies }))), /certificate 0 of the chain is not signed by certificate 1/);
  });
});
