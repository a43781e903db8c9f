/**
 * Federated trust bundles through the CSI socket (csi.spire.io/federated-bundles):
 * one `<td>.federated-bundle.pem` per trust domain the pod's entry federates
 * with and no other, the combined file on request, a federated CA rotation
 * that rewrites exactly the volumes federating with that trust domain, a
 * federation removed from the entry taking its file away, a driver restart
 * that keeps writing them, and INVALID_ARGUMENT for values that make no sense.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { mintCa, mintSvid, type MintedCa } from '../support/certs.js';
import { Harness, eventually, sleep } from '../support/driver-harness.js';
import { isServiceError, type PublishedVolume } from '../support/kubelet-simulator.js';
import { assertValidSvidVolume, pathExists } from '../support/volume-assertions.js';

function fingerprints(pem: string): string[] {
  return pem
    .split(/(?=-----BEGIN CERTIFICATE-----)/)
    .filter((block) => block.includes('BEGIN CERTIFICATE'))
    .map((block) => new X509Certificate(block).fingerprint256);
}

const fingerprintOf = (der: Buffer): string => new X509Certificate(der).fingerprint256;

async function visibleNames(targetPath: string): Promise<string[]> {
  return (await fs.readdir(targetPath)).filter((name) => !name.startsWith('.')).sort();
}

async function readPem(targetPath: string, name: string): Promise<string> {
  return fs.readFile(path.join(targetPath, name), 'utf8');
}

/** True when a leaf signed by `issuer` verifies against one of the CAs in `pem`, the way a TLS peer checks it. */
function verifiesAgainst(leafDer: Buffer, pem: string): boolean {
  const leaf = new X509Certificate(leafDer);
  return (
    fingerprints(pem).length > 0 &&
    pem.split(/(?=-----BEGIN CERTIFICATE-----)/).some((block) => {
      if (!block.includes('BEGIN CERTIFICATE')) return false;
      const ca = new X509Certificate(block);
      return leaf.checkIssued(ca) && leaf.verify(ca.publicKey);
    })
  );
}

describe('federated trust bundles', () => {
  let h: Harness;
  let partnerA: MintedCa;
  let partnerB: MintedCa;
  let partnerC: MintedCa;
  before(async () => {
    h = await Harness.start();
    [partnerA, partnerB, partnerC] = await Promise.all([
      mintCa({ trustDomain: 'partner-a.test' }),
      mintCa({ trustDomain: 'partner-b.test' }),
      mintCa({ trustDomain: 'partner-c.test' }),
    ]);
    h.agent.setFederatedBundle('spiffe://partner-a.test', [partnerA.certDer]);
    h.agent.setFederatedBundle('spiffe://partner-b.test', [partnerB.certDer]);
    h.agent.setFederatedBundle('spiffe://partner-c.test', [partnerC.certDer]);
  });
  after(async () => {
    await h.close();
  });

  it("writes one file per trust domain the pod's entry federates with, and none for the others the agent holds", async () => {
    const pod = h.kubelet.createPod();
    const other = h.kubelet.createPod();
    await h.agent.addEntry({
      spiffeId: 'spiffe://example.org/fed-files',
      selectors: [`k8s:pod-uid:${pod.uid}`],
      federatesWith: ['spiffe://partner-a.test', 'spiffe://partner-b.test'],
    });
    // Another pod's entry makes the agent hold (and stream) partner-c.test's bundle too.
    await h.agent.addEntry({
      spiffeId: 'spiffe://example.org/fed-other',
      selectors: [`k8s:pod-uid:${other.uid}`],
      federatesWith: ['spiffe://partner-c.test'],
    });
    const volume = await h.kubelet.publish(pod);
    const content = await assertValidSvidVolume(volume.targetPath, 'spiffe://example.org/fed-files');
    assert.deepEqual(await visibleNames(volume.targetPath), [
      'partner-a.test.federated-bundle.pem',
      'partner-b.test.federated-bundle.pem',
      'svid.pem',
      'svid_bundle.pem',
      'svid_key.pem',
    ]);
    assert.equal(
      await fs.readlink(path.join(volume.targetPath, 'partner-a.test.federated-bundle.pem')),
      '..data/partner-a.test.federated-bundle.pem',
    );
    assert.equal((await fs.stat(path.join(volume.targetPath, 'partner-a.test.federated-bundle.pem'))).mode & 0o777, 0o644);
    const fileA = await readPem(volume.targetPath, 'partner-a.test.federated-bundle.pem');
    const fileB = await readPem(volume.targetPath, 'partner-b.test.federated-bundle.pem');
    assert.deepEqual(fingerprints(fileA), [fingerprintOf(partnerA.certDer)]);
    assert.deepEqual(fingerprints(fileB), [fingerprintOf(partnerB.certDer)]);
    // The own bundle stays the own trust domain's alone (the SVID is checked against it only).
    assert.deepEqual(fingerprints(content.bundlePem), h.agent.bundleDers().map(fingerprintOf));

    // A workload of partner-a.test is trusted through its file, and through no other.
    const peer = await mintSvid({ ca: partnerA, spiffeId: 'spiffe://partner-a.test/peer' });
    assert.ok(verifiesAgainst(peer.certDer, fileA), 'a partner-a.test SVID verifies against partner-a.test.federated-bundle.pem');
    assert.ok(!verifiesAgainst(peer.certDer, fileB), 'but not against partner-b.test.federated-bundle.pem');
    assert.ok(!verifiesAgainst(peer.certDer, content.bundlePem), 'nor against the own bundle');

    const otherVolume = await h.kubelet.publish(other);
    assert.deepEqual(await visibleNames(otherVolume.targetPath), [
      'partner-c.test.federated-bundle.pem',
      'svid.pem',
      'svid_bundle.pem',
      'svid_key.pem',
    ]);
    await h.kubelet.unpublish(volume);
    await h.kubelet.unpublish(otherVolume);
  });

  it('combined adds one file with the own and every federated CA, under the layout of the pod', async () => {
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({
      spiffeId: 'spiffe://example.org/fed-combined',
      selectors: [`k8s:pod-uid:${pod.uid}`],
      federatesWith: ['spiffe://partner-b.test', 'spiffe://partner-a.test'],
    });
    const volume = await h.kubelet.publish(pod, {
      attributes: { 'csi.spire.io/layout': 'cert-manager', 'csi.spire.io/federated-bundles': 'combined' },
    });
    assert.deepEqual(await visibleNames(volume.targetPath), [
      'ca.crt',
      'combined_bundle.pem',
      'partner-a.test.federated-bundle.pem',
      'partner-b.test.federated-bundle.pem',
      'tls.crt',
      'tls.key',
    ]);
    const combined = await readPem(volume.targetPath, 'combined_bundle.pem');
    assert.deepEqual(fingerprints(combined), [...h.agent.bundleDers(), partnerA.certDer, partnerB.certDer].map(fingerprintOf));
    assert.deepEqual(fingerprints(await readPem(volume.targetPath, 'ca.crt')), h.agent.bundleDers().map(fingerprintOf), 'ca.crt stays own-only');
    await h.kubelet.unpublish(volume);

    const named = h.kubelet.createPod();
    await h.agent.addEntry({
      spiffeId: 'spiffe://example.org/fed-combined-named',
      selectors: [`k8s:pod-uid:${named.uid}`],
      federatesWith: ['spiffe://partner-a.test'],
    });
    const namedVolume = await h.kubelet.publish(named, {
      attributes: { 'csi.spire.io/federated-bundles': 'combined', 'csi.spire.io/combined-bundle-file': 'all-cas.pem' },
    });
    assert.deepEqual(
      fingerprints(await readPem(namedVolume.targetPath, 'all-cas.pem')),
      [...h.agent.bundleDers(), partnerA.certDer].map(fingerprintOf),
    );
    await h.kubelet.unpublish(namedVolume);
  });

  it('none writes no federated file although the entry federates', async () => {
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({
      spiffeId: 'spiffe://example.org/fed-none',
      selectors: [`k8s:pod-uid:${pod.uid}`],
      federatesWith: ['spiffe://partner-a.test'],
    });
    const volume = await h.kubelet.publish(pod, { attributes: { 'csi.spire.io/federated-bundles': 'none' } });
    assert.deepEqual(await visibleNames(volume.targetPath), ['svid.pem', 'svid_bundle.pem', 'svid_key.pem']);
    await h.kubelet.unpublish(volume);
  });

  it('a federated CA rotation rewrites exactly the volumes that federate with that trust domain', async () => {
    const rotating = await mintCa({ trustDomain: 'rotating.test' });
    const steady = await mintCa({ trustDomain: 'steady.test' });
    h.agent.setFederatedBundle('spiffe://rotating.test', [rotating.certDer]);
    h.agent.setFederatedBundle('spiffe://steady.test', [steady.certDer]);
    const specs: { name: string; federatesWith: string[]; attributes: Record<string, string> }[] = [
      { name: 'uses-rotating', federatesWith: ['spiffe://rotating.test'], attributes: {} },
      {
        name: 'uses-both-combined',
        federatesWith: ['spiffe://rotating.test', 'spiffe://steady.test'],
        attributes: { 'csi.spire.io/federated-bundles': 'combined' },
      },
      { name: 'uses-steady', federatesWith: ['spiffe://steady.test'], attributes: {} },
      { name: 'uses-none', federatesWith: [], attributes: {} },
      { name: 'opted-out', federatesWith: ['spiffe://rotating.test'], attributes: { 'csi.spire.io/federated-bundles': 'none' } },
    ];
    const volumes: ((typeof specs)[number] & { volume: PublishedVolume })[] = [];
    for (const spec of specs) {
      const pod = h.kubelet.createPod();
      await h.agent.addEntry({
        spiffeId: `spiffe://example.org/${spec.name}`,
        selectors: [`k8s:pod-uid:${pod.uid}`],
        federatesWith: spec.federatesWith,
      });
      volumes.push({ ...spec, volume: await h.kubelet.publish(pod, { attributes: spec.attributes }) });
    }
    await sleep(200);
    const versionsBefore = await Promise.all(volumes.map(({ volume }) => fs.readlink(path.join(volume.targetPath, '..data'))));

    const logsBefore = h.logs.lines.length;
    const next = await mintCa({ trustDomain: 'rotating.test' });
    h.agent.setFederatedBundle('spiffe://rotating.test', [rotating.certDer, next.certDer]);
    const expected = [rotating.certDer, next.certDer].map(fingerprintOf);
    await eventually(
      'the rotated bundle in uses-rotating',
      async () =>
        JSON.stringify(fingerprints(await readPem(volumes[0]!.volume.targetPath, 'rotating.test.federated-bundle.pem'))) === JSON.stringify(expected),
    );
    await eventually(
      'the rotated bundle in uses-both-combined',
      async () =>
        JSON.stringify(fingerprints(await readPem(volumes[1]!.volume.targetPath, 'rotating.test.federated-bundle.pem'))) === JSON.stringify(expected),
    );
    const combined = await eventually('the combined file of uses-both-combined to follow', async () => {
      const pem = await readPem(volumes[1]!.volume.targetPath, 'combined_bundle.pem');
      return fingerprints(pem).includes(fingerprintOf(next.certDer)) ? pem : undefined;
    });
    assert.deepEqual(fingerprints(combined), [...h.agent.bundleDers(), rotating.certDer, next.certDer, steady.certDer].map(fingerprintOf));
    await sleep(300);
    // Each volume is told only of the bundles it uses: the others do not even sync.
    const told = new Set(
      h.logs
        .entries()
        .slice(logsBefore)
        .filter((entry) => entry['msg'] === 'the trust bundle of a federated trust domain of the volume changed')
        .map((entry) => entry['volume_id']),
    );
    assert.deepEqual(
      volumes.filter(({ volume }) => told.has(volume.volumeId)).map(({ name }) => name),
      ['uses-rotating', 'uses-both-combined'],
    );
    const versionsAfter = await Promise.all(volumes.map(({ volume }) => fs.readlink(path.join(volume.targetPath, '..data'))));
    volumes.forEach(({ name }, i) => {
      const rewritten = versionsAfter[i] !== versionsBefore[i];
      assert.equal(rewritten, name === 'uses-rotating' || name === 'uses-both-combined', `${name} ${rewritten ? 'was' : 'was not'} rewritten`);
    });
    for (const { volume } of volumes) await h.kubelet.unpublish(volume);
  });

  it("a trust domain removed from the entry's federation loses its file at the next write", async () => {
    const pod = h.kubelet.createPod();
    const both = await h.agent.addEntry({
      spiffeId: 'spiffe://example.org/fed-removal',
      selectors: [`k8s:pod-uid:${pod.uid}`],
      federatesWith: ['spiffe://partner-a.test', 'spiffe://partner-b.test'],
    });
    const volume = await h.kubelet.publish(pod, { attributes: { 'csi.spire.io/federated-bundles': 'combined' } });
    assert.ok((await visibleNames(volume.targetPath)).includes('partner-b.test.federated-bundle.pem'));
    // The entry is re-registered federating with partner-a.test only (an entry update, as the controller manager makes it).
    h.agent.removeEntry(both);
    await h.agent.addEntry({
      spiffeId: 'spiffe://example.org/fed-removal',
      selectors: [`k8s:pod-uid:${pod.uid}`],
      federatesWith: ['spiffe://partner-a.test'],
    });
    await eventually(
      'the partner-b.test file to go',
      async () => !(await visibleNames(volume.targetPath)).includes('partner-b.test.federated-bundle.pem'),
    );
    assert.deepEqual(await visibleNames(volume.targetPath), [
      'combined_bundle.pem',
      'partner-a.test.federated-bundle.pem',
      'svid.pem',
      'svid_bundle.pem',
      'svid_key.pem',
    ]);
    const combined = await readPem(volume.targetPath, 'combined_bundle.pem');
    assert.ok(!fingerprints(combined).includes(fingerprintOf(partnerB.certDer)), 'nor is its CA in the combined file');
    assert.ok(fingerprints(combined).includes(fingerprintOf(partnerA.certDer)));
    await h.kubelet.unpublish(volume);
  });

  it('a restarted driver keeps writing the federated files it was asked for (the record holds the mode)', async () => {
    const restartCa = await mintCa({ trustDomain: 'restart.test' });
    h.agent.setFederatedBundle('spiffe://restart.test', [restartCa.certDer]);
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({
      spiffeId: 'spiffe://example.org/fed-restart',
      selectors: [`k8s:pod-uid:${pod.uid}`],
      federatesWith: ['spiffe://restart.test'],
    });
    const volume = await h.kubelet.publish(pod, {
      attributes: { 'csi.spire.io/federated-bundles': 'combined', 'csi.spire.io/combined-bundle-file': 'all.pem' },
    });
    const record = JSON.parse(await fs.readFile(path.join(h.config.stateDir, 'volumes', `${volume.volumeId}.json`), 'utf8')) as Record<
      string,
      unknown
    >;
    assert.equal(record['federatedBundles'], 'combined');
    assert.equal((record['files'] as Record<string, unknown>)['combinedBundle'], 'all.pem');
    assert.ok(!JSON.stringify(record).includes('restart.test'), 'the federated trust domains are not recorded: the agent says them again');

    await h.stopDriver();
    const next = await mintCa({ trustDomain: 'restart.test' });
    h.agent.setFederatedBundle('spiffe://restart.test', [next.certDer]);
    await h.startDriver();
    await eventually('the new federated CA after the restart', async () => {
      const file = fingerprints(await readPem(volume.targetPath, 'restart.test.federated-bundle.pem'));
      const all = fingerprints(await readPem(volume.targetPath, 'all.pem'));
      return (
        file.join() === fingerprintOf(next.certDer) && all.includes(fingerprintOf(next.certDer)) && !all.includes(fingerprintOf(restartCa.certDer))
      );
    });
    await h.kubelet.unpublish(volume);
  });

  it('values that make no sense are INVALID_ARGUMENT saying what to change, before anything is touched', async () => {
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({
      spiffeId: 'spiffe://example.org/fed-invalid',
      selectors: [`k8s:pod-uid:${pod.uid}`],
      federatesWith: ['spiffe://partner-a.test'],
    });
    const cases: [Record<string, string>, RegExp][] = [
      [{ 'csi.spire.io/federated-bundles': 'merged' }, /"csi\.spire\.io\/federated-bundles"="merged": must be one of separate, combined, none/],
      [
        { 'csi.spire.io/combined-bundle-file': 'all.pem' },
        /set csi\.spire\.io\/federated-bundles to combined, or remove csi\.spire\.io\/combined-bundle-file/,
      ],
      [{ 'csi.spire.io/federated-bundles': 'combined', 'csi.spire.io/combined-bundle-file': '../all.pem' }, /combined-bundle-file.*contains "\/"/],
      [
        { 'csi.spire.io/federated-bundles': 'combined', 'csi.spire.io/combined-bundle-file': 'svid.pem' },
        /cert-file .* and csi\.spire\.io\/combined-bundle-file are both "svid\.pem"/,
      ],
      [
        { 'csi.spire.io/bundle-file': 'partner-a.test.federated-bundle.pem' },
        /reserved for the federated trust bundles; choose another name, or set csi\.spire\.io\/federated-bundles to none/,
      ],
    ];
    for (const [attributes, pattern] of cases) {
      await assert.rejects(
        h.kubelet.publish(pod, { attributes }),
        (err) => isServiceError(err) && err.code === grpc.status.INVALID_ARGUMENT && pattern.test(err.details),
        JSON.stringify(attributes),
      );
    }
    assert.ok(!(await pathExists(h.kubelet.volumeFor(pod).targetPath)), 'no target path was made for a refused volume');
  });
});
