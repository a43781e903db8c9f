/**
 * docs/design.md invariant 3: NodePublishVolume waits a bounded time, and when it
 * fails it leaves nothing behind and answers a retryable code whose message
 * names the cause.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { Harness, eventually, sleep } from '../support/driver-harness.js';
import { isServiceError, type Pod, type PublishedVolume } from '../support/kubelet-simulator.js';
import { mintSvid } from '../support/certs.js';
import { assertValidSvidVolume, pathExists, readVolume } from '../support/volume-assertions.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

async function assertNothingLeft(harness: Harness, volume: PublishedVolume): Promise<void> {
  assert.equal(await pathExists(volume.targetPath), false, 'target path removed');
  assert.deepEqual(await fs.readdir(path.join(harness.config.stateDir, 'volumes')), [], 'no metadata left');
  assert.equal(harness.driver?.volumes.volumeCount ?? 0, 0);
}

function expectCode(code: grpc.status, ...messageParts: (string | RegExp)[]): (err: unknown) => boolean {
  return (err) => {
    assert.ok(isServiceError(err), `expected a gRPC error, got ${String(err)}`);
    assert.equal(grpc.status[err.code], grpc.status[code], err.details);
    for (const part of messageParts)
      assert.match(err.details, typeof part === 'string' ? new RegExp(part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) : part);
    return true;
  };
}

describe('NodePublishVolume failures', () => {
  it('no matching entry: DEADLINE_EXCEEDED naming the selectors, after the bounded wait, nothing left behind', async () => {
    h = await Harness.start({ publishTimeoutMs: 1500 });
    const pod: Pod = h.kubelet.createPod({ namespace: 'ns1', serviceAccount: 'sa1' });
    const started = Date.now();
    await assert.rejects(
      h.kubelet.publish(pod),
      expectCode(
        grpc.status.DEADLINE_EXCEEDED,
        'no SVID after 2s',
        `no registration entry matches selectors [k8s:ns:ns1, k8s:sa:sa1, k8s:pod-uid:${pod.uid}, k8s:pod-name:${pod.name}, k8s:node-name:node-a] yet`,
        'ClusterSPIFFEID',
      ),
    );
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 1400 && elapsed < 5000, `waited ${elapsed} ms for a 1.5 s bound`);
    await assertNothingLeft(h, h.kubelet.volumeFor(pod));
  });

  it('agent socket unreachable: UNAVAILABLE naming the socket path', async () => {
    h = await Harness.start({ publishTimeoutMs: 1500 });
    await h.agent.stop();
    const pod = h.kubelet.createPod();
    await assert.rejects(
      h.kubelet.publish(pod),
      expectCode(grpc.status.UNAVAILABLE, `SPIRE agent admin socket is unreachable at ${h.config.agentAdminSocketPath}`, 'sockets.admin.enabled'),
    );
    await assertNothingLeft(h, h.kubelet.volumeFor(pod));
    // Probe reports the driver, not the agent: livenessprobe must not restart us for an absent agent.
    assert.deepEqual(await h.kubelet.identityCall('Probe'), { ready: { value: true } });
  });

  it('driver not an authorized delegate: fails fast with UNAVAILABLE and the authorized_delegates remedy', async () => {
    h = await Harness.start({ publishTimeoutMs: 8000, agent: { callerAuthorization: 'not-delegate' } });
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/x', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const started = Date.now();
    await assert.rejects(
      h.kubelet.publish(pod),
      expectCode(grpc.status.UNAVAILABLE, 'PERMISSION_DENIED', 'caller not configured as an authorized delegate', 'authorized_delegates'),
    );
    assert.ok(Date.now() - started < 4000, 'did not wait for the whole publish timeout');
    await assertNothingLeft(h, h.kubelet.volumeFor(pod));
  });

  it('driver has no registration entry: the message says to register it', async () => {
    h = await Harness.start({ publishTimeoutMs: 8000, agent: { callerAuthorization: 'no-entry' } });
    const pod = h.kubelet.createPod();
    await assert.rejects(h.kubelet.publish(pod), expectCode(grpc.status.UNAVAILABLE, 'no identity issued', 'has no registration entry'));
    await assertNothingLeft(h, h.kubelet.volumeFor(pod));
  });

  it('an invalid SVID is never written: the publish times out naming the reason', async () => {
    h = await Harness.start({ publishTimeoutMs: 1500 });
    const pod = h.kubelet.createPod();
    const entryId = await h.agent.addEntry({ spiffeId: 'spiffe://example.org/bad', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const other = await mintSvid({ ca: h.agent.activeCa(), spiffeId: 'spiffe://example.org/bad' });
    const current = h.agent.currentSvid(entryId);
    h.agent.replaceSvid(entryId, { certChain: current.certChain, keyPkcs8Der: other.keyPkcs8Der });
    await assert.rejects(
      h.kubelet.publish(pod),
      expectCode(grpc.status.DEADLINE_EXCEEDED, 'was rejected', 'the private key does not match the leaf certificate'),
    );
    await assertNothingLeft(h, h.kubelet.volumeFor(pod));
  });

  it('waits for a delayed first response (agent still signing) and for an entry created after the publish started', async () => {
    h = await Harness.start({ publishTimeoutMs: 8000, agent: { firstResponseDelayMs: 700 } });
    const early = h.kubelet.createPod();
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/early', selectors: [`k8s:pod-uid:${early.uid}`] });
    const started = Date.now();
    const earlyVolume = await h.kubelet.publish(early);
    assert.ok(Date.now() - started >= 650, 'returned only after the delayed first response');
    await assertValidSvidVolume(earlyVolume.targetPath, 'spiffe://example.org/early');

    const late = h.kubelet.createPod();
    const publishing = h.kubelet.publish(late);
    await sleep(1200);
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/late', selectors: [`k8s:pod-uid:${late.uid}`] });
    const lateVolume = await publishing;
    await assertValidSvidVolume(lateVolume.targetPath, 'spiffe://example.org/late');
  });

  it('an unpublish cancels every publish of the volume, also one still queued behind another', async () => {
    h = await Harness.start({ publishTimeoutMs: 8000 });
    const pod = h.kubelet.createPod();
    const volume = h.kubelet.volumeFor(pod);
    const first = h.kubelet.publish(pod).then(
      () => undefined,
      (err: unknown) => err,
    );
    await eventually('the first publish to reach the agent', () => h?.agent.receivedSelectorSets().length === 1);
    const queued = h.kubelet.publish(pod).then(
      () => undefined,
      (err: unknown) => err,
    );
    await sleep(200);
    const started = Date.now();
    await h.kubelet.unpublish(volume);
    for (const outcome of [await first, await queued]) {
      assert.ok(isServiceError(outcome), 'both publishes failed');
      assert.equal(outcome.code, grpc.status.ABORTED, outcome.details);
    }
    assert.ok(Date.now() - started < 3000, 'the queued publish did not wait out its timeout');
    assert.equal(h.agent.receivedSelectorSets().length, 1, 'the queued publish never asked the agent');
    await assertNothingLeft(h, volume);
  });

  it('once the operator authorizes the driver, the next publish succeeds at once (no stale failure, no backoff)', async () => {
    h = await Harness.start({ publishTimeoutMs: 8000, agent: { callerAuthorization: 'not-delegate' } });
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/fixed', selectors: [`k8s:pod-uid:${pod.uid}`] });
    await assert.rejects(h.kubelet.publish(pod), expectCode(grpc.status.UNAVAILABLE, 'authorized_delegates'));
    await sleep(2500); // the shared bundle stream is now backing off
    h.agent.setCallerAuthorization('authorized');
    const started = Date.now();
    const volume = await h.kubelet.publish(pod);
    assert.ok(Date.now() - started < 2000, `published ${Date.now() - started} ms after the fix`);
    await assertValidSvidVolume(volume.targetPath, 'spiffe://example.org/fixed');
  });

  it('an unpublish while the publish still waits cancels it and leaves nothing', async () => {
    h = await Harness.start({ publishTimeoutMs: 8000 });
    const pod = h.kubelet.createPod();
    const volume = h.kubelet.volumeFor(pod);
    const publishing = h.kubelet.publish(pod);
    const outcome = publishing.then(
      () => undefined,
      (err: unknown) => err,
    );
    await eventually('the publish to reach the agent', () => h?.agent.receivedSelectorSets().length === 1);
    await h.kubelet.unpublish(volume);
    await assert.rejects(
      outcome.then((err) => Promise.reject(err instanceof Error ? err : new Error(String(err)))),
      expectCode(grpc.status.ABORTED, 'unpublished while it was being published'),
    );
    await assertNothingLeft(h, volume);
  });
});

describe('a live volume keeps its files when the agent sends nothing usable', () => {
  it('keeps the last files on an empty SVID list (entry deleted) and on an invalid SVID, logs and counts both', async () => {
    h = await Harness.start();
    const pod = h.kubelet.createPod();
    const entryId = await h.agent.addEntry({ spiffeId: 'spiffe://example.org/keep', selectors: [`k8s:pod-uid:${pod.uid}`] });
    const volume = await h.kubelet.publish(pod);
    const original = await readVolume(volume.targetPath);

    // An SVID for another SPIFFE ID than the entry's: rejected.
    const wrongSan = await mintSvid({
      ca: h.agent.activeCa(),
      spiffeId: 'spiffe://example.org/keep',
      uriSans: ['spiffe://example.org/keep', 'spiffe://example.org/admin'],
    });
    h.agent.replaceSvid(entryId, { certChain: [wrongSan.certDer], keyPkcs8Der: wrongSan.keyPkcs8Der });
    await eventually('the rejection to be logged', () => h?.logs.text().includes('rejected an SVID from the SPIRE agent'));
    assert.equal((await readVolume(volume.targetPath)).version, original.version);
    const rejected = await h.metrics.svidUpdates.get();
    assert.equal(rejected.values.find((v) => v.labels['outcome'] === 'rejected')?.value, 1);

    h.agent.removeEntry(entryId);
    await eventually('the empty response to be logged', () =>
      h?.logs.text().includes('the SPIRE agent sent no SVID for this pod (entry deleted?); keeping the last files'),
    );
    const after = await readVolume(volume.targetPath);
    assert.equal(after.version, original.version);
    assert.equal(after.certPem, original.certPem);
    assert.equal(h.logs.text().includes(wrongSan.keyPkcs8Der.toString('base64').slice(0, 40)), false, 'no key material in the logs');
    await h.kubelet.unpublish(volume);
  });
});
