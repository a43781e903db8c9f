/**
 * JWT-SVIDs end to end against a real SPIRE v1.15.3 server and agent: with
 * csi.spire.io/jwt-audiences the volume holds the tokens (FetchJWTSVIDs) and
 * the JWT bundle (SubscribeToJWTBundles) in spiffe-helper's format when
 * NodePublishVolume returns; each token verifies with a JOSE library (jose)
 * against that bundle, with the requested `aud`, the entry's SPIFFE ID as
 * `sub` and a future `exp`; and a new token replaces it before it expires.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { assertValidJwtSvid, readJwtBundles } from '../test/support/jwt-assertions.js';
import { assertValidSvidVolume } from '../test/support/volume-assertions.js';
import { startScenario, withDiagnostics, type Scenario } from './scenario.js';
import { sleep } from './spire-testbed.js';

/** Short, so the test sees a refresh; the agent renews its cached token at half of it. */
const JWT_TTL_SECONDS = 30;

let s: Scenario | undefined;
before(async () => {
  s = await startScenario({ testbed: { label: 'e2e-jwt', defaultJwtSvidTtl: `${JWT_TTL_SECONDS}s` }, driver: { publishTimeoutMs: 20_000 } });
});
after(async () => {
  await s?.close();
});

function scenario(): Scenario {
  assert.ok(s, 'the scenario did not start');
  return s;
}

describe('JWT-SVIDs from a real SPIRE agent', () => {
  it('tokens and JWT bundle are in the volume at publish; they verify with jose; a fresh token arrives before expiry', async () => {
    const { testbed, driver } = scenario();
    await withDiagnostics(s, async () => {
      const pod = driver.kubelet.createPod({ namespace: 'jwt' });
      const spiffeId = `spiffe://example.org/ns/${pod.namespace}/pod/${pod.name}`;
      await testbed.createPodUidEntry(pod, spiffeId);
      const volume = await driver.kubelet.publish(pod, {
        attributes: { 'csi.spire.io/jwt-audiences': 'vault; aws.token=sts.amazonaws.com,https://api.example.com' },
      });

      await assertValidSvidVolume(volume.targetPath, spiffeId);
      const first = await assertValidJwtSvid(volume.targetPath, { tokenFile: 'jwt_svid.token', spiffeId, audiences: ['vault'] });
      await assertValidJwtSvid(volume.targetPath, { tokenFile: 'aws.token', spiffeId, audiences: ['sts.amazonaws.com', 'https://api.example.com'] });
      assert.deepEqual(Object.keys(await readJwtBundles(volume.targetPath)), ['example.org'], "spiffe-helper's keys: the bare trust domain name");
      const lifetime = (first.payload.exp ?? 0) - (first.payload.iat ?? 0);
      assert.ok(lifetime > 0 && lifetime <= JWT_TTL_SECONDS, `the server's default_jwt_svid_ttl applies (${lifetime} s)`);

      // Refreshed at 50-60 % of the remaining lifetime: well before exp.
      const expiresAtMs = (first.payload.exp ?? 0) * 1000;
      for (;;) {
        const now = await assertValidJwtSvid(volume.targetPath, { tokenFile: 'jwt_svid.token', spiffeId, audiences: ['vault'] });
        if (now.token !== first.token) {
          assert.ok((now.payload.exp ?? 0) > (first.payload.exp ?? 0), 'the new token lives longer');
          break;
        }
        assert.ok(Date.now() < expiresAtMs, 'the token was replaced before it expired');
        await sleep(500);
      }

      await driver.kubelet.unpublish(volume);
      await driver.assertNothingLeft(volume);
    });
  });
});
