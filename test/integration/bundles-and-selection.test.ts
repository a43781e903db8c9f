/**
 * One node-wide bundle stream feeds every volume: a CA rotation rewrites each
 * affected volume once, an identical re-send rewrites nothing, and a volume's
 * bundle file holds only its own trust domain. Several matching entries: the
 * spiffe-id and hint attributes pick one.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { Harness, eventually, sleep } from '../support/driver-harness.js';
import { mintCa, mintSvid } from '../support/certs.js';
import { assertValidSvidVolume, readVolume } from '../support/volume-assertions.js';

function bundleSubjects(pem: string): string[] {
  return pem
    .split(/(?=-----BEGIN CERTIFICATE-----)/)
    .filter((block) => block.includes('BEGIN CERTIFICATE'))
    .map((block) => new X509Certificate(block).fingerprint256);
}

describe('trust bundles and SVID selection', () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start();
  });
  after(async () => {
    await h.close();
  });

  it('a CA rotation updates the bundle file of every volume; identical re-sends write nothing; only the own trust domain is written', async () => {
    const pods = [h.kubelet.createPod(), h.kubelet.createPod(), h.kubelet.createPod()];
    const federated = await mintCa({ trustDomain: 'partner.org' });
    const volumes = [];
    for (const [i, pod] of pods.entries()) {
      await h.agent.addEntry({
        spiffeId: `spiffe://example.org/b${i}`,
        selectors: [`k8s:pod-uid:${pod.uid}`],
        federatesWith: ['spiffe://partner.org'],
      });
      volumes.push(await h.kubelet.publish(pod));
    }
    h.agent.setFederatedBundle('spiffe://partner.org', [federated.certDer]);
    await sleep(300);
    const before = await Promise.all(volumes.map((v) => readVolume(v.targetPath)));
    for (const content of before) {
      assert.deepEqual(bundleSubjects(content.bundlePem), [new X509Certificate(h.agent.bundleDers()[0] as Buffer).fingerprint256]);
      assert.ok(
        !bundleSubjects(content.bundlePem).includes(new X509Certificate(federated.certDer).fingerprint256),
        'no federated CA in the own-domain bundle',
      );
    }
    const writtenBefore = (await h.metrics.svidUpdates.get()).values.find((v) => v.labels['outcome'] === 'written')?.value ?? 0;

    // Rotation: the bundle holds old and new CA, and SVIDs are re-signed by the new one.
    await h.agent.rotateCa();
    const expected = h.agent
      .bundleDers()
      .map((der) => new X509Certificate(der).fingerprint256)
      .sort();
    assert.equal(expected.length, 2);
    for (const [i, v] of volumes.entries()) {
      await eventually(
        `bundle of volume ${i}`,
        async () => JSON.stringify(bundleSubjects((await readVolume(v.targetPath)).bundlePem).sort()) === JSON.stringify(expected),
      );
      await assertValidSvidVolume(v.targetPath, `spiffe://example.org/b${i}`);
    }

    // Dropping the old CA makes the agent notify every subscriber with unchanged SVIDs.
    await sleep(200);
    const settled = await Promise.all(volumes.map((v) => readVolume(v.targetPath)));
    h.agent.dropOldCa();
    for (const v of volumes) {
      await eventually('the old CA to leave the bundle', async () => bundleSubjects((await readVolume(v.targetPath)).bundlePem).length === 1);
    }
    const afterDrop = await Promise.all(volumes.map((v) => readVolume(v.targetPath)));
    afterDrop.forEach((content, i) => assert.equal(content.certPem, settled[i]?.certPem, 'the SVID itself did not change'));
    await sleep(300);
    const writes = ((await h.metrics.svidUpdates.get()).values.find((v) => v.labels['outcome'] === 'written')?.value ?? 0) - writtenBefore;
    // Each volume: at most one write for the new bundle + one for the re-signed SVID (coalesced when they arrive together), and one for the drop.
    assert.ok(writes <= volumes.length * 3, `${writes} writes for ${volumes.length} volumes over two bundle changes`);
    // The re-sends above may coalesce with the bundle change they come with; one on its own is recognised and not written.
    const outcome = async (name: string): Promise<number> =>
      (await h.metrics.svidUpdates.get()).values.find((v) => v.labels['outcome'] === name)?.value ?? 0;
    const [writtenBeforeResend, unchangedBeforeResend, repeatsBeforeResend] = [
      await outcome('written'),
      await outcome('unchanged'),
      await outcome('repeat'),
    ];
    h.agent.resendSvids();
    await eventually('the identical re-sends to be dropped', async () => (await outcome('repeat')) === repeatsBeforeResend + volumes.length);
    assert.equal(await outcome('written'), writtenBeforeResend, 'identical re-sends write nothing');
    assert.equal(await outcome('unchanged'), unchangedBeforeResend, 'and are not even built into files to compare');
    const afterResend = await Promise.all(volumes.map((v) => readVolume(v.targetPath)));
    afterResend.forEach((content, i) => assert.equal(content.version, afterDrop[i]?.version, 'the same version directory'));
    for (const v of volumes) await h.kubelet.unpublish(v);
  });

  it('a repeat of the last SVID response: dropped once its files are on disk, tried again while it is refused', async () => {
    const pod = h.kubelet.createPod({ namespace: 'repeat', serviceAccount: 'repeat' });
    const spiffeId = 'spiffe://example.org/repeat';
    const entryId = await h.agent.addEntry({ spiffeId, selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod);
    const outcome = async (name: string): Promise<number> =>
      (await h.metrics.svidUpdates.get()).values.find((v) => v.labels['outcome'] === name)?.value ?? 0;
    const good = h.agent.currentSvid(entryId);
    // Not valid for another hour (a clock that is behind the server's): refused, the previous files stay.
    const early = await mintSvid({
      ca: h.agent.activeCa(),
      spiffeId,
      notBefore: new Date(Date.now() + 3_600_000),
      notAfter: new Date(Date.now() + 7_200_000),
    });
    const before = { rejected: await outcome('rejected'), repeat: await outcome('repeat') };
    h.agent.replaceSvid(entryId, { certChain: early.certChain, keyPkcs8Der: early.keyPkcs8Der });
    await eventually('the early SVID refused', async () => (await outcome('rejected')) === before.rejected + 1);
    h.agent.resendSvids();
    await eventually('its repeat checked and refused again', async () => (await outcome('rejected')) === before.rejected + 2);
    assert.equal(await outcome('repeat'), before.repeat, 'a refused response is not dropped as a repeat');

    h.agent.replaceSvid(entryId, { certChain: good.certChain, keyPkcs8Der: good.keyPkcs8Der });
    await sleep(200);
    const settled = { rejected: await outcome('rejected'), unchanged: await outcome('unchanged'), written: await outcome('written') };
    h.agent.resendSvids();
    await eventually('the repeat of the settled SVID dropped', async () => (await outcome('repeat')) === before.repeat + 1);
    assert.deepEqual(
      { rejected: await outcome('rejected'), unchanged: await outcome('unchanged'), written: await outcome('written') },
      settled,
      'nothing else counted for it',
    );
    await assertValidSvidVolume(volume.targetPath, spiffeId);
    await h.kubelet.unpublish(volume);
  });

  it('several matching entries: the first by entry id by default, or the one named by spiffe-id or hint', async () => {
    const pod = h.kubelet.createPod({ namespace: 'multi', serviceAccount: 'multi' });
    await h.agent.addEntry({ id: 'a-entry', spiffeId: 'spiffe://example.org/multi/a', selectors: [`k8s:pod-uid:${pod.uid}`], hint: 'internal' });
    await h.agent.addEntry({ id: 'b-entry', spiffeId: 'spiffe://example.org/multi/b', selectors: ['k8s:ns:multi'], hint: 'external' });

    const byDefault = await h.kubelet.publish(pod, { volumeName: 'default' });
    await assertValidSvidVolume(byDefault.targetPath, 'spiffe://example.org/multi/a');
    const byId = await h.kubelet.publish(pod, { volumeName: 'by-id', attributes: { 'csi.spire.io/spiffe-id': 'spiffe://example.org/multi/b' } });
    await assertValidSvidVolume(byId.targetPath, 'spiffe://example.org/multi/b');
    const byHint = await h.kubelet.publish(pod, { volumeName: 'by-hint', attributes: { 'csi.spire.io/hint': 'external' } });
    await assertValidSvidVolume(byHint.targetPath, 'spiffe://example.org/multi/b');
    for (const v of [byDefault, byId, byHint]) await h.kubelet.unpublish(v);
  });
});
