/**
 * The node-wide SubscribeToJWTBundles stream, the JWT sibling of
 * bundle-watcher.ts: one stream for every volume that writes JWT-SVIDs, opened
 * only when the first of them subscribes, so a driver without such volumes
 * opens nothing more than before (docs/design.md invariant 9). Each response is
 * the full map of trust domain ID ("spiffe://<td>") to the trust domain's JWKS
 * JSON (SubscribeToJWTBundles in
 * https://github.com/spiffe/spire/blob/v1.15.3/pkg/agent/api/delegatedidentity/v1/service.go);
 * listeners hear which trust domains changed, so an unchanged re-send writes nothing.
 */
import { errorMessage } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics-api.js';
import type { AgentStreamConnection } from './agent-connection.js';
import type { StreamFailure } from './agent-errors.js';
import type { BundleListener } from './bundle-watcher.js';
import type { SubscribeToJwtBundlesResponse } from './messages.js';
import { ResilientStream, type Clock } from './resilient-stream.js';

/** What a volume needs of the node-wide JWT bundles: JwtBundleWatcher implements it. */
export interface JwtBundleSource {
  /** The trust domain's JWKS document, normalised to {"keys": [...]}; undefined until the agent sent one. */
  get(trustDomainId: string): Buffer | undefined;
  readonly lastFailure: StreamFailure | undefined;
  /** Opens the stream on the first call; returns the unsubscribe function. */
  subscribe(listener: BundleListener): () => void;
}

export interface JwtBundleWatcherDeps {
  connection: AgentStreamConnection;
  logger: Logger;
  metrics: Metrics;
  clock?: Clock;
  random?: () => number;
}

export class JwtBundleWatcher implements JwtBundleSource {
  private readonly bundles = new Map<string, { raw: Buffer; jwks: Buffer }>();
  private readonly listeners = new Set<BundleListener>();
  private stream: ResilientStream<SubscribeToJwtBundlesResponse> | undefined;

  constructor(private readonly deps: JwtBundleWatcherDeps) {}

  get(trustDomainId: string): Buffer | undefined {
    return this.bundles.get(trustDomainId)?.jwks;
  }

  get lastFailure(): StreamFailure | undefined {
    return this.stream?.lastFailure;
  }

  /** Like BundleWatcher.subscribe: the stream stays open until close(), even when the last JWT volume goes. */
  subscribe(listener: BundleListener): () => void {
    this.listeners.add(listener);
    if (!this.stream) {
      this.stream = new ResilientStream({
        kind: 'jwt_bundle',
        connection: this.deps.connection,
        open: (client) => client.subscribeToJwtBundles(),
        onMessage: (message) => this.onMessage(message),
        logger: this.deps.logger,
        metrics: this.deps.metrics,
        clock: this.deps.clock,
        random: this.deps.random,
      });
      this.stream.start();
    } else {
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

  private onMessage(message: SubscribeToJwtBundlesResponse): void {
    const changed = new Set<string>();
    for (const [trustDomainId, raw] of Object.entries(message.bundles)) {
      if (this.bundles.get(trustDomainId)?.raw.equals(raw)) continue;
      let jwks: Buffer;
      try {
        jwks = normaliseJwks(raw);
      } catch (err) {
        this.deps.metrics.bundleRejected.inc();
        this.deps.logger.error(
          { trust_domain: trustDomainId, err: errorMessage(err) },
          'rejected a JWT bundle from the SPIRE agent; keeping the previous one',
        );
        continue;
      }
      // A copy of its own, not a view that would keep the whole message.
      this.bundles.set(trustDomainId, { raw: Buffer.from(raw), jwks });
      changed.add(trustDomainId);
    }
    if (changed.size === 0) return;
    this.deps.logger.info({ trust_domains: [...changed] }, 'JWT bundle updated');
    for (const listener of [...this.listeners]) listener(changed);
  }
}

/**
 * The JWKS compact, with only its `keys`, as go-spiffe's jwtbundle.Bundle.Marshal
 * writes it for spiffe-helper's file. The agent sends a standard JWKS already
 * (bundleutil.Marshal with StandardJWKS: no SPIFFE `use`, no spiffe_sequence;
 * https://github.com/spiffe/spire/blob/v1.15.3/pkg/common/bundleutil/marshal.go),
 * indented; re-serialising drops the indentation and anything else at the top.
 * A document that is not a JWKS is refused rather than written.
 */
export function normaliseJwks(raw: Buffer): Buffer {
  const parsed: unknown = JSON.parse(raw.toString('utf8'));
  if (typeof parsed !== 'object' || parsed === null || !('keys' in parsed) || !Array.isArray(parsed.keys)) {
    throw new Error('the JWT bundle is not a JWKS document (no "keys" array)');
  }
  const keys: unknown[] = parsed.keys;
  if (!keys.every((key) => typeof key === 'object' && key !== null && 'kty' in key && typeof key.kty === 'string')) {
    throw new Error('a key of the JWT bundle has no "kty"');
  }
  return Buffer.from(JSON.stringify({ keys }));
}
