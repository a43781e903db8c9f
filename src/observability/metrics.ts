/**
 * Prometheus metrics on a private registry, loaded only when
 * --metrics-address is set (metrics-api.ts). Labels are low-cardinality on
 * purpose (result codes and outcomes, never volume ids or SPIFFE IDs), and no
 * secret can become a label value.
 */
import http from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Metrics } from './metrics-api.js';

export class DriverMetrics implements Metrics {
  readonly registry = new Registry();

  readonly publishTotal = new Counter({
    name: 'spire_csi_node_publish_total',
    help: 'NodePublishVolume calls by gRPC result code (OK or the error code).',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly unpublishTotal = new Counter({
    name: 'spire_csi_node_unpublish_total',
    help: 'NodeUnpublishVolume calls by gRPC result code.',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly publishDuration = new Histogram({
    name: 'spire_csi_node_publish_duration_seconds',
    help: 'Time NodePublishVolume took, including the wait for the first SVID.',
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
    registers: [this.registry],
  });

  readonly svidUpdates = new Counter({
    name: 'spire_csi_svid_updates_total',
    help: 'SVID material handled per volume: written (files swapped), unchanged (identical, nothing written), repeat (the agent re-sent its last response byte for byte; dropped unread), rejected (failed validation; previous files kept), empty (no SVID; previous files kept) or no_match (no SVID with the requested spiffe-id/hint).',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });

  readonly bundleRejected = new Counter({
    name: 'spire_csi_bundle_rejected_total',
    help: 'Trust bundles from the SPIRE agent that did not parse; the previous bundle of that trust domain was kept.',
    registers: [this.registry],
  });

  readonly agentStreamErrors = new Counter({
    name: 'spire_csi_agent_stream_errors_total',
    help: 'SPIRE agent streams that ended with an error, by stream and gRPC code.',
    labelNames: ['stream', 'code'] as const,
    registers: [this.registry],
  });

  readonly volumeWriteFailures = new Counter({
    name: 'spire_csi_volume_write_failures_total',
    help: "Attempts to write a volume's SVID files that failed, by errno (ENOSPC, EIO, EMFILE, ENFILE, EROFS, EACCES, EPERM, EDQUOT, ENOENT, else other). Each failure is retried with capped backoff; the previous files stay until a write succeeds.",
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  /**
   * The volumes whose last write failed. A set of the volumes themselves
   * rather than inc/dec: marking twice or clearing a volume that never failed
   * changes nothing, so the gauge cannot drift.
   */
  private readonly failingWriters = new Set<object>();

  readonly volumesWriteFailing: Gauge = new Gauge({
    name: 'spire_csi_volumes_write_failing',
    help: 'Volumes whose newest SVID could not be written yet (their last write failed and is being retried with backoff); they still hold their previous files, which may be nearing expiry.',
    registers: [this.registry],
    collect: (): void => this.volumesWriteFailing.set(this.failingWriters.size),
  });

  /** Counts `volume` in spire_csi_volumes_write_failing while `failing`; a volume must clear itself when it closes. */
  setWriteFailing(volume: object, failing: boolean): void {
    if (failing) this.failingWriters.add(volume);
    else this.failingWriters.delete(volume);
  }

  private countVolumes: () => number = () => 0;

  /** Read at scrape time from the volume manager, so the gauge can never drift from the truth. */
  readonly liveVolumes: Gauge = new Gauge({
    name: 'spire_csi_volumes',
    help: 'Volumes currently managed by this driver.',
    registers: [this.registry],
    collect: (): void => this.liveVolumes.set(this.countVolumes()),
  });

  countVolumesWith(count: () => number): void {
    this.countVolumes = count;
  }

  private volumeHealth: () => { earliestExpiryMs: number | undefined; abnormal: number } = () => ({ earliestExpiryMs: undefined, abnormal: 0 });

  /**
   * One number for the node rather than one series per volume or SPIFFE ID:
   * bounded cardinality, and the one that matters for an alert (the next SVID
   * to expire). Absent while no volume's SVID is known, so that an empty node
   * does not look like one whose SVIDs expired in 1970.
   */
  readonly earliestSvidExpiry: Gauge = new Gauge({
    name: 'spire_csi_svid_earliest_expiry_timestamp_seconds',
    help: "Unix time at which the earliest-expiring SVID in this node's volumes expires (its NotAfter). A healthy node renews at half the lifetime, so this stays well ahead of time(); absent when no volume holds a known SVID.",
    registers: [this.registry],
    collect: (): void => {
      const { earliestExpiryMs } = this.volumeHealth();
      if (earliestExpiryMs === undefined) this.earliestSvidExpiry.remove({});
      else this.earliestSvidExpiry.set(earliestExpiryMs / 1000);
    },
  });

  readonly abnormalVolumes: Gauge = new Gauge({
    name: 'spire_csi_volumes_abnormal',
    help: 'Volumes whose NodeGetVolumeStats condition is abnormal: SVID expired, past its renewal point without a newer one, agent stream failing, or writes failing. The condition message of NodeGetVolumeStats says which, and what to check.',
    registers: [this.registry],
    collect: (): void => this.abnormalVolumes.set(this.volumeHealth().abnormal),
  });

  /** Read at scrape time from the volume manager, like spire_csi_volumes. */
  watchVolumeHealthWith(summary: () => { earliestExpiryMs: number | undefined; abnormal: number }): void {
    this.volumeHealth = summary;
  }

  constructor(options: { collectProcessMetrics?: boolean } = {}) {
    if (options.collectProcessMetrics) collectDefaultMetrics({ register: this.registry });
  }
}

export async function serveMetrics(metrics: DriverMetrics, address: { host: string; port: number }): Promise<http.Server> {
  const server = http.createServer((request, response) => {
    if (request.method === 'GET' && request.url === '/metrics') {
      metrics.registry
        .metrics()
        .then((body) => {
          response.writeHead(200, { 'content-type': metrics.registry.contentType });
          response.end(body);
        })
        .catch(() => {
          response.writeHead(500).end();
        });
      return;
    }
    response.writeHead(404).end();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(address.port, address.host, () => resolve());
  });
  return server;
}
