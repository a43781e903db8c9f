/**
 * JWT-SVIDs (csi.spire.io/jwt-audiences) against the development agent: the
 * tokens and the JWT bundle are in the volume when NodePublishVolume returns,
 * in the same ..data swap as the X.509 files; each token verifies with a JOSE
 * library against the written JWKS and carries the requested `aud`, the
 * volume's SPIFFE ID as `sub`, and a future `exp`; tokens are refreshed before
 * they expire, on one timer per volume that unpublish stops; a JWT bundle
 * change rewrites only volumes that write JWT files; a restart fetches again.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { Harness, eventually, sleep } from '../support/driver-harness.js';
import { isServiceError } from '../support/kubelet-simulator.js';
import { assertValidJwtSvid, readJwtBundles } from '../support/jwt-assertions.js';
import { assertValidSvidVolume, readVolume } from '../support/volume-assertions.js';

const AUDIENCES = 'csi.spire.io/jwt-audiences';

async function modeOf(file: string): Promise<number> {
  return (await fs.stat(file)).mode & 0o777;
}

describe('JWT-SVIDs', () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start();
  });
  after(async () => {
    await h.close();
  });

  it('publish writes every token and the JWT bundle with the X.509 files, in one version; the tokens verify against the bundle', async () => {
    const pod = h.kubelet.createPod();
    const spiffeId = 'spiffe://example.org/jwt/app';
    await h.agent.addEntry({ spiffeId, selectors: [`k8s:pod-uid:${pod.uid}`] });
    const fetchesBefore = h.agent.receivedJwtFetches().length;
    const volume = await h.kubelet.publish(pod, { attributes: { [AUDIENCES]: 'vault; aws.token=sts.amazonaws.com,api://AzureADTokenExchange' } });

    // Files appear before the pod starts: everything is there when publish returns.
    await assertValidSvidVolume(volume.targetPath, spiffeId);
    const vault = await assertValidJwtSvid(volume.targetPath, { tokenFile: 'jwt_svid.token', spiffeId, audiences: ['vault'] });
    const aws = await assertValidJwtSvid(volume.targetPath, {
      tokenFile: 'aws.token',
      spiffeId,
      audiences: ['sts.amazonaws.com', 'api://AzureADTokenExchange'],
    });
    assert.notEqual(vault.token, aws.token);
    assert.deepEqual(Object.keys(await readJwtBundles(volume.targetPath)), ['example.org'], 'keyed by the bare trust domain name, as spiffe-helper');

    // One swap: every visible name links into the same version directory.
    for (const name of ['svid.pem', 'svid_key.pem', 'svid_bundle.pem', 'jwt_svid.token', 'aws.token', 'bundle.json']) {
      assert.equal(await fs.readlink(path.join(volume.targetPath, name)), `..data/${name}`);
    }
    const version = await fs.readlink(path.join(volume.targetPath, '..data'));
    assert.deepEqual((await fs.readdir(path.join(volume.targetPath, version))).sort(), [
      'aws.token',
      'bundle.json',
      'jwt_svid.token',
      'svid.pem',
      'svid_bundle.pem',
      'svid_key.pem',
    ]);
    // Tokens are credentials: the key's mode. The JWKS is public keys: the bundle's.
    assert.equal(await modeOf(path.join(volume.targetPath, version, 'jwt_svid.token')), 0o600);
    assert.equal(await modeOf(path.join(volume.targetPath, version, 'aws.token')), 0o600);
    assert.equal(await modeOf(path.join(volume.targetPath, version, 'bundle.json')), 0o644);

    // The same selectors as the X.509 stream, one call per token; nothing from the attributes but the audiences.
    const fetches = h.agent.receivedJwtFetches().slice(fetchesBefore);
    assert.deepEqual(fetches.map((f) => f.audience).sort(), [['sts.amazonaws.com', 'api://AzureADTokenExchange'], ['vault']]);
    const x509Selectors = h.agent.receivedSelectorSets().at(-1);
    for (const fetch of fetches) assert.deepEqual(fetch.selectors, x509Selectors);
    assert.equal(h.agent.openJwtBundleStreams(), 1, 'one node-wide JWT bundle stream');
    await h.kubelet.unpublish(volume);
  });

  it('with several entries, the token is for the SPIFFE ID the X.509 side picked (csi.spire.io/spiffe-id)', async () => {
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/jwt/first', selectors: [`k8s:pod-uid:${pod.uid}`] });
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/jwt/second', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const spiffeId = 'spiffe://example.org/jwt/second';
    const volume = await h.kubelet.publish(pod, { attributes: { [AUDIENCES]: 'vault', 'csi.spire.io/spiffe-id': spiffeId } });
    await assertValidSvidVolume(volume.targetPath, spiffeId);
    await assertValidJwtSvid(volume.targetPath, { tokenFile: 'jwt_svid.token', spiffeId, audiences: ['vault'] });
    await h.kubelet.unpublish(volume);
  });

  it('with an fsGroup the tokens are 0640 and group-owned, like the key; a republish with other audiences is refused', async () => {
    const pod = h.kubelet.createPod();
    const spiffeId = 'spiffe://example.org/jwt/group';
    await h.agent.addEntry({ spiffeId, selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod, { attributes: { [AUDIENCES]: 'vault' }, fsGroup: 4321 });
    const version = await fs.readlink(path.join(volume.targetPath, '..data'));
    const token = await fs.stat(path.join(volume.targetPath, version, 'jwt_svid.token'));
    assert.equal(token.mode & 0o777, 0o640);
    assert.equal(token.gid, 4321);
    assert.equal(await modeOf(path.join(volume.targetPath, version, 'svid_key.pem')), 0o640);
    await assertValidJwtSvid(volume.targetPath, { tokenFile: 'jwt_svid.token', spiffeId, audiences: ['vault'] });

    await assert.rejects(h.kubelet.publish(pod, { attributes: { [AUDIENCES]: 'other' }, fsGroup: 4321 }), (err: unknown) => {
      assert.ok(isServiceError(err));
      assert.match(err.details, /jwt-audiences was jwt_svid\.token=vault \(bundle bundle\.json\), now jwt_svid\.token=other/);
      return true;
    });
    await h.kubelet.unpublish(volume);
  });

  it('FetchJWTSVIDs failing: the publish times out naming it, the X.509 files alone are never written, and the fetch is retried until it works', async () => {
    const pod = h.kubelet.createPod();
    const spiffeId = 'spiffe://example.org/jwt/failing';
    await h.agent.addEntry({ spiffeId, selectors: [`k8s:pod-uid:${pod.uid}`] });
    h.agent.failJwtFetches({ code: grpc.status.UNAVAILABLE, details: 'could not fetch JWT-SVID: signing is down' });
    try {
      await assert.rejects(h.kubelet.publish(pod, { attributes: { [AUDIENCES]: 'vault' }, timeoutMs: 30_000 }), (err: unknown) => {
        assert.ok(isServiceError(err));
        assert.equal(err.code, grpc.status.DEADLINE_EXCEEDED);
        assert.match(err.details, /has not issued the JWT-SVID for audience vault yet/);
        assert.match(
          err.details,
          /fetching the JWT-SVIDs from the SPIRE agent failed \(\d+ failed attempts?, last: .*could not fetch JWT-SVID: signing is down\)/,
        );
        return true;
      });
      const volume = h.kubelet.volumeFor(pod);
      await assert.rejects(fs.stat(path.join(volume.targetPath, 'svid.pem')), 'all files or none');

      // Kubelet retries; the agent recovers while the retry waits: the fetch is retried with backoff and the publish succeeds.
      const retry = h.kubelet.publish(pod, { attributes: { [AUDIENCES]: 'vault' }, timeoutMs: 30_000 });
      await sleep(1500);
      h.agent.failJwtFetches(undefined);
      await retry;
      await assertValidJwtSvid(volume.targetPath, { tokenFile: 'jwt_svid.token', spiffeId, audiences: ['vault'] });
      await h.kubelet.unpublish(volume);
    } finally {
      h.agent.failJwtFetches(undefined);
    }
  });

  it('a bad jwt-audiences is INVALID_ARGUMENT naming what to change, before the agent is asked', async () => {
    const pod = h.kubelet.createPod();
    const fetchesBefore = h.agent.receivedJwtFetches().length;
    await assert.rejects(h.kubelet.publish(pod, { attributes: { [AUDIENCES]: 'vault,,aws' } }), (err: unknown) => {
      assert.ok(isServiceError(err));
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      assert.match(err.details, /csi\.spire\.io\/jwt-audiences/);
      assert.match(err.details, /empty audience/);
      return true;
    });
    assert.equal(h.agent.receivedJwtFetches().length, fetchesBefore);
  });

  it('no entry for the pod: the publish fails with the reason and the remedy, and the JWT retries stop with the volume', async () => {
    const pod = h.kubelet.createPod();
    await assert.rejects(h.kubelet.publish(pod, { attributes: { [AUDIENCES]: 'vault' }, timeoutMs: 30_000 }), (err: unknown) => {
      assert.ok(isServiceError(err));
      assert.match(err.details, /no registration entry matches/);
      return true;
    });
    const fetches = h.agent.receivedJwtFetches().length;
    await sleep(2500);
    assert.equal(h.agent.receivedJwtFetches().length, fetches, 'no retry timer outlives the failed publish');
  });

  it('a JWT key rotation rewrites the JWT bundle of JWT volumes only; X.509-only volumes are not touched', async () => {
    const jwtPod = h.kubelet.createPod();
    const plainPod = h.kubelet.createPod();
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/jwt/rot', selectors: [`k8s:pod-uid:${jwtPod.uid}`] });
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/jwt/plain', selectors: [`k8s:pod-uid:${plainPod.uid}`] });
    const jwtVolume = await h.kubelet.publish(jwtPod, { attributes: { [AUDIENCES]: 'vault' } });
    const plainVolume = await h.kubelet.publish(plainPod);
    await sleep(200);
    const plainVersion = (await readVolume(plainVolume.targetPath)).version;
    const keysBefore = (await readJwtBundles(jwtVolume.targetPath))['example.org']?.keys.length;

    h.agent.rotateJwtKey();
    await eventually(
      'the new key in the JWT bundle file',
      async () => (await readJwtBundles(jwtVolume.targetPath))['example.org']?.keys.length === (keysBefore ?? 0) + 1,
    );
    await assertValidJwtSvid(jwtVolume.targetPath, { tokenFile: 'jwt_svid.token', spiffeId: 'spiffe://example.org/jwt/rot', audiences: ['vault'] });
    await sleep(200);
    assert.equal((await readVolume(plainVolume.targetPath)).version, plainVersion, 'the X.509-only volume was not rewritten');
    await h.kubelet.unpublish(jwtVolume);
    await h.kubelet.unpublish(plainVolume);
  });
});

describe('JWT-SVID refresh', () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start({ agent: { jwtSvidTtlSeconds: 4 } });
  });
  after(async () => {
    await h.close();
  });

  it('a new token before the old one expires, on one timer: few fetches, none after unpublish', async () => {
    const pod = h.kubelet.createPod();
    const spiffeId = 'spiffe://example.org/jwt/short';
    await h.agent.addEntry({ spiffeId, selectors: [`k8s:pod-uid:${pod.uid}`] });
    const fetchesBefore = h.agent.receivedJwtFetches().length;
    const volume = await h.kubelet.publish(pod, { attributes: { [AUDIENCES]: 'vault' } });
    const first = await assertValidJwtSvid(volume.targetPath, { tokenFile: 'jwt_svid.token', spiffeId, audiences: ['vault'] });
    const firstExp = first.payload.exp ?? 0;

    // Replaced while the first still has time left (refresh at 50–60 % of the remaining lifetime).
    const second = await eventually(
      'a refreshed token',
      async () => {
        const now = await assertValidJwtSvid(volume.targetPath, { tokenFile: 'jwt_svid.token', spiffeId, audiences: ['vault'] });
        return now.token !== first.token ? now : undefined;
      },
      6000,
    );
    assert.ok(Date.now() < firstExp * 1000, 'the new token came before the old one expired');
    assert.ok((second.payload.exp ?? 0) > firstExp);

    // Over 6 s of a 4 s token: every fetch lands past half of the remaining life (at least ~1 s apart), so a handful.
    await sleep(6000);
    const fetches = h.agent.receivedJwtFetches().length - fetchesBefore;
    assert.ok(fetches >= 3 && fetches <= 10, `${fetches} FetchJWTSVIDs calls in about 8 s of 4 s tokens`);
    await assertValidJwtSvid(volume.targetPath, { tokenFile: 'jwt_svid.token', spiffeId, audiences: ['vault'] });

    await h.kubelet.unpublish(volume);
    const afterUnpublish = h.agent.receivedJwtFetches().length;
    await sleep(3000);
    assert.equal(h.agent.receivedJwtFetches().length, afterUnpublish, 'unpublish stopped the refresh timer');
  });

  it('while no current JWT-SVID can be had, the X.509 files still rotate and the token file stays as it was', async () => {
    const pod = h.kubelet.createPod();
    const spiffeId = 'spiffe://example.org/jwt/stale';
    const entryId = await h.agent.addEntry({ spiffeId, selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod, { attributes: { [AUDIENCES]: 'vault' } });
    h.agent.failJwtFetches({ code: grpc.status.UNAVAILABLE, details: 'could not fetch JWT-SVID: down' });
    try {
      const token = await eventually('the held token to expire', async () => {
        const text = await fs.readFile(path.join(volume.targetPath, 'jwt_svid.token'), 'utf8');
        const exp = (JSON.parse(Buffer.from(text.split('.')[1] ?? '', 'base64url').toString()) as { exp: number }).exp;
        return Date.now() > exp * 1000 ? text : undefined;
      });
      const serial = (await readVolume(volume.targetPath)).leaf.serialNumber;
      await h.agent.rotateSvids(entryId);
      await eventually('the rotated X.509-SVID', async () => (await readVolume(volume.targetPath)).leaf.serialNumber !== serial);
      await assertValidSvidVolume(volume.targetPath, spiffeId);
      assert.equal(await fs.readFile(path.join(volume.targetPath, 'jwt_svid.token'), 'utf8'), token, 'the last token stays in the new version');
      assert.ok((await readJwtBundles(volume.targetPath))['example.org'], 'and so does the JWT bundle');
    } finally {
      h.agent.failJwtFetches(undefined);
    }
    await eventually(
      'a current token once the agent signs again',
      async () =>
        (await assertValidJwtSvid(volume.targetPath, { tokenFile: 'jwt_svid.token', spiffeId, audiences: ['vault'] }).catch(() => undefined)) ??
        false,
      10_000,
    );
    await h.kubelet.unpublish(volume);
  });

  it('after a driver restart the resumed volume fetches again and keeps refreshing', async () => {
    const pod = h.kubelet.createPod();
    const spiffeId = 'spiffe://example.org/jwt/resumed';
    await h.agent.addEntry({ spiffeId, selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod, { attributes: { [AUDIENCES]: 'vault' } });
    const before = await assertValidJwtSvid(volume.targetPath, { tokenFile: 'jwt_svid.token', spiffeId, audiences: ['vault'] });
    await h.stopDriver();
    const fetchesWhileStopped = h.agent.receivedJwtFetches().length;
    await sleep(1000);
    assert.equal(h.agent.receivedJwtFetches().length, fetchesWhileStopped, 'a stopped driver fetches nothing');
    await h.startDriver();
    await eventually('a fetch by the restarted driver', () => h.agent.receivedJwtFetches().length > fetchesWhileStopped);
    await eventually(
      'a token newer than before the restart',
      async () =>
        (await assertValidJwtSvid(volume.targetPath, { tokenFile: 'jwt_svid.token', spiffeId, audiences: ['vault'] })).token !== before.token,
      8000,
    );
    await h.kubelet.unpublish(volume);
  });
});

/** Ref'd timers of this process (process.getActiveResourcesInfo), where the in-process driver's refresh timers show. */
function activeTimeouts(): number {
  return process.getActiveResourcesInfo().filter((type) => type === 'Timeout').length;
}

describe('JWT volumes leave nothing behind', () => {
  let h: Harness;
  before(async () => {
    h = await Harness.start({ agent: { jwtSvidTtlSeconds: 60 } });
  });
  after(async () => {
    await h.close();
  });

  it('20 publish/unpublish cycles: no refresh timer, JWT bundle listener or socket-ready listener stays; no fetch afterwards', async () => {
    assert.ok(h.driver, 'the in-process driver runs');
    const internals = h.driver.volumes as unknown as {
      deps: { jwtBundles: { listeners: Set<unknown> }; connection: { listenerCount(event: string): number } };
    };
    assert.ok(internals.deps.jwtBundles.listeners instanceof Set, 'JwtBundleWatcher.listeners is no longer a Set: update this test');
    const spiffeId = 'spiffe://example.org/jwt/churn';
    await h.agent.addEntry({ spiffeId, selectors: ['k8s:ns:jwt-churn'] });
    // Warm-up: the node-wide JWT bundle stream opens with the first JWT volume and stays.
    const warm = h.kubelet.createPod({ namespace: 'jwt-churn' });
    await h.kubelet.unpublish(await h.kubelet.publish(warm, { attributes: { [AUDIENCES]: 'vault' } }));
    await sleep(300);
    const timeoutsBefore = activeTimeouts();
    const socketReadyBefore = internals.deps.connection.listenerCount('socket-ready');

    for (let i = 0; i < 20; i++) {
      const pod = h.kubelet.createPod({ namespace: 'jwt-churn' });
      const volume = await h.kubelet.publish(pod, { attributes: { [AUDIENCES]: `vault;aws.token=aws${i}` } });
      if (i % 5 === 0) await assertValidJwtSvid(volume.targetPath, { tokenFile: 'aws.token', spiffeId, audiences: [`aws${i}`] });
      await h.kubelet.unpublish(volume);
    }

    assert.equal(internals.deps.jwtBundles.listeners.size, 0, 'JWT bundle listeners');
    assert.equal(internals.deps.connection.listenerCount('socket-ready'), socketReadyBefore, 'socket-ready listeners');
    assert.equal(h.agent.openJwtBundleStreams(), 1, 'the one JWT bundle stream stays open');
    await eventually('the timers to be back at the baseline', () => activeTimeouts() <= timeoutsBefore, 5000);
    const fetches = h.agent.receivedJwtFetches().length;
    await sleep(1500);
    assert.equal(h.agent.receivedJwtFetches().length, fetches, 'no fetch after every JWT volume is gone');
  });
});
