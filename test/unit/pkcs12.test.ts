/**
 * The PKCS#12 keystore (src/x509/pkcs12.ts) read back by real readers:
 * `openssl pkcs12` (OpenSSL 3, no legacy provider) and, where a JVM is
 * installed, Java's keytool. Both must find the key, the leaf first and the
 * intermediates, with the password, and refuse a wrong password.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { buildPkcs12, pkcs12Kdf, PKCS12_ALIAS } from '../../src/x509/pkcs12.js';
import { buildVolumeFiles, loadPkcs12Support, type PickedSvid } from '../../src/volumes/volume-files.js';
import { mintCa, mintSvid, type KeyAlgorithm, type MintedCa, type MintedSvid } from '../support/certs.js';
import { makeScratchDir, removeScratchDir } from '../support/scratch.js';

const execFileAsync = promisify(execFile);

function hasKeytool(): boolean {
  try {
    execFileSync('keytool', ['-help'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe('PKCS#12 keystore', () => {
  let dir: string;
  let root: MintedCa;
  let intermediate: MintedCa;
  const leaves = new Map<KeyAlgorithm, MintedSvid>();

  before(async () => {
    dir = await makeScratchDir('pkcs12');
    root = await mintCa({ trustDomain: 'example.org' });
    intermediate = await mintCa({ trustDomain: 'example.org', parent: root });
    for (const keyAlgorithm of ['ec-p256', 'ec-p384', 'rsa-2048'] as const) {
      leaves.set(keyAlgorithm, await mintSvid({ ca: intermediate, spiffeId: 'spiffe://example.org/java', keyAlgorithm }));
    }
  });
  after(async () => {
    await removeScratchDir(dir);
  });

  async function write(name: string, leaf: MintedSvid, password: string): Promise<string> {
    const file = path.join(dir, name);
    await fs.writeFile(file, buildPkcs12({ keyDer: leaf.keyPkcs8Der, certChain: leaf.certChain, password }));
    return file;
  }

  for (const keyAlgorithm of ['ec-p256', 'ec-p384', 'rsa-2048'] as const) {
    test(`openssl pkcs12 reads the ${keyAlgorithm} key and the chain, leaf first, and they match`, async () => {
      const leaf = leaves.get(keyAlgorithm) as MintedSvid;
      const file = await write(`${keyAlgorithm}.p12`, leaf, 'changeit');
      const { stdout: keyPem } = await execFileAsync('openssl', ['pkcs12', '-in', file, '-passin', 'pass:changeit', '-nodes', '-nocerts']);
      const key = createPrivateKey(keyPem);
      assert.ok(key.export({ type: 'pkcs8', format: 'der' }).equals(leaf.keyPkcs8Der), 'the same key comes out');
      const { stdout: certsPem } = await execFileAsync('openssl', ['pkcs12', '-in', file, '-passin', 'pass:changeit', '-nokeys']);
      const certs = (certsPem.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? []).map((pem) => new X509Certificate(pem));
      assert.equal(certs.length, 2);
      assert.ok(certs[0]?.raw.equals(leaf.certDer), 'the leaf first');
      assert.ok(certs[1]?.raw.equals(intermediate.certDer), 'then the intermediate');
      assert.ok(certs[0]?.checkPrivateKey(key));
      // What a reader is told about the protection: PBES2/AES-256 and an HMAC-SHA256 MAC, no legacy algorithm.
      const { stderr: info } = await execFileAsync('openssl', ['pkcs12', '-in', file, '-passin', 'pass:changeit', '-nodes', '-info']);
      assert.match(info, /MAC: sha256, Iteration 2048/);
      assert.match(info, /Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, Iteration 2048, PRF hmacWithSHA256/);
      assert.doesNotMatch(info, /3DES|RC2|SHA1/i);
    });
  }

  test('a wrong password fails the MAC check', async () => {
    const file = await write('wrong.p12', leaves.get('ec-p256') as MintedSvid, 'right-password');
    await assert.rejects(
      execFileAsync('openssl', ['pkcs12', '-in', file, '-passin', 'pass:wrong-password', '-nodes']),
      /Mac verify error|invalid password/i,
    );
    await execFileAsync('openssl', ['pkcs12', '-in', file, '-passin', 'pass:right-password', '-nodes']);
  });

  test('a password with spaces and punctuation works', async () => {
    const password = 'a b!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~';
    const file = await write('punct.p12', leaves.get('ec-p256') as MintedSvid, password);
    await execFileAsync('openssl', ['pkcs12', '-in', file, '-passin', `pass:${password}`, '-nodes']);
  });

  test('the same input gives the same bytes (an unchanged update writes nothing); another key or password does not', () => {
    const leaf = leaves.get('ec-p256') as MintedSvid;
    const a = buildPkcs12({ keyDer: leaf.keyPkcs8Der, certChain: leaf.certChain, password: 'changeit' });
    const b = buildPkcs12({ keyDer: leaf.keyPkcs8Der, certChain: leaf.certChain, password: 'changeit' });
    assert.ok(a.equals(b));
    assert.ok(!a.equals(buildPkcs12({ keyDer: leaf.keyPkcs8Der, certChain: leaf.certChain, password: 'other1' })));
    const other = leaves.get('ec-p384') as MintedSvid;
    assert.ok(!a.equals(buildPkcs12({ keyDer: other.keyPkcs8Der, certChain: other.certChain, password: 'changeit' })));
  });

  test('the key is not in the file in the clear', () => {
    const leaf = leaves.get('rsa-2048') as MintedSvid;
    const p12 = buildPkcs12({ keyDer: leaf.keyPkcs8Der, certChain: leaf.certChain, password: 'changeit' });
    assert.equal(p12.indexOf(leaf.keyPkcs8Der.subarray(-64)), -1);
  });

  test('no chain is an error, not an empty keystore', () => {
    const leaf = leaves.get('ec-p256') as MintedSvid;
    assert.throws(() => buildPkcs12({ keyDer: leaf.keyPkcs8Der, certChain: [], password: 'changeit' }), /at least the leaf/);
  });

  test("the RFC 7292 appendix B key derivation equals OpenSSL's PKCS12KDF", async () => {
    for (const [password, saltHex, id, iterations, length] of [
      ['changeit', '0102030405060708', 3, 2048, 32],
      ['a b!~', 'ffeeddccbbaa99887766554433221100', 1, 1, 40],
      ['p'.repeat(100), '00', 2, 3, 16],
    ] as const) {
      // openssl kdf takes the password already as a BMPString with its NUL terminator (PKCS12_key_gen_uni).
      const bmp = Buffer.concat([Buffer.from(password, 'utf16le').swap16(), Buffer.alloc(2)]).toString('hex');
      const { stdout } = await execFileAsync('openssl', [
        'kdf',
        '-keylen',
        String(length),
        '-kdfopt',
        'digest:SHA256',
        '-kdfopt',
        `hexpass:${bmp}`,
        '-kdfopt',
        `hexsalt:${saltHex}`,
        '-kdfopt',
        `iter:${iterations}`,
        '-kdfopt',
        `id:${id}`,
        'PKCS12KDF',
      ]);
      const expected = stdout.trim().replace(/:/g, '').toLowerCase();
      assert.equal(pkcs12Kdf(password, Buffer.from(saltHex, 'hex'), id, iterations, length).toString('hex'), expected, password);
    }
  });

  test("buildVolumeFiles adds the keystore with the key's mode, after the PEM files", async () => {
    await loadPkcs12Support();
    const leaf = leaves.get('ec-p256') as MintedSvid;
    const svid: PickedSvid = {
      spiffeId: 'spiffe://example.org/java',
      trustDomainId: 'spiffe://example.org',
      certChain: leaf.certChain,
      keyDer: leaf.keyPkcs8Der,
      hint: '',
    };
    const names = { cert: 'tls.crt', key: 'tls.key', bundle: 'ca.crt', credentialBundle: 'credential-bundle.pem', pkcs12: 'keystore.p12' };
    for (const [fsGroup, mode] of [
      [null, 0o600],
      [1000, 0o640],
    ] as const) {
      const files = buildVolumeFiles(svid, [root.certDer], names, fsGroup, 's3cret');
      assert.deepEqual(
        files.map((f) => f.name),
        ['tls.crt', 'tls.key', 'ca.crt', 'credential-bundle.pem', 'keystore.p12'],
      );
      assert.equal(files[4]?.mode, mode);
      assert.ok(files[4]?.data.equals(buildPkcs12({ keyDer: leaf.keyPkcs8Der, certChain: leaf.certChain, password: 's3cret' })));
    }
    // Without a password argument: the documented default.
    const withDefault = buildVolumeFiles(svid, [root.certDer], { ...names, credentialBundle: undefined }, null);
    assert.ok(withDefault[3]?.data.equals(buildPkcs12({ keyDer: leaf.keyPkcs8Der, certChain: leaf.certChain, password: 'changeit' })));
  });

  test('keytool (a JVM) lists one PrivateKeyEntry with the chain, alias svid', { skip: hasKeytool() ? false : 'no keytool installed' }, async () => {
    for (const keyAlgorithm of ['ec-p256', 'rsa-2048'] as const) {
      const leaf = leaves.get(keyAlgorithm) as MintedSvid;
      const file = await write(`java-${keyAlgorithm}.p12`, leaf, 'changeit');
      const { stdout } = await execFileAsync('keytool', ['-list', '-v', '-keystore', file, '-storetype', 'PKCS12', '-storepass', 'changeit']);
      assert.match(stdout, /Your keystore contains 1 entry/);
      assert.match(stdout, new RegExp(`Alias name: ${PKCS12_ALIAS}`));
      assert.match(stdout, /Entry type: PrivateKeyEntry/);
      assert.match(stdout, /Certificate chain length: 2/);
      const fingerprint = new X509Certificate(leaf.certDer).fingerprint256;
      assert.ok(stdout.includes(`SHA256: ${fingerprint}`), 'the leaf is the entry certificate');
      // The key itself: keytool exports it only by re-encoding the keystore, so let Java re-write it and read it back.
      const copy = path.join(dir, `java-copy-${keyAlgorithm}.p12`);
      await execFileAsync('keytool', [
        '-importkeystore',
        '-srckeystore',
        file,
        '-srcstoretype',
        'PKCS12',
        '-srcstorepass',
        'changeit',
        '-destkeystore',
        copy,
        '-deststoretype',
        'PKCS12',
        '-deststorepass',
        'changeit',
        '-noprompt',
      ]);
      const { stdout: keyPem } = await execFileAsync('openssl', ['pkcs12', '-in', copy, '-passin', 'pass:changeit', '-nodes', '-nocerts']);
      assert.ok(createPrivateKey(keyPem).export({ type: 'pkcs8', format: 'der' }).equals(leaf.keyPkcs8Der), 'Java decrypted the same key');
    }
    await assert.rejects(
      execFileAsync('keytool', ['-list', '-keystore', path.join(dir, 'java-ec-p256.p12'), '-storetype', 'PKCS12', '-storepass', 'wrong-pass']),
      // keytool prints its error on stdout.
      (err: { stdout?: string; stderr?: string }) => /password was incorrect|Integrity check failed/i.test(`${err.stdout ?? ''}${err.stderr ?? ''}`),
    );
  });
});
