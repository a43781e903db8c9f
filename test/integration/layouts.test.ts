/**
 * csi.spire.io/layout and csi.spire.io/credential-bundle-file through the CSI
 * socket: the names and formats a pod asks for, their modes with an fsGroup,
 * one ..data swap for every file on rotation (docs/design.md invariant 4), a
 * republish with other attributes refused, and a driver restart that keeps
 * writing every file. Modes and groups need root (chown), as in
 * tmpfs-and-fsgroup.test.ts; the rest runs anywhere.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { watch } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { Harness, eventually, runningAsRoot } from '../support/driver-harness.js';
import { isServiceError } from '../support/kubelet-simulator.js';
import { assertValidSvidVolume, readVolume } from '../support/volume-assertions.js';

const execFileAsync = promisify(execFile);
const CERT_MANAGER = { cert: 'tls.crt', key: 'tls.key', bundle: 'ca.crt' };
const ATTRIBUTES = { 'csi.spire.io/layout': 'cert-manager', 'csi.spire.io/credential-bundle-file': 'credential-bundle.pem' };

/** What an application written for a podCertificate volume does: one read, the key first, then the chain. */
async function readCredentialBundle(file: string): Promise<{ text: string; leaf: X509Certificate; chain: X509Certificate[] }> {
  const text = await fs.readFile(file, 'utf8');
  assert.match(text, /^-----BEGIN PRIVATE KEY-----\n/);
  const chain = (text.match(/-----BEGIN CERTIFICATE-----\n[^-]+-----END CERTIFICATE-----\n/g) ?? []).map((pem) => new X509Certificate(pem));
  const leaf = chain[0];
  assert.ok(leaf, 'a certificate after the key');
  assert.ok(leaf.checkPrivateKey(createPrivateKey(text)), 'the first block is the key of the leaf');
  return { text, leaf, chain };
}

describe('layouts and the credential bundle', () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start();
  });
  after(async () => {
    await h.close();
  });

  it('writes the cert-manager names and a Pod Certificates credential bundle, verifiable with openssl', async () => {
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/layout', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod, { attributes: ATTRIBUTES });
    const content = await assertValidSvidVolume(volume.targetPath, 'spiffe://example.org/layout', CERT_MANAGER);
    assert.deepEqual((await fs.readdir(volume.targetPath)).filter((n) => !n.startsWith('..')).sort(), [
      'ca.crt',
      'credential-bundle.pem',
      'tls.crt',
      'tls.key',
    ]);
    const bundleFile = path.join(volume.targetPath, 'credential-bundle.pem');
    assert.equal(await fs.readlink(bundleFile), '..data/credential-bundle.pem');
    const bundle = await readCredentialBundle(bundleFile);
    assert.equal(bundle.text, content.keyPem + content.certPem, 'key file then certificate file, byte for byte');
    // openssl reads key and chain out of the one file.
    const { stdout: keyOut } = await execFileAsync('openssl', ['pkey', '-in', bundleFile, '-pubout']);
    const { stdout: certKey } = await execFileAsync('openssl', ['x509', '-in', bundleFile, '-noout', '-pubkey']);
    assert.equal(keyOut, certKey, 'the key and the leaf openssl finds in the bundle belong together');
    const { stdout } = await execFileAsync('openssl', ['verify', '-CAfile', path.join(volume.targetPath, 'ca.crt'), bundleFile]);
    assert.match(stdout, /: OK/);
    const modes = await Promise.all(
      ['tls.crt', 'tls.key', 'ca.crt', 'credential-bundle.pem'].map(async (name) => (await fs.stat(path.join(volume.targetPath, name))).mode & 0o777),
    );
    assert.deepEqual(modes, [0o644, 0o600, 0o644, 0o600]);
    await h.kubelet.unpublish(volume);
  });

  it('rotation rewrites every file in one ..data swap', async () => {
    const pod = h.kubelet.createPod();
    const entryId = await h.agent.addEntry({ spiffeId: 'spiffe://example.org/layout-rotation', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod, { attributes: ATTRIBUTES });
    const before = await readVolume(volume.targetPath, CERT_MANAGER);
    const swaps: string[] = [];
    const watcher = watch(volume.targetPath, (_event, name) => {
      if (name === '..data') swaps.push(name);
    });
    try {
      await h.agent.rotateSvids(entryId);
      const rotated = await eventually('the rotated SVID on disk', async () => {
        const now = await readVolume(volume.targetPath, CERT_MANAGER);
        return now.leaf.serialNumber !== before.leaf.serialNumber ? now : undefined;
      });
      // Let any further event arrive before counting.
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.equal(swaps.length, 1, 'exactly one rename onto ..data');
      const bundle = await readCredentialBundle(path.join(volume.targetPath, 'credential-bundle.pem'));
      assert.equal(bundle.leaf.serialNumber, rotated.leaf.serialNumber, 'the credential bundle rotated with the certificate file');
      assert.equal(bundle.text, rotated.keyPem + rotated.certPem);
      const versionFiles = await fs.readdir(path.join(volume.targetPath, rotated.version));
      assert.deepEqual(versionFiles.sort(), ['ca.crt', 'credential-bundle.pem', 'tls.crt', 'tls.key'], 'all four in the new version');
    } finally {
      watcher.close();
    }
    await h.kubelet.unpublish(volume);
  });

  it('a republish of the live volume with another layout or credential bundle is ALREADY_EXISTS, naming the difference', async () => {
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/layout-republish', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod, { attributes: ATTRIBUTES });
    await h.kubelet.publish(pod, { attributes: ATTRIBUTES }); // same attributes: OK
    const refused = (pattern: RegExp) => (err: unknown) =>
      isServiceError(err) && err.code === grpc.status.ALREADY_EXISTS && pattern.test(err.details);
    await assert.rejects(
      h.kubelet.publish(pod, { attributes: { 'csi.spire.io/credential-bundle-file': 'credential-bundle.pem' } }),
      refused(/cert-file was tls\.crt, now svid\.pem.*layout was cert-manager, now spiffe-helper/),
    );
    await assert.rejects(
      h.kubelet.publish(pod, { attributes: { 'csi.spire.io/layout': 'cert-manager' } }),
      refused(/credential-bundle-file was credential-bundle\.pem, now none/),
    );
    await h.kubelet.unpublish(volume);
  });

  it('writes a PKCS#12 keystore openssl opens with the password; another password on republish is refused without showing it', async () => {
    const pod = h.kubelet.createPod();
    const entryId = await h.agent.addEntry({ spiffeId: 'spiffe://example.org/layout-pkcs12', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const attributes = { ...ATTRIBUTES, 'csi.spire.io/pkcs12-file': 'keystore.p12', 'csi.spire.io/pkcs12-password': 'pod-spec-pass' };
    const volume = await h.kubelet.publish(pod, { attributes });
    const keystore = path.join(volume.targetPath, 'keystore.p12');
    assert.equal((await fs.stat(keystore)).mode & 0o777, 0o600);
    const openKeystore = async (): Promise<{ key: string; leaf: X509Certificate }> => {
      const { stdout: key } = await execFileAsync('openssl', ['pkcs12', '-in', keystore, '-passin', 'pass:pod-spec-pass', '-nodes', '-nocerts']);
      const { stdout: certs } = await execFileAsync('openssl', ['pkcs12', '-in', keystore, '-passin', 'pass:pod-spec-pass', '-nokeys', '-clcerts']);
      return { key, leaf: new X509Certificate(certs.slice(certs.indexOf('-----BEGIN CERTIFICATE-----'))) };
    };
    const first = await openKeystore();
    const content = await readVolume(volume.targetPath, CERT_MANAGER);
    assert.ok(first.leaf.raw.equals(content.leaf.raw), 'the keystore holds the SVID of tls.crt');
    assert.ok(first.leaf.checkPrivateKey(createPrivateKey(first.key)));
    assert.ok(createPrivateKey(first.key).export({ type: 'pkcs8', format: 'pem' }) === content.keyPem, 'and the key of tls.key');
    const record = await fs.readFile(path.join(h.config.stateDir, 'volumes', `${volume.volumeId}.json`), 'utf8');
    assert.doesNotMatch(record, /PRIVATE KEY/);
    await assert.rejects(
      h.kubelet.publish(pod, { attributes: { ...attributes, 'csi.spire.io/pkcs12-password': 'other-pass' } }),
      (err: unknown) =>
        isServiceError(err) &&
        err.code === grpc.status.ALREADY_EXISTS &&
        /pkcs12-password differs/.test(err.details) &&
        !/pod-spec-pass|other-pass/.test(err.details),
    );
    // Rotation rewrites the keystore in the same swap as the PEM files.
    await h.agent.rotateSvids(entryId);
    const rotated = await eventually('the rotated SVID on disk', async () => {
      const now = await readVolume(volume.targetPath, CERT_MANAGER);
      return now.leaf.serialNumber !== content.leaf.serialNumber ? now : undefined;
    });
    const version = path.join(volume.targetPath, rotated.version);
    const { stdout: certs } = await execFileAsync('openssl', [
      'pkcs12',
      '-in',
      path.join(version, 'keystore.p12'),
      '-passin',
      'pass:pod-spec-pass',
      '-nokeys',
      '-clcerts',
    ]);
    assert.equal(new X509Certificate(certs.slice(certs.indexOf('-----BEGIN'))).serialNumber, rotated.leaf.serialNumber);
    assert.doesNotMatch(h.logs.text(), /pod-spec-pass/);
    await h.kubelet.unpublish(volume);
  });

  it('a restarted driver keeps writing every file (the record holds the names)', async () => {
    const pod = h.kubelet.createPod();
    const entryId = await h.agent.addEntry({ spiffeId: 'spiffe://example.org/layout-restart', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod, { attributes: ATTRIBUTES });
    const record = JSON.parse(await fs.readFile(path.join(h.config.stateDir, 'volumes', `${volume.volumeId}.json`), 'utf8')) as Record<
      string,
      unknown
    >;
    assert.equal(record['version'], 1);
    assert.equal(record['layout'], 'cert-manager');
    assert.deepEqual(record['files'], { ...CERT_MANAGER, credentialBundle: 'credential-bundle.pem' });
    await h.stopDriver();
    await h.startDriver();
    const before = await readVolume(volume.targetPath, CERT_MANAGER);
    await h.agent.rotateSvids(entryId);
    await eventually('rotation after the restart', async () => {
      const bundle = await readCredentialBundle(path.join(volume.targetPath, 'credential-bundle.pem'));
      return bundle.leaf.serialNumber !== before.leaf.serialNumber;
    });
    await h.kubelet.unpublish(volume);
  });
});

describe('credential bundle modes with an fsGroup (root)', { skip: !runningAsRoot() && !process.env['CI'] ? 'needs root to chown' : false }, () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start({ useTmpfs: true });
  });
  after(async () => {
    await h.close();
  });

  it('the credential bundle holds the key, so it gets the key file mode and group: 0640, group-owned', async () => {
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/layout-fsgroup', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod, { fsGroup: 2345, attributes: ATTRIBUTES });
    const stats = await Promise.all(
      ['tls.crt', 'tls.key', 'ca.crt', 'credential-bundle.pem'].map(async (name) => {
        const stat = await fs.stat(path.join(volume.targetPath, name));
        return { mode: stat.mode & 0o777, gid: stat.gid };
      }),
    );
    assert.deepEqual(stats, [
      { mode: 0o644, gid: 2345 },
      { mode: 0o640, gid: 2345 },
      { mode: 0o644, gid: 2345 },
      { mode: 0o640, gid: 2345 },
    ]);
    await h.kubelet.unpublish(volume);
  });
});
