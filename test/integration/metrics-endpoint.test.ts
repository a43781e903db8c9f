/**
 * The driver binary with --metrics-address serves Prometheus metrics (prom-client
 * is loaded only then, src/observability/metrics-api.ts); without it, none.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { afterEach, describe, test } from 'node:test';
import { Harness } from '../support/driver-harness.js';

let h: Harness | undefined;

afterEach(async () => {
  await h?.close();
  h = undefined;
});

/** The driver's 'spire-csi-driver started' log line. */
function startLine(harness: Harness): Record<string, unknown> {
  const line = (harness.child?.output() ?? '').split('\n').find((l) => l.includes('"spire-csi-driver started"'));
  assert.ok(line, 'the driver logged its start');
  return JSON.parse(line) as Record<string, unknown>;
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe('the metrics endpoint of the driver process', () => {
  test('--metrics-address: /metrics has the driver metrics, with the publishes counted, and the process metrics', async () => {
    const port = await freePort();
    h = await Harness.start({ driverProcess: true, metricsAddress: { host: '127.0.0.1', port } });
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/metrics', selectors: [`k8s:pod-uid:${pod.uid}`] });
    await h.kubelet.publish(pod);
    const response = await fetch(`http://127.0.0.1:${port}/metrics`);
    assert.equal(response.status, 200);
    const body = await response.text();
    assert.match(body, /^spire_csi_node_publish_total\{result="OK"\} 1$/m);
    assert.match(body, /^spire_csi_volumes 1$/m);
    assert.match(body, /^process_resident_memory_bytes \d+/m);
    assert.equal((await fetch(`http://127.0.0.1:${port}/other`)).status, 404);
    assert.equal(startLine(h)['metrics'], `127.0.0.1:${port}`);
  });

  test('without --metrics-address the start-up line says metrics are disabled, and publishing works', async () => {
    h = await Harness.start({ driverProcess: true });
    const pod = h.kubelet.createPod();
    await h.agent.addEntry({ spiffeId: 'spiffe://example.org/plain', selectors: [`k8s:pod-uid:${pod.uid}`] });
    await h.kubelet.publish(pod);
    assert.equal(startLine(h)['metrics'], 'disabled');
  });
});
