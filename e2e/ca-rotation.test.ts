/**
 * CA rotation end to end: the bundle file follows the real SPIRE server's
 * X.509 authority rotation.
 *
 * What SPIRE v1.15.3 does with a self-signed CA (no UpstreamAuthority),
 * measured here with ca_ttl = "1m": the CA is valid from issue − 10 s to
 * issue + ca_ttl; the server's rotator (a 10 s tick) prepares the next CA once
 * half of (NotAfter − issue) has passed, i.e. ~30 s after start — from then
 * on it is in the bundle next to the active one — and activates it at
 * NotAfter − ca_ttl/6, ~50 s after start; only then are SVIDs signed by it.
 * Expired CAs stay in the bundle (pruned after 24 h). SVIDs are never signed
 * past the CA's NotAfter, so near the end of a CA's life they are short and
 * rotate at every 1 s sync.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { assertValidSvidVolume, readVolume } from '../test/support/volume-assertions.js';
import { bundleCertificates, startScenario, withDiagnostics, type Scenario } from './scenario.js';
import { waitFor } from './spire-testbed.js';

let s: Scenario | undefined;
before(async () => {
  s = await startScenario({
    // default_x509_svid_ttl above ca_ttl/6 only makes the server warn; 20 s
    // keeps SVIDs (and the agent's own) from rotating at every sync.
    testbed: { label: 'e2e-ca', caTtl: '1m', defaultX509SvidTtl: '20s' },
  });
});
after(async () => {
  await s?.close();
});

describe('CA rotation against a real SPIRE server', () => {
  it('the bundle file gains the prepared CA, then the SVID is signed by it; the files verify throughout', async () => {
    assert.ok(s);
    const { testbed, driver } = s;
    await withDiagnostics(s, async () => {
      const pod = driver.kubelet.createPod();
      const spiffeId = `spiffe://example.org/ca-rotation/${pod.name}`;
      await testbed.createPodUidEntry(pod, spiffeId);
      const volume = await driver.kubelet.publish(pod);
      const initial = await assertValidSvidVolume(volume.targetPath, spiffeId);
      const [firstCa, ...others] = bundleCertificates(initial);
      assert.ok(firstCa);
      assert.equal(others.length, 0, 'one CA at first');
      assert.ok(initial.leaf.verify(firstCa.publicKey), 'the SVID is signed by the only CA');
      assert.deepEqual(
        (await testbed.serverBundle()).map((c) => c.fingerprint256),
        [firstCa.fingerprint256],
        "the bundle file is the server's bundle",
      );

      // Prepared at ~30 s (+ up to one 10 s rotator tick).
      const withNext = await waitFor(
        'a second CA in the bundle file',
        async () => {
          const content = await readVolume(volume.targetPath);
          return bundleCertificates(content).length >= 2 ? content : undefined;
        },
        { timeoutMs: 60_000, intervalMs: 250 },
      );
      const nextCa = bundleCertificates(withNext).find((c) => c.fingerprint256 !== firstCa.fingerprint256);
      assert.ok(nextCa);
      assert.ok(
        (await testbed.serverBundle()).some((c) => c.fingerprint256 === nextCa.fingerprint256),
        "the new CA is the server's prepared authority",
      );
      assert.ok(
        bundleCertificates(withNext).some((c) => c.fingerprint256 === firstCa.fingerprint256),
        'the old CA stays while SVIDs signed by it live',
      );
      await assertValidSvidVolume(volume.targetPath, spiffeId);

      // Activated at ~50 s (+ up to one tick); the next SVID comes from the new CA.
      const signedByNext = await waitFor(
        'an SVID signed by the new CA',
        async () => {
          const content = await readVolume(volume.targetPath);
          return content.leaf.verify(nextCa.publicKey) ? content : undefined;
        },
        { timeoutMs: 45_000, intervalMs: 250 },
      );
      assert.ok(bundleCertificates(signedByNext).some((c) => c.fingerprint256 === nextCa.fingerprint256));
      await assertValidSvidVolume(volume.targetPath, spiffeId);

      await driver.kubelet.unpublish(volume);
      await driver.assertNothingLeft(volume);
    });
  });
});
