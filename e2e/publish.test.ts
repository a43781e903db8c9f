/**
 * End to end against a real SPIRE v1.15.3 server and agent: NodePublishVolume
 * for both ways users register workloads, an entry that appears while the
 * publish waits, a publish that finds no entry, unpublish, and two pods that
 * authenticate each other with nothing but their mounted files.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { isMountPoint } from '../src/fs/mountinfo.js';
import { assertValidSvidVolume } from '../test/support/volume-assertions.js';
import { expectGrpcError, startScenario, withDiagnostics, type Scenario } from './scenario.js';
import { sleep } from './spire-testbed.js';

const PUBLISH_TIMEOUT_MS = 10_000;

let s: Scenario | undefined;
before(async () => {
  s = await startScenario({ testbed: { label: 'e2e-pub' }, driver: { publishTimeoutMs: PUBLISH_TIMEOUT_MS } });
});
after(async () => {
  await s?.close();
});

function scenario(): Scenario {
  assert.ok(s, 'the scenario did not start');
  return s;
}

describe('NodePublishVolume against a real SPIRE agent', () => {
  it('spire-controller-manager style entry (k8s:pod-uid only): files verify, SAN is the entry SPIFFE ID; unpublish leaves nothing', async () => {
    const { testbed, driver } = scenario();
    await withDiagnostics(s, async () => {
      const pod = driver.kubelet.createPod({ namespace: 'shop' });
      const spiffeId = `spiffe://example.org/ns/${pod.namespace}/pod/${pod.name}`;
      await testbed.createPodUidEntry(pod, spiffeId);
      const volume = await driver.kubelet.publish(pod);

      await assertValidSvidVolume(volume.targetPath, spiffeId);
      assert.ok(await isMountPoint(volume.targetPath), 'a per-volume tmpfs is mounted at the target path');
      const keyMode = (await fs.stat(path.join(volume.targetPath, 'svid_key.pem'))).mode & 0o777;
      assert.equal(keyMode, 0o600);
      assert.ok((await fs.readdir(driver.volumesDir)).includes(`${volume.volumeId}.json`), 'a metadata record exists');

      await driver.kubelet.unpublish(volume);
      await driver.assertNothingLeft(volume);
    });
  });

  it('hand-made entry (k8s:ns + k8s:sa): every pod of that service account gets the SVID', async () => {
    const { testbed, driver } = scenario();
    await withDiagnostics(s, async () => {
      const first = driver.kubelet.createPod({ namespace: 'payments', serviceAccount: 'api' });
      const second = driver.kubelet.createPod({ namespace: 'payments', serviceAccount: 'api' });
      const spiffeId = 'spiffe://example.org/ns/payments/sa/api';
      await testbed.createNamespaceServiceAccountEntry(first, spiffeId);
      const volumes = await Promise.all([driver.kubelet.publish(first), driver.kubelet.publish(second)]);
      for (const volume of volumes) await assertValidSvidVolume(volume.targetPath, spiffeId);
      for (const volume of volumes) {
        await driver.kubelet.unpublish(volume);
        await driver.assertNothingLeft(volume);
      }
    });
  });

  it('an entry created a few seconds after the publish started: the publish waits and succeeds', async () => {
    const { testbed, driver } = scenario();
    await withDiagnostics(s, async () => {
      const pod = driver.kubelet.createPod();
      const spiffeId = `spiffe://example.org/late/${pod.name}`;
      const started = Date.now();
      const publishing = driver.kubelet.publish(pod);
      const outcome = publishing.then(
        () => undefined,
        (err: unknown) => err,
      );
      await sleep(2500);
      await testbed.createPodUidEntry(pod, spiffeId);
      const volume = await publishing;
      const elapsed = Date.now() - started;
      assert.equal(await outcome, undefined);
      assert.ok(elapsed >= 2500 && elapsed < PUBLISH_TIMEOUT_MS, `published after ${elapsed} ms`);
      await assertValidSvidVolume(volume.targetPath, spiffeId);
      await driver.kubelet.unpublish(volume);
      await driver.assertNothingLeft(volume);
    });
  });

  it('no entry at all: fails after the bounded wait naming the selectors, and leaves nothing behind', async () => {
    const { driver } = scenario();
    await withDiagnostics(s, async () => {
      const pod = driver.kubelet.createPod({ namespace: 'nowhere', serviceAccount: 'nobody' });
      const started = Date.now();
      await assert.rejects(
        driver.kubelet.publish(pod),
        expectGrpcError(
          grpc.status.DEADLINE_EXCEEDED,
          `no SVID after ${PUBLISH_TIMEOUT_MS / 1000}s`,
          'no registration entry matches selectors',
          `k8s:ns:nowhere, k8s:sa:nobody, k8s:pod-uid:${pod.uid}`,
        ),
      );
      const elapsed = Date.now() - started;
      assert.ok(
        elapsed >= PUBLISH_TIMEOUT_MS - 200 && elapsed < PUBLISH_TIMEOUT_MS + 4000,
        `failed after ${elapsed} ms for a ${PUBLISH_TIMEOUT_MS} ms bound`,
      );
      await driver.assertNothingLeft(driver.kubelet.volumeFor(pod));
    });
  });

  it('two pods complete a mutual-TLS handshake with only their mounted files, each checking the other SPIFFE ID', async () => {
    const { testbed, driver } = scenario();
    await withDiagnostics(s, async () => {
      const serverPod = driver.kubelet.createPod({ namespace: 'backend', serviceAccount: 'db' });
      const clientPod = driver.kubelet.createPod({ namespace: 'frontend', serviceAccount: 'web' });
      const serverId = 'spiffe://example.org/ns/backend/sa/db';
      const clientId = `spiffe://example.org/ns/frontend/pod/${clientPod.name}`;
      await testbed.createNamespaceServiceAccountEntry(serverPod, serverId);
      await testbed.createPodUidEntry(clientPod, clientId);
      const [serverVolume, clientVolume] = await Promise.all([driver.kubelet.publish(serverPod), driver.kubelet.publish(clientPod)]);
      const files = async (dir: string): Promise<{ cert: Buffer; key: Buffer; ca: Buffer }> => ({
        cert: await fs.readFile(path.join(dir, 'svid.pem')),
        key: await fs.readFile(path.join(dir, 'svid_key.pem')),
        ca: await fs.readFile(path.join(dir, 'svid_bundle.pem')),
      });
      const serverFiles = await files(serverVolume.targetPath);
      const clientFiles = await files(clientVolume.targetPath);

      let reportServerView: (view: { authorized: boolean; peer: string | undefined; error: string | undefined }) => void = () => undefined;
      const seenByServer = new Promise<{ authorized: boolean; peer: string | undefined; error: string | undefined }>((resolve) => {
        reportServerView = resolve;
      });
      const server = tls.createServer({ ...serverFiles, requestCert: true, rejectUnauthorized: true }, (socket) => {
        const peer = socket.getPeerCertificate().subjectaltname;
        reportServerView({ authorized: socket.authorized, peer, error: socket.authorizationError?.message });
        socket.end(peer === `URI:${clientId}` ? 'hello client' : 'wrong peer');
      });
      server.on('tlsClientError', (err) => reportServerView({ authorized: false, peer: undefined, error: err.message }));
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const address = server.address();
      assert.ok(typeof address === 'object' && address);
      const port = address.port;

      const seenByClient = await new Promise<{ authorized: boolean; peer: string | undefined; reply: string }>((resolve, reject) => {
        const socket = tls.connect({
          host: '127.0.0.1',
          port,
          ...clientFiles,
          // SPIFFE authentication: the peer's URI SAN, not a host name.
          checkServerIdentity: (_host, cert) =>
            cert.subjectaltname === `URI:${serverId}` ? undefined : new Error(`server presented ${cert.subjectaltname}, expected URI:${serverId}`),
        });
        let reply = '';
        socket.on('secureConnect', () => {
          const peer = socket.getPeerCertificate().subjectaltname;
          socket.on('data', (chunk: Buffer) => (reply += chunk.toString()));
          socket.on('end', () => resolve({ authorized: socket.authorized, peer, reply }));
        });
        socket.on('error', reject);
      });
      const serverView = await seenByServer;
      server.close();
      assert.deepEqual(
        serverView,
        { authorized: true, peer: `URI:${clientId}`, error: undefined },
        'the server verified the client against its bundle file',
      );
      assert.deepEqual(seenByClient, { authorized: true, peer: `URI:${serverId}`, reply: 'hello client' }, 'the client verified the server');

      for (const volume of [serverVolume, clientVolume]) await driver.kubelet.unpublish(volume);
    });
  });
});
