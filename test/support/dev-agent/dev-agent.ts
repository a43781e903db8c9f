/**
 * The development SPIRE agent: a TypeScript DelegatedIdentity server on a Unix
 * socket, with a real CA, for integration tests and the demo. It reproduces the
 * behaviour of the real agent that the driver depends on, as described in
 * docs/design.md §6, facts F1–F9 (SPIRE v1.15.3), including the awkward
 * parts — an empty first response when nothing matches, repeated identical
 * snapshots on bundle changes, a response that lacks a just-added entry's SVID —
 * because a driver that only ever met a tidy fake would break on the real one.
 *
 * What it deliberately leaves out: workload attestation of the caller (replaced
 * by `callerAuthorization`), PID-mode requests, JWT-SVIDs, entry sync latency
 * (changes are seen at once instead of at the next ~5 s sync) and rotation jitter.
 *
 * This class is the facade; the work is done, one job a module, by
 * entry-store.ts (entries, CA, bundles, signing), rotation.ts (auto-rotation
 * timers), delegated-identity.ts (the gRPC service: streams, snapshots, caller
 * check), admin-socket.ts (the server on the Unix socket) and faults.ts (outages
 * and injected material).
 */
import path from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import type { FetchJwtSvidsRequest, Selector } from '../../../src/spire/messages.js';
import type { MintedCa } from '../certs.js';
import { AdminSocketServer } from './admin-socket.js';
import { DelegatedIdentityService, type FirstSvidResponseTiming } from './delegated-identity.js';
import { EntryStore } from './entry-store.js';
import { FaultInjector } from './faults.js';
import { JwtIssuer } from './jwt-issuer.js';
import { RotationTimers } from './rotation.js';
import { trustDomainId } from './spiffe-names.js';
import type { CallerAuthorization, CurrentSvid, DevAgentOptions, DevEntry, DevEntrySpec, EntryRecord, InjectedSvid } from './types.js';

export type { CallerAuthorization, CurrentSvid, DevAgentOptions, DevEntry, DevEntrySpec, InjectedSvid } from './types.js';

export class DevAgent {
  readonly socketPath: string;
  readonly trustDomain: string;

  private readonly store: EntryStore;
  private readonly rotation: RotationTimers;
  private readonly service: DelegatedIdentityService;
  private readonly socket: AdminSocketServer;
  private readonly faults: FaultInjector;
  private readonly jwt: JwtIssuer;
  private readonly inflight = new Set<Promise<unknown>>();
  private closed = false;

  private constructor(options: DevAgentOptions, store: EntryStore) {
    this.socketPath = options.socketPath;
    this.trustDomain = store.trustDomain;
    this.store = store;
    const isClosed = (): boolean => this.closed;
    this.jwt = new JwtIssuer(store.trustDomain, options.jwtSvidTtlSeconds ?? 300);
    this.rotation = new RotationTimers({
      autoRotate: options.autoRotate ?? false,
      isLive: (record) => store.isLive(record),
      isClosed,
      reissue: (record) => this.track(this.issue([record])),
    });
    this.service = new DelegatedIdentityService(store, {
      callerAuthorization: options.callerAuthorization ?? 'authorized',
      firstResponseDelayMs: options.firstResponseDelayMs ?? 0,
      isClosed,
      jwt: this.jwt,
    });
    this.socket = new AdminSocketServer(options.socketPath, (server) => this.service.addTo(server), isClosed);
    this.faults = new FaultInjector({
      store,
      rotation: this.rotation,
      service: this.service,
      socket: this.socket,
      assertOpen: () => this.assertOpen(),
    });
  }

  static async start(options: DevAgentOptions): Promise<DevAgent> {
    if (!path.isAbsolute(options.socketPath)) {
      throw new Error(`DevAgent socketPath must be absolute, got ${options.socketPath}`);
    }
    const store = await EntryStore.create(options.trustDomain ?? 'example.org', options.svidTtlSeconds ?? 3600);
    const agent = new DevAgent(options, store);
    await agent.socket.listen();
    return agent;
  }

  // ---------------------------------------------------------------- entries

  /**
   * Registers an entry and resolves once its first SVID is signed and pushed.
   * The entry is visible to matching at once, before it has an SVID, as in the
   * real cache (F6): open streams it matches get a snapshot without it, then
   * one with it; a stream opened in between waits for it (F5).
   */
  async addEntry(spec: DevEntrySpec): Promise<string> {
    this.assertOpen();
    const record = this.store.add(spec);
    this.service.deliverToSubscribersOf([record]);
    // A new federates_with reference makes the agent hold (and stream) that bundle.
    this.service.bundlesMaybeChanged();
    await this.track(this.issue([record]));
    return record.entry.id;
  }

  /** Removes an entry; matching streams get a snapshot without it, possibly empty, and stay open (F6). */
  removeEntry(id: string): boolean {
    const record = this.store.remove(id);
    if (!record) return false;
    this.rotation.cancel(record);
    this.service.deliverToSubscribersOf([record]);
    this.service.bundlesMaybeChanged();
    return true;
  }

  listEntries(): DevEntry[] {
    return this.store.list();
  }

  // --------------------------------------------------------------- controls

  /** Re-signs one entry's SVID (or every entry's) with a new key and serial and pushes it. */
  async rotateSvids(entryId?: string): Promise<void> {
    this.assertOpen();
    const records = entryId === undefined ? this.store.records() : [this.store.get(entryId)];
    await this.track(this.issue(records));
  }

  /**
   * A CA rotation as SPIRE performs it: the new authority is published in the
   * bundle next to the old one first (prepared + active), then every SVID is
   * re-signed by it. Each bundle change reaches every SVID stream as a snapshot
   * with unchanged SVIDs (`notifyAll`, F6), so clients see identical resends.
   */
  async rotateCa(): Promise<void> {
    this.assertOpen();
    await this.store.addCa();
    this.service.ownBundleChanged();
    await this.track(this.issue(this.store.records()));
  }

  /** Ends a rotation: the bundle keeps only the newest CA. */
  dropOldCa(): void {
    this.assertOpen();
    if (this.store.dropOldCas()) this.service.ownBundleChanged();
  }

  /**
   * Sets (or, with an empty list, removes) a federated trust domain's bundle.
   * Like the real agent, which only syncs bundles named in some entry's
   * `federates_with` (F7, F9), the bundle is streamed and listed in
   * `federates_with` only while an entry federates with that trust domain.
   */
  setFederatedBundle(trustDomain: string, certDers: Buffer[]): void {
    this.assertOpen();
    const td = trustDomainId(trustDomain);
    if (this.store.setFederatedBundle(td, certDers)) this.service.federatedBundleChanged(td);
  }

  // -------------------------------------------------------- fault injection

  /**
   * Replaces an entry's current SVID with exactly the given material — no
   * checks — and pushes it, so driver tests can serve SVIDs that are expired,
   * mismatched, carry extra SANs or a non-PKCS#8 key. Auto-rotation leaves an
   * injected SVID alone.
   */
  replaceSvid(entryId: string, material: InjectedSvid): void {
    this.faults.replaceSvid(entryId, material);
  }

  /**
   * Takes effect at each stream's next message, never by itself: the real
   * agent re-checks the caller only when it has something to send (F2).
   */
  setCallerAuthorization(mode: CallerAuthorization): void {
    this.faults.setCallerAuthorization(mode);
  }

  /** Applies to streams opened afterwards. */
  setFirstResponseDelay(ms: number): void {
    this.faults.setFirstResponseDelay(ms);
  }

  /**
   * Dies like a SIGKILLed agent: connections cut and, unlike stop(), a stale
   * socket file left behind, which the next resume() replaces in place (the
   * real agent removes the file only on a clean stop).
   */
  crash(): Promise<void> {
    return this.faults.crash();
  }

  /**
   * Goes away like a crashed or stopped agent: connections are cut without a
   * goodbye and the socket file disappears, so clients must cope with ENOENT
   * until it is back.
   */
  stop(): Promise<void> {
    return this.faults.stop();
  }

  /** Listens again on the same path with the same CA, entries and SVIDs. */
  resume(): Promise<void> {
    return this.faults.resume();
  }

  /** stop(), wait `downtimeMs`, resume(): clients must reconnect to a recreated socket file. */
  restart(options: { downtimeMs?: number } = {}): Promise<void> {
    return this.faults.restart(options);
  }

  // Raw bundle injection, added for test/integration/fuzz-agent-material.test.ts (hardening issue #8).

  /**
   * Sends every open bundle stream exactly `raw` as the bundle of
   * `trustDomainId` (`spiffe://td`), next to whatever that stream was last
   * sent — no checks, so garbage, truncated or empty DER reaches the client as
   * a real agent bug would send it. The agent's own CAs and federated bundles
   * are untouched, and SVID streams are not woken; {@link resendBundles} sends
   * the held bundles again. Streams opened later never see the injection.
   */
  injectBundle(trustDomainId: string, raw: Buffer): void {
    this.faults.injectBundle(trustDomainId, raw);
  }

  /**
   * Sends the bundles the agent holds to every open bundle stream, also when
   * nothing changed: an identical re-send (which the real agent occasionally
   * does, F9), or the end of an {@link injectBundle}.
   */
  /** A new JWT signing key (the old one stays published); JWT bundle streams get the new JWKS, cached tokens are re-signed. */
  rotateJwtKey(): void {
    this.assertOpen();
    this.jwt.rotateKey();
    this.service.jwtBundlesChanged();
  }

  /** Lifetime of JWT-SVIDs signed from now on. */
  setJwtSvidTtl(seconds: number): void {
    this.jwt.ttlSeconds = seconds;
  }

  /** Makes FetchJWTSVIDs fail as the agent does when it cannot sign (F23), until called with undefined. */
  failJwtFetches(fault: { code: grpc.status; details: string } | undefined): void {
    this.service.jwtFetchFault = fault;
  }

  /** Every FetchJWTSVIDs request received, in order. */
  receivedJwtFetches(): FetchJwtSvidsRequest[] {
    return this.service.receivedJwtFetches();
  }

  openJwtBundleStreams(): number {
    return this.service.openJwtBundleStreams();
  }

  resendBundles(): void {
    this.assertOpen();
    this.service.resendBundles();
  }

  /** Every SVID stream gets its current SVIDs again, byte for byte. */
  resendSvids(): void {
    this.assertOpen();
    this.service.resendSvids();
  }

  /** Stops for good; leaves no timer or handle behind, so node:test can exit. */
  async close(): Promise<void> {
    this.closed = true;
    this.rotation.cancelAll();
    await this.stop();
    await Promise.allSettled([...this.inflight]);
    this.rotation.cancelAll();
    this.service.streamCountChanged();
  }

  // ---------------------------------------------------------- introspection

  /** The own trust domain's CA certificates, oldest first. */
  bundleDers(): Buffer[] {
    return this.store.bundleDers();
  }

  /** The CA that signs new SVIDs, for tests that mint their own SVIDs under it. */
  activeCa(): MintedCa {
    return this.store.activeCa();
  }

  currentSvid(entryId: string): CurrentSvid {
    return this.store.currentSvid(entryId);
  }

  /** The selectors of every SubscribeToX509SVIDs request received, in order, rejected ones included. */
  receivedSelectorSets(): Selector[][] {
    return this.service.receivedSelectorSets();
  }

  /** How long this agent took to answer each SVID subscription with its first SVIDs, in order. */
  firstSvidResponseTimings(): FirstSvidResponseTiming[] {
    return this.service.firstSvidResponseTimings();
  }

  openSvidStreams(): number {
    return this.service.openSvidStreams();
  }

  openBundleStreams(): number {
    return this.service.openBundleStreams();
  }

  /** Resolves once exactly `n` SVID streams are open. */
  waitForSvidStreams(n: number, timeoutMs = 5000): Promise<void> {
    return this.service.waitForStreamCount('SVID', n, timeoutMs);
  }

  /** Resolves once exactly `n` bundle streams are open. */
  waitForBundleStreams(n: number, timeoutMs = 5000): Promise<void> {
    return this.service.waitForStreamCount('bundle', n, timeoutMs);
  }

  // ------------------------------------------------------------------ misc

  /**
   * Signs fresh SVIDs, schedules their rotation, then pushes one snapshot per
   * affected stream — the agent batches a sync's signings into one
   * `UpdateSVIDs` notification.
   */
  private async issue(records: EntryRecord[]): Promise<void> {
    const issued = await this.store.sign(records, {
      isClosed: () => this.closed,
      onSigned: (record, issuedAtMs) => this.rotation.schedule(record, issuedAtMs),
    });
    if (issued.length > 0) this.service.deliverToSubscribersOf(issued);
  }

  private track<T>(work: Promise<T>): Promise<T> {
    this.inflight.add(work);
    const forget = (): void => {
      this.inflight.delete(work);
    };
    work.then(forget, forget);
    return work;
  }

  private assertOpen(): void {
    if (this.closed) throw new Error('DevAgent is closed');
  }
}
