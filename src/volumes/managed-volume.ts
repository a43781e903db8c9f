/**
 * One live volume: its SVID stream, its share of the node-wide bundle stream,
 * and its single writer. Every SVID response and every change of its trust
 * domain's bundle marks the volume dirty; one sync loop per volume turns the
 * newest state into files, so writes never overlap and a burst of updates
 * becomes one swap (DESIGN.md invariant 4). Identical content writes nothing;
 * an empty or invalid response keeps the previous files (invariants 5, 6).
 */
import { status } from '@grpc/grpc-js';
import { AtomicWriter } from '../fs/atomic-writer.js';
import { DriverError, errorMessage } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { DriverMetrics } from '../observability/metrics.js';
import type { AgentConnection } from '../spire/agent-connection.js';
import { describeStreamFailure, isConfigurationFailure, type StreamFailure } from '../spire/agent-errors.js';
import type { BundleWatcher } from '../spire/bundle-watcher.js';
import type { Selector, SubscribeToX509SvidsResponse } from '../spire/messages.js';
import { ResilientStream } from '../spire/resilient-stream.js';
import { formatSelectors } from '../spire/selectors.js';
import { checkSvid } from '../x509/svid-check.js';
import type { VolumeRecord } from './metadata-store.js';
import { buildVolumeFiles, pickSvid } from './volume-files.js';

export interface ManagedVolumeDeps {
  connection: AgentConnection;
  bundles: BundleWatcher;
  logger: Logger;
  metrics: DriverMetrics;
}

export class ManagedVolume {
  private readonly writer: AtomicWriter;
  private readonly logger: Logger;
  private stream: ResilientStream<SubscribeToX509SvidsResponse> | undefined;
  private unsubscribeBundles: (() => void) | undefined;
  private latest: SubscribeToX509SvidsResponse | undefined;
  private trustDomainId: string | undefined;
  private dirty = false;
  private draining: Promise<void> | undefined;
  private closed = false;
  private readonly stateListeners = new Set<() => void>();
  /** Why the volume has no (current) files, in words for kubelet's event. */
  private problem = 'the SPIRE agent has not sent an SVID for this pod yet (it may still be signing it)';
  /** Files are on disk: written by this process, or found in place after a restart. */
  private hasFiles: boolean;

  constructor(
    readonly record: VolumeRecord,
    readonly selectors: Selector[],
    private readonly deps: ManagedVolumeDeps,
    options: { filesPresent: boolean },
  ) {
    this.writer = new AtomicWriter(record.targetPath);
    this.hasFiles = options.filesPresent;
    this.logger = deps.logger.child({
      volume_id: record.volumeId,
      pod: `${record.pod.namespace}/${record.pod.name}`,
    });
  }

  start(): void {
    this.unsubscribeBundles = this.deps.bundles.subscribe((changed) => {
      if (this.trustDomainId !== undefined && changed.has(this.trustDomainId)) this.scheduleSync();
    });
    this.stream = new ResilientStream({
      kind: 'svid',
      connection: this.deps.connection,
      open: (client) => client.subscribeToX509Svids({ selectors: this.selectors }),
      onMessage: (message) => {
        this.latest = message;
        this.scheduleSync();
      },
      onFailure: () => this.notifyStateListeners(),
      logger: this.logger,
      metrics: this.deps.metrics,
    });
    this.stream.start();
  }

  /** Stops the streams and waits for a write in progress, leaving the files as they are. */
  async close(): Promise<void> {
    this.closed = true;
    this.stream?.close();
    this.unsubscribeBundles?.();
    await this.draining;
    this.notifyStateListeners();
  }

  /**
   * DESIGN.md invariant 3: NodePublishVolume returns only once the files are on
   * disk. Resolves when they are; rejects early when retrying cannot help (the
   * agent refuses the driver), on timeout with the reason, or when kubelet
   * cancels the call.
   */
  waitUntilWritten(timeoutMs: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const finish = (settle: () => void): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        this.stateListeners.delete(check);
        settle();
      };
      const check = (): void => {
        if (this.hasFiles) return finish(resolve);
        // Only this volume's own stream: the shared bundle stream's last failure
        // may be stale (it clears on its next message), and must not fail a
        // publish that the agent would now serve.
        const failure = this.stream?.lastFailure;
        if (failure && isConfigurationFailure(failure)) {
          finish(() => reject(new DriverError(status.UNAVAILABLE, describeStreamFailure(failure, this.deps.connection.socketPath))));
        } else if (this.closed) {
          finish(() => reject(new DriverError(status.ABORTED, 'the volume was closed while it was being published')));
        }
      };
      const onAbort = (): void =>
        finish(() =>
          reject(signal.reason instanceof DriverError ? signal.reason : new DriverError(status.ABORTED, 'NodePublishVolume was cancelled')),
        );
      const timer = setTimeout(() => finish(() => reject(this.timeoutError(timeoutMs))), timeoutMs);
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort);
      this.stateListeners.add(check);
      check();
    });
  }

  private currentFailure(): StreamFailure | undefined {
    return this.stream?.lastFailure ?? this.deps.bundles.lastFailure;
  }

  private timeoutError(timeoutMs: number): DriverError {
    const seconds = Math.round(timeoutMs / 1000);
    const failure = this.currentFailure();
    if (failure) {
      return new DriverError(
        status.UNAVAILABLE,
        `no SVID after ${seconds}s: ${describeStreamFailure(failure, this.deps.connection.socketPath)}`,
      );
    }
    return new DriverError(status.DEADLINE_EXCEEDED, `no SVID after ${seconds}s: ${this.problem}`);
  }

  private notifyStateListeners(): void {
    for (const listener of [...this.stateListeners]) listener();
  }

  private scheduleSync(): void {
    this.dirty = true;
    if (this.draining || this.closed) return;
    this.draining = this.drain()
      .catch((err: unknown) => this.logger.error({ err: errorMessage(err) }, 'unexpected error while updating the volume files'))
      .finally(() => {
        this.draining = undefined;
        // An update that arrived while the last write was finishing.
        if (this.dirty && !this.closed) this.scheduleSync();
      });
  }

  private async drain(): Promise<void> {
    // Yield first so `this.draining` is assigned before the loop can finish.
    await Promise.resolve();
    while (this.dirty && !this.closed) {
      this.dirty = false;
      await this.sync();
      this.notifyStateListeners();
    }
  }

  private async sync(): Promise<void> {
    const latest = this.latest;
    if (latest === undefined) return;
    if (latest.x509_svids.length === 0) {
      this.problem =
        `no registration entry matches selectors ${formatSelectors(this.selectors)} yet. ` +
        'Create one, e.g. a ClusterSPIFFEID whose podSelector selects this pod (spire-controller-manager entries carry k8s:pod-uid), ' +
        'or spire-server entry create with -selector k8s:ns:<namespace> -selector k8s:sa:<service-account>';
      this.keepPreviousFiles('empty', 'the SPIRE agent sent no SVID for this pod (entry deleted?)');
      return;
    }
    const picked = pickSvid(latest.x509_svids, { spiffeId: this.record.spiffeId, hint: this.record.hint });
    if ('problem' in picked) {
      this.problem = picked.problem;
      this.keepPreviousFiles('no_match', picked.problem);
      return;
    }
    this.trustDomainId = picked.trustDomainId;
    const bundle = this.deps.bundles.get(picked.trustDomainId);
    if (bundle === undefined) {
      this.problem = `the SPIRE agent has not sent the trust bundle of ${picked.trustDomainId} yet`;
      return;
    }
    const checked = checkSvid({
      spiffeId: picked.spiffeId,
      certChain: picked.certChain,
      keyDer: picked.keyDer,
      bundle: bundle.certificates,
    });
    if (!checked.ok) {
      this.problem = `the SPIRE agent's SVID for ${picked.spiffeId} was rejected: ${checked.reason}`;
      this.deps.metrics.svidUpdates.inc({ outcome: 'rejected' });
      this.logger.error({ spiffe_id: picked.spiffeId, reason: checked.reason }, 'rejected an SVID from the SPIRE agent; the previous files stay');
      return;
    }
    const files = buildVolumeFiles(picked, bundle.certificates, this.record.files, this.record.fsGroup);
    try {
      const result = await this.writer.write(files, this.record.fsGroup === null ? {} : { gid: this.record.fsGroup });
      this.hasFiles = true;
      this.deps.metrics.svidUpdates.inc({ outcome: result.changed ? 'written' : 'unchanged' });
      if (result.changed) {
        this.logger.info(
          {
            spiffe_id: checked.svid.spiffeId,
            serial: checked.svid.serialNumber,
            expires_at: checked.svid.notAfter.toISOString(),
            version: result.version,
          },
          'SVID files written',
        );
      }
    } catch (err) {
      this.problem = `writing the SVID files into ${this.record.targetPath} failed: ${errorMessage(err)}`;
      this.logger.error({ spiffe_id: picked.spiffeId, err: errorMessage(err) }, 'writing the SVID files failed; will retry on the next update');
    }
  }

  private keepPreviousFiles(outcome: 'empty' | 'no_match', why: string): void {
    this.deps.metrics.svidUpdates.inc({ outcome });
    if (this.hasFiles) this.logger.warn({ selectors: formatSelectors(this.selectors) }, `${why}; keeping the last files`);
  }
}
