/**
 * Many streams on one connection: the driver multiplexes every volume's
 * SubscribeToX509SVIDs stream (plus the node-wide bundle stream) over one
 * HTTP/2 connection to the agent's admin socket. A server advertising
 * SETTINGS_MAX_CONCURRENT_STREAMS = 100 (a common HTTP/2 default) would make
 * grpc-js queue the 101st stream until another ends — and volume streams
 * never end. SPIRE v1.15.3's admin server sets no grpc.MaxConcurrentStreams,
 * so grpc-go's default (math.MaxUint32) applies; this test proves it with 150
 * live volumes, each with its own entry, and checks every stream still
 * receives pushes by waiting for all 150 to rotate.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Pod, PublishedVolume } from '../test/support/kubelet-simulator.js';
import { assertValidSvidVolume, readVolume } from '../test/support/volume-assertions.js';
import { startScenario, withDiagnostics, type Scenario } from './scenario.js';
import { waitFor } from './spire-testbed.js';

const VOLUMES = 150;
/** Rotates about every 10 s (lifetime 30 + 10 s backdate, re-signed at half). */
const SVID_TTL_SECONDS = 30;

let s: Scenario | undefined;
before(async () => {
  s = await startScenario({ testbed: { label: 'e2e-many' }, driver: { publishTimeoutMs: 60_000, logLevel: 'info' } });
});
after(async () => {
  await s?.close();
});

describe(`${VOLUMES} volumes on one agent connection`, () => {
  it(`publishes ${VOLUMES} volumes at once, all get verified files, and all keep receiving rotations`, async (t) => {
    assert.ok(s);
    const { testbed, driver } = s;
    await withDiagnostics(s, async () => {
      const pods: Pod[] = Array.from({ length: VOLUMES }, (_, i) => driver.kubelet.createPod({ name: `many-${i}` }));
      const idOf = (pod: Pod): string => `spiffe://example.org/many/${pod.name}`;
      await testbed.createEntries(
        pods.map((pod) => ({ spiffeId: idOf(pod), selectors: [`k8s:pod-uid:${pod.uid}`], x509SvidTtlSeconds: SVID_TTL_SECONDS })),
      );

      const started = Date.now();
      const volumes: PublishedVolume[] = await Promise.all(pods.map((pod) => driver.kubelet.publish(pod)));
      const publishMs = Date.now() - started;
      const first = await Promise.all(pods.map((pod, i) => assertValidSvidVolume((volumes[i] as PublishedVolume).targetPath, idOf(pod))));

      // Every stream is live: each volume receives its next rotation.
      const rotationStarted = Date.now();
      await waitFor(
        `all ${VOLUMES} volumes to rotate`,
        async () => {
          const now = await Promise.all(volumes.map((v) => readVolume(v.targetPath)));
          const pending = now.filter((content, i) => content.leaf.serialNumber === first[i]?.leaf.serialNumber).length;
          return pending === 0;
        },
        { timeoutMs: 45_000, intervalMs: 1000 },
      );
      const rotationMs = Date.now() - rotationStarted;
      for (const [i, pod] of pods.entries()) await assertValidSvidVolume((volumes[i] as PublishedVolume).targetPath, idOf(pod));
      t.diagnostic(`${VOLUMES} concurrent publishes took ${publishMs} ms; every volume rotated within ${rotationMs} ms`);

      await Promise.all(volumes.map((v) => driver.kubelet.unpublish(v)));
      for (const v of volumes) await driver.assertNothingLeft(v);
    });
  });
});
