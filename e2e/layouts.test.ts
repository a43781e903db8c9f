/**
 * End to end against a real SPIRE v1.15.3 server and agent: a volume with the
 * cert-manager layout, a Pod Certificates credential bundle and a PKCS#12
 * keystore. openssl verifies the PEM files and the bundle against the trust
 * bundle, finds the key first in the credential bundle, and opens the keystore
 * with the password; after a rotation every file holds the new SVID.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { assertValidSvidVolume } from '../test/support/volume-assertions.js';
import { startScenario, withDiagnostics, type Scenario } from './scenario.js';

const execFileAsync = promisify(execFile);
const CERT_MANAGER = { cert: 'tls.crt', key: 'tls.key', bundle: 'ca.crt' };
const CERT_FILES = [CERT_MANAGER.cert, CERT_MANAGER.key];

let s: Scenario | undefined;
before(async () => {
  s = await startScenario({ testbed: { label: 'e2e-layouts' }, driver: { publishTimeoutMs: 10_000 } });
});
after(async () => {
  await s?.close();
});

function scenario(): Scenario {
  assert.ok(s, 'the scenario did not start');
  return s;
}

describe('layouts against a real SPIRE agent', () => {
  it('cert-manager names, a credential bundle and a PKCS#12 keystore, all verified with openssl, all rotated together', async () => {
    const { testbed, driver } = scenario();
    await withDiagnostics(s, async () => {
      const pod = driver.kubelet.createPod({ namespace: 'java' });
      const spiffeId = `spiffe://example.org/ns/${pod.namespace}/pod/${pod.name}`;
      // A short TTL, so the agent rotates it within the test (as in rotation.test.ts).
      await testbed.createPodUidEntry(pod, spiffeId, { x509SvidTtlSeconds: 20 });
      const volume = await driver.kubelet.publish(pod, {
        attributes: {
          'csi.spire.io/layout': 'cert-manager',
          'csi.spire.io/credential-bundle-file': 'credential-bundle.pem',
          'csi.spire.io/pkcs12-file': 'keystore.p12',
        },
      });
      const files = (await fs.readdir(volume.targetPath)).filter((name) => !name.startsWith('..')).sort();
      assert.deepEqual(files, ['ca.crt', 'credential-bundle.pem', 'keystore.p12', 'tls.crt', 'tls.key']);
      const content = await assertValidSvidVolume(volume.targetPath, spiffeId, CERT_MANAGER);

      const credentialBundle = path.join(volume.targetPath, 'credential-bundle.pem');
      const bundleText = await fs.readFile(credentialBundle, 'utf8');
      assert.equal(bundleText, content.keyPem + content.certPem, 'the PRIVATE KEY block, then the chain leaf first');
      const { stdout: verified } = await execFileAsync('openssl', ['verify', '-CAfile', path.join(volume.targetPath, 'ca.crt'), credentialBundle]);
      assert.match(verified, /: OK/);
      assert.ok(new X509Certificate(bundleText.slice(bundleText.indexOf('-----BEGIN CERTIFICATE'))).checkPrivateKey(createPrivateKey(bundleText)));

      const keystore = path.join(volume.targetPath, 'keystore.p12');
      const open = async (file: string): Promise<X509Certificate> => {
        const { stdout: key } = await execFileAsync('openssl', ['pkcs12', '-in', file, '-passin', 'pass:changeit', '-nodes', '-nocerts']);
        const { stdout: leaf } = await execFileAsync('openssl', ['pkcs12', '-in', file, '-passin', 'pass:changeit', '-nokeys', '-clcerts']);
        const cert = new X509Certificate(leaf.slice(leaf.indexOf('-----BEGIN CERTIFICATE')));
        assert.ok(cert.checkPrivateKey(createPrivateKey(key)), 'key and leaf of the keystore belong together');
        return cert;
      };
      assert.ok((await open(keystore)).raw.equals(content.leaf.raw), 'the keystore holds the SVID of tls.crt');
      for (const name of ['tls.key', 'credential-bundle.pem', 'keystore.p12']) {
        assert.equal((await fs.stat(path.join(volume.targetPath, name))).mode & 0o777, 0o600, name);
      }

      // The agent rotates the short-lived SVID: every file follows, in one version directory.
      const rotated = await waitForNewLeaf(volume.targetPath, content.leaf.serialNumber);
      const version = path.join(volume.targetPath, rotated.version);
      assert.equal(await fs.readFile(path.join(version, 'credential-bundle.pem'), 'utf8'), rotated.keyPem + rotated.certPem);
      assert.equal((await open(path.join(version, 'keystore.p12'))).serialNumber, rotated.leaf.serialNumber);

      await driver.kubelet.unpublish(volume);
      await driver.assertNothingLeft(volume);
    });
  });
});

/**
 * The next SVID on disk, read inside the version directory ..data points at,
 * so all files come from one version even if another swap happens meanwhile
 * (a read that loses the race, to a deleted old version, is retried).
 */
async function waitForNewLeaf(
  targetPath: string,
  serial: string,
): Promise<{ version: string; keyPem: string; certPem: string; leaf: X509Certificate }> {
  const deadline = Date.now() + 25_000;
  for (;;) {
    try {
      const version = await fs.readlink(path.join(targetPath, '..data'));
      const [certPem, keyPem] = await Promise.all(CERT_FILES.map((name) => fs.readFile(path.join(targetPath, version, name), 'utf8')));
      const leaf = new X509Certificate(certPem as string);
      if (leaf.serialNumber !== serial) return { version, keyPem: keyPem as string, certPem: certPem as string, leaf };
    } catch {
      // Mid-swap: try again.
    }
    if (Date.now() > deadline) throw new Error(`no rotated SVID in ${targetPath} within 25 s (serial was ${serial})`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
