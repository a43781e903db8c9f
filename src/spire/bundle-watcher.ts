/**
 * The node-wide SubscribeToX509Bundles stream (docs/design.md invariant 9): one
 * stream feeds every volume. Each response is the full map of trust domain ID
 * ("spiffe://<td>") to concatenated DER (SubscribeToX509Bundles and marshalBundle
 * in https://github.com/spiffe/spire/blob/v1.15.3/pkg/agent/api/delegatedidentity/v1/service.go);
 * listeners are told which trust domains actually changed, so a bundle
 * rotation rewrites each affected volume once and an unchanged re-send
 * rewrites nothing.
 */
import { errorMessage } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics-api.js';
import { splitConcatenatedDer, withoutDuplicates } from '../x509/pem.js';
import type { AgentStreamConnection } from './agent-connection.js';
import type { StreamFailure } from './agent-errors.js';
import type { SubscribeToX509BundlesResponse } from './messages.js';
import { ResilientStream, type Clock } from './resilient-stream.js';

export interface TrustBundle {
  trustDomainId: string;
  /** Never changed once made: bundleToPem keeps its encoding by this list. */
  certificates: readonly Buffer[];
}

export type BundleListener = (changedTrustDomainIds: ReadonlySet<string>) => void;

/** What a volume needs of the node-wide bundles: BundleWatcher implements it. */
export interface BundleSource {
  get(trustDomainId: string): TrustBundle | undefined;
  /** The bundle stream's last failure, cleared by its next message. */
  readonly lastFailure: StreamFailure | undefined;
  /** Calls `listener` with the trust domains whose bundle changed; returns the unsubscribe function. */
  subscribe(listener: BundleListener): () => void;
}

export interface BundleWatcherDeps {
  connection: AgentStreamConnection;
  logger: Logger;
  metrics: Metrics;
  /** The stream's re-open timers. Default: real timers. */
  clock?: Clock;
  /** Jitter source of the stream's backoff. Default: Math.random. */
  random?: () => number;
}

export class BundleWatcher implements BundleSource {
  private readonly bundles = new Map<string, { raw: Buffer; bundle: TrustBundle }>();
  private readonly listeners = new Set<BundleListener>();
  private stream: ResilientStream<SubscribeToX509BundlesResponse> | undefined;

  constructor(private readonly deps: BundleWatcherDeps) {}

  get(trustDomainId: string): TrustBundle | undefined {
    return this.bundles.get(trustDomainId)?.bundle;
  }

  get lastFailure(): StreamFailure | undefined {
    return this.stream?.lastFailure;
  }

  /**
   * Opens the stream on the first subscriber and keeps it open until close(),
   * even when the last volume goes: re-opening it would add a round trip to
   * the next NodePublishVolume. Returns the unsubscribe function.
   */
  subscribe(listener: BundleListener): () => void {
    this.listeners.add(listener);
    if (!this.stream) {
      this.stream = new ResilientStream({
        kind: 'bundle',
        connection: this.deps.connection,
        open: (client) => client.subscribeToX509Bundles(),
        onMessage: (message) => this.onMessage(message),
        logger: this.deps.logger,
        metrics: this.deps.metrics,
        clock: this.deps.clock,
        random: this.deps.random,
      });
      this.stream.start();
    } else {
      // A new volume should not wait out a backoff the stream built up while
      // the agent refused the driver: the operator may just have fixed that.
      this.stream.retryNow();
    }
    return () => {
      this.listeners.delete(listener);
    };
  }

  close(): void {
    this.stream?.close();
    this.stream = undefined;
  }

  private onMessage(message: SubscribeToX509BundlesResponse): void {
    const changed = new Set<string>();
    for (const [trustDomainId, raw] of Object.entries(message.ca_certificates)) {
      const previous = this.bundles.get(trustDomainId);
      if (previous?.raw.equals(raw)) continue;
      // Its own memory: the decoded bytes are a view into the whole message, which
      // holds every trust domain's bundle, and the certificates are views into this.
      const own = Buffer.allocUnsafeSlow(raw.length);
      raw.copy(own);
      let certificates: Buffer[];
      try {
        // A CA listed twice is written once: readers gain nothing from the copy.
        certificates = withoutDuplicates(splitConcatenatedDer(own));
      } catch (err) {
        // Keep the last good bundle of this trust domain rather than none.
        this.deps.metrics.bundleRejected.inc();
        this.deps.logger.error(
          { trust_domain: trustDomainId, err: errorMessage(err) },
          'rejected a trust bundle from the SPIRE agent; keeping the previous one',
        );
        continue;
      }
      this.bundles.set(trustDomainId, { raw: own, bundle: { trustDomainId, certificates } });
      changed.add(trustDomainId);
    }
    if (changed.size === 0) return;
    this.deps.logger.info({ trust_domains: [...changed] }, 'trust bundle updated');
    for (const listener of [...this.listeners]) listener(changed);
  }
}
