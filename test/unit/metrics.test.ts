import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { describe, it } from 'node:test';
import { DriverMetrics, serveMetrics } from '../../src/observability/metrics.js';

describe('metrics endpoint', () => {
  it('serves the driver metrics in Prometheus text format on /metrics, 404 elsewhere', async () => {
    const metrics = new DriverMetrics();
    metrics.publishTotal.inc({ result: 'OK' });
    metrics.svidUpdates.inc({ outcome: 'rejected' });
    const server = await serveMetrics(metrics, { host: '127.0.0.1', port: 0 });
    try {
      const { port } = server.address() as AddressInfo;
      const response = await fetch(`http://127.0.0.1:${port}/metrics`);
      assert.equal(response.status, 200);
      assert.match(response.headers.get('content-type') ?? '', /text\/plain/);
      const body = await response.text();
      assert.match(body, /^spire_csi_node_publish_total\{result="OK"\} 1$/m);
      assert.match(body, /^spire_csi_svid_updates_total\{outcome="rejected"\} 1$/m);
      assert.match(body, /^# HELP spire_csi_volumes /m);
      assert.match(body, /^# HELP spire_csi_volume_write_failures_total \S/m);
      assert.match(body, /^# HELP spire_csi_volumes_write_failing \S/m);
      assert.match(body, /^# HELP spire_csi_volumes_abnormal \S/m);
      assert.match(body, /^spire_csi_volumes_abnormal 0$/m);
      // Absent, not 0 (1970), while no volume holds a known SVID.
      assert.match(body, /^# HELP spire_csi_svid_earliest_expiry_timestamp_seconds \S/m);
      assert.doesNotMatch(body, /^spire_csi_svid_earliest_expiry_timestamp_seconds /m);
      assert.equal((await fetch(`http://127.0.0.1:${port}/other`)).status, 404);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('counts each failing volume once in the write-failing gauge, however often it is marked or cleared', async () => {
    const metrics = new DriverMetrics();
    const gauge = async (): Promise<number | undefined> => (await metrics.volumesWriteFailing.get()).values[0]?.value;
    const a = {};
    const b = {};
    assert.equal(await gauge(), 0);
    metrics.setWriteFailing(a, true);
    metrics.setWriteFailing(a, true);
    metrics.setWriteFailing(b, true);
    assert.equal(await gauge(), 2);
    metrics.setWriteFailing(a, false);
    metrics.setWriteFailing(a, false);
    metrics.setWriteFailing({}, false);
    assert.equal(await gauge(), 1);
    metrics.setWriteFailing(b, false);
    assert.equal(await gauge(), 0);
  });

  it('reads the earliest SVID expiry and the abnormal volumes from the volume manager at scrape time, without labels', async () => {
    const metrics = new DriverMetrics();
    let summary: { earliestExpiryMs: number | undefined; abnormal: number } = { earliestExpiryMs: 1_800_000_000_500, abnormal: 3 };
    metrics.watchVolumeHealthWith(() => summary);
    let body = await metrics.registry.metrics();
    assert.match(body, /^spire_csi_svid_earliest_expiry_timestamp_seconds 1800000000.5$/m);
    assert.match(body, /^spire_csi_volumes_abnormal 3$/m);
    summary = { earliestExpiryMs: undefined, abnormal: 0 };
    body = await metrics.registry.metrics();
    assert.doesNotMatch(body, /^spire_csi_svid_earliest_expiry_timestamp_seconds /m);
    assert.match(body, /^spire_csi_volumes_abnormal 0$/m);
  });
});
