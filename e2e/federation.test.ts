/**
 * End to end against real SPIRE v1.15.3: two servers of two trust domains,
 * example.org (with the agent and the driver) and federated.test, federated
 * with each other by exchanging their bundles (`spire-server bundle show
 * -format spiffe` on one, `bundle set -format spiffe -id` on the other). A pod
 * whose entry federates with federated.test gets federated.test.federated-bundle.pem
 * and the combined file, and an SVID minted by the other server verifies
 * against them and not against the own bundle; a pod whose entry does not
 * federate gets no federated file although the agent holds that bundle; a CA
 * rotation of federated.test reaches the federating volume only.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { assertValidSvidVolume } from '../test/support/volume-assertions.js';
import { startScenario, withDiagnostics, type Scenario } from './scenario.js';
import { SecondSpireServer, sleep, splitPem, TRUST_DOMAIN, waitFor } from './spire-testbed.js';

const execFileAsync = promisify(execFile);
const FEDERATED_TRUST_DOMAIN = 'federated.test';
const FEDERATED_FILE = `${FEDERATED_TRUST_DOMAIN}.federated-bundle.pem`;

let s: Scenario | undefined;
let second: SecondSpireServer | undefined;
before(async () => {
  s = await startScenario({ testbed: { label: 'e2e-fed' }, driver: { publishTimeoutMs: 20_000 } });
  second = await SecondSpireServer.start({
    spireServer: s.testbed.tools.spireServer,
    dir: path.join(s.testbed.dir, 'fed'),
    trustDomain: FEDERATED_TRUST_DOMAIN,
  });
  // Federate both ways, as operators do without a bundle endpoint.
  await second.cli.setFederatedBundle(`spiffe://${TRUST_DOMAIN}`, await s.testbed.spiffeBundle());
  await s.testbed.setFederatedBundle(`spiffe://${FEDERATED_TRUST_DOMAIN}`, await second.cli.spiffeBundle());
});
after(async () => {
  await second?.close();
  await s?.close();
});

function scenario(): { s: Scenario; second: SecondSpireServer } {
  assert.ok(s && second, 'the scenario did not start');
  return { s, second };
}

function fingerprints(pem: string): string[] {
  return splitPem(pem).map((block) => new X509Certificate(block).fingerprint256);
}

/** `openssl verify` of `leaf` against exactly the CAs in `caFile` (no system store): true when OK. */
async function opensslVerifies(caFile: string, leaf: X509Certificate, scratch: string): Promise<boolean> {
  const leafFile = path.join(scratch, `leaf-${leaf.serialNumber}.pem`);
  await fs.writeFile(leafFile, leaf.toString());
  try {
    const { stdout } = await execFileAsync('openssl', ['verify', '-no-CApath', '-no-CAstore', '-CAfile', caFile, leafFile]);
    return /: OK/.test(stdout);
  } catch {
    return false;
  }
}

/** What a TLS peer checks with a bundle: some CA in it issued and signed the leaf. */
function issuedByOneOf(leaf: X509Certificate, pem: string): boolean {
  return splitPem(pem).some((block) => {
    const ca = new X509Certificate(block);
    return leaf.checkIssued(ca) && leaf.verify(ca.publicKey);
  });
}

describe('federated trust bundles against two real, federated SPIRE servers', () => {
  it("the federated file holds the other server's CA and verifies its SVIDs; the own bundle does not; only federating volumes get it", async () => {
    const { s, second } = scenario();
    await withDiagnostics(s, async () => {
      const { testbed, driver } = s;
      const pod = driver.kubelet.createPod({ namespace: 'fed' });
      const loner = driver.kubelet.createPod({ namespace: 'fed' });
      const spiffeId = `spiffe://${TRUST_DOMAIN}/ns/fed/pod/${pod.name}`;
      await testbed.createEntry({ spiffeId, selectors: [`k8s:pod-uid:${pod.uid}`], federatesWith: [`spiffe://${FEDERATED_TRUST_DOMAIN}`] });
      await testbed.createPodUidEntry(loner, `spiffe://${TRUST_DOMAIN}/ns/fed/pod/${loner.name}`);

      const volume = await driver.kubelet.publish(pod, { attributes: { 'csi.spire.io/federated-bundles': 'combined' } });
      const content = await assertValidSvidVolume(volume.targetPath, spiffeId);
      const names = (await fs.readdir(volume.targetPath)).filter((name) => !name.startsWith('.')).sort();
      assert.deepEqual(names, ['combined_bundle.pem', FEDERATED_FILE, 'svid.pem', 'svid_bundle.pem', 'svid_key.pem']);

      const otherCas = (await second.cli.bundle()).map((ca) => ca.fingerprint256);
      const ownCas = (await testbed.serverBundle()).map((ca) => ca.fingerprint256);
      const federatedPem = await fs.readFile(path.join(volume.targetPath, FEDERATED_FILE), 'utf8');
      const combinedPem = await fs.readFile(path.join(volume.targetPath, 'combined_bundle.pem'), 'utf8');
      assert.deepEqual(fingerprints(federatedPem), otherCas, "the federated file is the other server's bundle");
      assert.deepEqual(fingerprints(content.bundlePem), ownCas, 'the own bundle file is the own trust domain only');
      assert.deepEqual(fingerprints(combinedPem), [...ownCas, ...otherCas], 'combined: own CAs, then the federated ones');

      // An SVID of the other trust domain, minted by its server.
      const [peer] = await second.cli.mintX509Svid(`spiffe://${FEDERATED_TRUST_DOMAIN}/x`);
      assert.ok(peer, 'x509 mint wrote an SVID');
      const scratch = await fs.mkdtemp(path.join(testbed.dir, 'verify-'));
      assert.ok(issuedByOneOf(peer, federatedPem), 'the minted SVID verifies against the federated file (node:crypto)');
      assert.ok(await opensslVerifies(path.join(volume.targetPath, FEDERATED_FILE), peer, scratch), 'openssl verify against the federated file');
      assert.ok(
        await opensslVerifies(path.join(volume.targetPath, 'combined_bundle.pem'), peer, scratch),
        'openssl verify against the combined file',
      );
      assert.ok(!issuedByOneOf(peer, content.bundlePem), 'it does not verify against the own bundle (node:crypto)');
      assert.ok(!(await opensslVerifies(path.join(volume.targetPath, 'svid_bundle.pem'), peer, scratch)), 'nor with openssl');

      // The agent holds federated.test's bundle, yet a pod whose entry does not federate gets no file of it.
      const lonerVolume = await driver.kubelet.publish(loner);
      assert.deepEqual((await fs.readdir(lonerVolume.targetPath)).filter((name) => !name.startsWith('.')).sort(), [
        'svid.pem',
        'svid_bundle.pem',
        'svid_key.pem',
      ]);

      // federated.test prepares its next CA; the new bundle, set again on example.org, reaches the federating volume only.
      const lonerVersion = await fs.readlink(path.join(lonerVolume.targetPath, '..data'));
      await second.cli.run(['localauthority', 'x509', 'prepare']);
      const rotated = await second.cli.spiffeBundle();
      await testbed.setFederatedBundle(`spiffe://${FEDERATED_TRUST_DOMAIN}`, rotated);
      const rotatedCas = (await second.cli.bundle()).map((ca) => ca.fingerprint256);
      assert.equal(rotatedCas.length, otherCas.length + 1, 'the prepared CA is in the bundle');
      await waitFor(
        'the prepared federated.test CA in the federated file',
        async () => fingerprints(await fs.readFile(path.join(volume.targetPath, FEDERATED_FILE), 'utf8')).join() === rotatedCas.join(),
        { timeoutMs: 20_000, intervalMs: 200 },
      );
      await waitFor(
        'the prepared federated.test CA in the combined file',
        async () =>
          fingerprints(await fs.readFile(path.join(volume.targetPath, 'combined_bundle.pem'), 'utf8')).join() === [...ownCas, ...rotatedCas].join(),
        { timeoutMs: 10_000, intervalMs: 200 },
      );
      await sleep(1000);
      assert.equal(
        await fs.readlink(path.join(lonerVolume.targetPath, '..data')),
        lonerVersion,
        'the volume that does not federate was not rewritten',
      );

      await driver.kubelet.unpublish(volume);
      await driver.kubelet.unpublish(lonerVolume);
    });
  });
});
