/**
 * The two ways operators get the delegate wrong, against a real SPIRE agent:
 * the driver has no registration entry, or its SPIFFE ID is not in the
 * agent's authorized_delegates. Either way the publish fails fast (the agent
 * answers PERMISSION_DENIED at once; waiting cannot help) with the remedy in
 * the message, and leaves nothing behind.
 */
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { expectGrpcError, startScenario, withDiagnostics, type Scenario } from './scenario.js';

const PUBLISH_TIMEOUT_MS = 20_000;
/** Far below the publish timeout: the failure is a configuration error, reported at once. */
const FAST_FAILURE_MS = 5_000;

let s: Scenario | undefined;
afterEach(async () => {
  await s?.close();
  s = undefined;
});

const CASES = [
  {
    name: 'no registration entry for the driver: fails fast, says to register it',
    label: 'e2e-noent',
    delegate: 'no-entry',
    message: ['PERMISSION_DENIED', 'no identity issued', 'has no registration entry', 'authorized_delegates'],
  },
  {
    name: 'registered but not in authorized_delegates: fails fast, names authorized_delegates',
    label: 'e2e-noauth',
    delegate: 'not-authorized',
    message: ['PERMISSION_DENIED', 'caller not configured as an authorized delegate', 'not an authorized delegate', 'authorized_delegates'],
  },
] as const;

describe('the driver is not set up as a delegate', () => {
  for (const c of CASES) {
    it(c.name, async () => {
      s = await startScenario({ testbed: { label: c.label, delegate: c.delegate }, driver: { publishTimeoutMs: PUBLISH_TIMEOUT_MS } });
      const { testbed, driver } = s;
      await withDiagnostics(s, async () => {
        const pod = driver.kubelet.createPod();
        await testbed.createPodUidEntry(pod, `spiffe://example.org/${pod.name}`);
        const started = Date.now();
        await assert.rejects(driver.kubelet.publish(pod), expectGrpcError(grpc.status.UNAVAILABLE, ...c.message));
        const elapsed = Date.now() - started;
        assert.ok(elapsed < FAST_FAILURE_MS, `failed after ${elapsed} ms`);
        await driver.assertNothingLeft(driver.kubelet.volumeFor(pod));
      });
    });
  }
});
