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
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { X509Certificate } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import {
  delegatedIdentityService,
  type Selector,
  type SubscribeToX509BundlesResponse,
  type SubscribeToX509SvidsRequest,
  type SubscribeToX509SvidsResponse,
  type X509SvidWithKey,
} from '../../../src/spire/messages.js';
import { mintCa, mintSvid, type MintedCa } from '../certs.js';

export type CallerAuthorization = 'authorized' | 'no-entry' | 'not-delegate';

export interface DevAgentOptions {
  /** Absolute path of the admin socket. */
  socketPath: string;
  /** Bare trust domain name. Default `example.org`. */
  trustDomain?: string;
  /** X.509-SVID lifetime when an entry sets none. Default 3600 (SPIRE's default `x509_svid_ttl`). */
  svidTtlSeconds?: number;
  /** Re-sign each SVID at half its lifetime, as the agent's `ShouldRotateX509` does (without the ±10 % jitter). */
  autoRotate?: boolean;
  /** Delay before the first response of a stream whose selectors match entries (F5: the real agent blocks until the SVIDs are cached). */
  firstResponseDelayMs?: number;
  /** Outcome of the caller check that stands in for peer attestation (F2). Default `authorized`. */
  callerAuthorization?: CallerAuthorization;
}

export interface DevEntrySpec {
  /** Entry ID; default `entry-000001`, `entry-000002`, … in creation order. Responses are sorted by it (F4). */
  id?: string;
  /** `spiffe://<trust domain>/<path>` in the agent's own trust domain. */
  spiffeId: string;
  /** `type:value` strings such as `k8s:ns:default`; split at the first colon. */
  selectors: string[];
  hint?: string;
  ttlSeconds?: number;
  /** Admin entries match but are never sent to a delegate (F4). */
  admin?: boolean;
  /** Trust domains, `spiffe://td` or bare `td`. */
  federatesWith?: string[];
}

export interface DevEntry {
  id: string;
  spiffeId: string;
  selectors: Selector[];
  hint: string;
  ttlSeconds: number;
  admin: boolean;
  /** Normalised to `spiffe://td`. */
  federatesWith: string[];
}

export interface CurrentSvid {
  /** The leaf. */
  certDer: Buffer;
  /** Leaf first, as sent in `cert_chain`. */
  certChain: Buffer[];
  keyPkcs8Der: Buffer;
  /** Lower-case hex; empty when an injected certificate could not be parsed. */
  serialHex: string;
  spiffeId: string;
  notAfter: Date;
}

/** Material for {@link DevAgent.replaceSvid}, sent exactly as given. */
export interface InjectedSvid {
  certChain: Buffer[];
  keyPkcs8Der: Buffer;
  /** Unix seconds for `expires_at`; default the leaf's NotAfter (0 if the leaf does not parse). */
  expiresAt?: number;
}

type SvidCall = grpc.ServerWritableStream<SubscribeToX509SvidsRequest, SubscribeToX509SvidsResponse>;
type BundleCall = grpc.ServerWritableStream<Record<string, never>, SubscribeToX509BundlesResponse>;

interface IssuedSvid {
  certChain: Buffer[];
  keyPkcs8Der: Buffer;
  serialHex: string;
  notAfter: Date;
  expiresAt: number;
}

interface EntryRecord {
  entry: DevEntry;
  selectorKeys: string[];
  /** Undefined until the first signing finishes: the "not yet cached" state of F5/F6. */
  svid: IssuedSvid | undefined;
  /** Bumped on every (re)issue so a slow signing cannot overwrite a newer SVID. */
  generation: number;
  rotationTimer: NodeJS.Timeout | undefined;
}

interface SvidSubscriber {
  call: SvidCall;
  selectorKeys: Set<string>;
  firstSent: boolean;
  firstDelayTimer: NodeJS.Timeout | undefined;
  done: boolean;
}

interface BundleSubscriber {
  call: BundleCall;
  /**
   * The per-stream map, only ever assigned into: the real agent never prunes it,
   * so a trust domain that disappears keeps being sent on an open stream (F9).
   */
  sent: Record<string, Buffer>;
  done: boolean;
}

const CA_MIN_TTL_MS = 24 * 3600 * 1000;
const MIN_ROTATION_DELAY_MS = 100;

export class DevAgent {
  readonly socketPath: string;
  readonly trustDomain: string;

  private readonly svidTtlSeconds: number;
  private readonly autoRotate: boolean;
  private firstResponseDelayMs: number;
  private callerAuthorization: CallerAuthorization;

  /** Oldest first; the last one signs. More than one only during a rotation (prepared + active authority). */
  private cas: MintedCa[] = [];
  private readonly federatedBundles = new Map<string, Buffer[]>();
  private readonly entries = new Map<string, EntryRecord>();
  private nextEntryNumber = 1;

  private server: grpc.Server | null = null;
  private listener: net.Server | null = null;
  private readonly connections = new Set<net.Socket>();
  private readonly svidSubscribers = new Set<SvidSubscriber>();
  private readonly bundleSubscribers = new Set<BundleSubscriber>();
  private readonly selectorLog: Selector[][] = [];
  private lastBundleSignature = '';
  private readonly streamCountListeners = new Set<() => void>();
  private readonly inflight = new Set<Promise<unknown>>();
  private closed = false;

  private constructor(options: DevAgentOptions) {
    if (!path.isAbsolute(options.socketPath)) {
      throw new Error(`DevAgent socketPath must be absolute, got ${options.socketPath}`);
    }
    this.socketPath = options.socketPath;
    this.trustDomain = options.trustDomain ?? 'example.org';
    this.svidTtlSeconds = options.svidTtlSeconds ?? 3600;
    this.autoRotate = options.autoRotate ?? false;
    this.firstResponseDelayMs = options.firstResponseDelayMs ?? 0;
    this.callerAuthorization = options.callerAuthorization ?? 'authorized';
  }

  static async start(options: DevAgentOptions): Promise<DevAgent> {
    const agent = new DevAgent(options);
    agent.cas = [await agent.mintAgentCa()];
    agent.lastBundleSignature = agent.bundleSignature();
    await agent.listen();
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
    const id = spec.id ?? `entry-${String(this.nextEntryNumber++).padStart(6, '0')}`;
    if (this.entries.has(id)) throw new Error(`entry ${id} already exists`);
    const spiffe = parseSpiffeId(spec.spiffeId);
    if (spiffe.trustDomain !== this.trustDomain) {
      throw new Error(`entry SPIFFE ID ${spec.spiffeId} is not in the agent's trust domain ${this.trustDomain}`);
    }
    if (spec.selectors.length === 0) throw new Error('an entry needs at least one selector');
    const selectors = spec.selectors.map(parseSelectorString);
    const entry: DevEntry = {
      id,
      spiffeId: spec.spiffeId,
      selectors,
      hint: spec.hint ?? '',
      ttlSeconds: spec.ttlSeconds ?? this.svidTtlSeconds,
      admin: spec.admin ?? false,
      federatesWith: [...new Set((spec.federatesWith ?? []).map(trustDomainId))].sort(compareStrings),
    };
    const record: EntryRecord = {
      entry,
      selectorKeys: selectors.map(selectorKey),
      svid: undefined,
      generation: 0,
      rotationTimer: undefined,
    };
    this.entries.set(id, record);
    this.deliverToSubscribersOf([record]);
    // A new federates_with reference makes the agent hold (and stream) that bundle.
    this.bundlesMaybeChanged();
    await this.track(this.issue([record]));
    return id;
  }

  /** Removes an entry; matching streams get a snapshot without it, possibly empty, and stay open (F6). */
  removeEntry(id: string): boolean {
    const record = this.entries.get(id);
    if (!record) return false;
    this.entries.delete(id);
    record.generation++;
    clearTimeout(record.rotationTimer);
    this.deliverToSubscribersOf([record]);
    this.bundlesMaybeChanged();
    return true;
  }

  listEntries(): DevEntry[] {
    return [...this.entries.values()]
      .map((r) => structuredClone(r.entry))
      .sort((a, b) => compareStrings(a.id, b.id));
  }

  // --------------------------------------------------------------- controls

  /** Re-signs one entry's SVID (or every entry's) with a new key and serial and pushes it. */
  async rotateSvids(entryId?: string): Promise<void> {
    this.assertOpen();
    let records: EntryRecord[];
    if (entryId === undefined) {
      records = [...this.entries.values()];
    } else {
      const record = this.entries.get(entryId);
      if (!record) throw new Error(`no entry ${entryId}`);
      records = [record];
    }
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
    const ca = await this.mintAgentCa();
    this.cas.push(ca);
    this.ownBundleChanged();
    await this.track(this.issue([...this.entries.values()]));
  }

  /** Ends a rotation: the bundle keeps only the newest CA. */
  dropOldCa(): void {
    this.assertOpen();
    if (this.cas.length <= 1) return;
    this.cas = this.cas.slice(-1);
    this.ownBundleChanged();
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
    if (td === `spiffe://${this.trustDomain}`) throw new Error('use rotateCa()/dropOldCa() for the own trust domain');
    const previous = this.federatedBundles.get(td);
    if (previous && Buffer.concat(previous).equals(Buffer.concat(certDers))) return;
    if (certDers.length === 0) this.federatedBundles.delete(td);
    else this.federatedBundles.set(td, certDers.map((der) => Buffer.from(der)));
    this.bundlesMaybeChanged();
    for (const subscriber of this.svidSubscribers) {
      if (this.matchingRecords(subscriber.selectorKeys).some((r) => r.entry.federatesWith.includes(td))) {
        this.deliverSvids(subscriber);
      }
    }
  }

  /**
   * Replaces an entry's current SVID with exactly the given material — no
   * checks — and pushes it, so driver tests can serve SVIDs that are expired,
   * mismatched, carry extra SANs or a non-PKCS#8 key. Auto-rotation leaves an
   * injected SVID alone.
   */
  replaceSvid(entryId: string, material: InjectedSvid): void {
    this.assertOpen();
    const record = this.entries.get(entryId);
    if (!record) throw new Error(`no entry ${entryId}`);
    const leaf = material.certChain[0];
    let serialHex = '';
    let notAfter = new Date(0);
    if (leaf) {
      try {
        const cert = new X509Certificate(leaf);
        serialHex = cert.serialNumber.toLowerCase();
        notAfter = new Date(cert.validTo);
      } catch {
        // Deliberately unparseable material is allowed.
      }
    }
    record.generation++;
    clearTimeout(record.rotationTimer);
    record.svid = {
      certChain: material.certChain.map((der) => Buffer.from(der)),
      keyPkcs8Der: Buffer.from(material.keyPkcs8Der),
      serialHex,
      notAfter,
      expiresAt: material.expiresAt ?? Math.floor(notAfter.getTime() / 1000),
    };
    this.deliverToSubscribersOf([record]);
  }

  /**
   * Takes effect at each stream's next message, never by itself: the real
   * agent re-checks the caller only when it has something to send (F2).
   */
  setCallerAuthorization(mode: CallerAuthorization): void {
    this.callerAuthorization = mode;
  }

  /** Applies to streams opened afterwards. */
  setFirstResponseDelay(ms: number): void {
    this.firstResponseDelayMs = ms;
  }

  /**
   * Goes away like a crashed or stopped agent: connections are cut without a
   * goodbye and the socket file disappears, so clients must cope with ENOENT
   * until it is back.
   */
  /**
   * Dies like a SIGKILLed agent: connections cut and, unlike stop(), a stale
   * socket file left behind, which the next resume() replaces in place (the
   * real agent removes the file only on a clean stop).
   */
  async crash(): Promise<void> {
    await this.stop();
    await leaveStaleSocket(this.socketPath);
  }

  async stop(): Promise<void> {
    // The connections are cut at the socket level, without HTTP/2 GOAWAY or
    // RST_STREAM, because that is what a client sees when the agent process
    // dies: grpc-js then reports UNAVAILABLE, as against a real agent. A bare
    // forceShutdown() would instead cancel each stream (status CANCELLED), which
    // a client could mistake for its own cancellation.
    for (const socket of this.connections) socket.destroy();
    this.connections.clear();
    this.listener?.close();
    this.listener = null;
    this.server?.forceShutdown();
    this.server = null;
    for (const subscriber of this.svidSubscribers) {
      subscriber.done = true;
      clearTimeout(subscriber.firstDelayTimer);
    }
    for (const subscriber of this.bundleSubscribers) subscriber.done = true;
    this.svidSubscribers.clear();
    this.bundleSubscribers.clear();
    this.streamCountChanged();
    await fs.rm(this.socketPath, { force: true });
  }

  /** Listens again on the same path with the same CA, entries and SVIDs. */
  async resume(): Promise<void> {
    this.assertOpen();
    if (this.listener) return;
    await this.listen();
  }

  /** stop(), wait `downtimeMs`, resume(): clients must reconnect to a recreated socket file. */
  async restart(options: { downtimeMs?: number } = {}): Promise<void> {
    await this.stop();
    // Not unref'd: the caller awaits it, and an unref'd timer would let the
    // process exit with the restart half done.
    if (options.downtimeMs) await new Promise((resolve) => setTimeout(resolve, options.downtimeMs));
    await this.resume();
  }

  /** Stops for good; leaves no timer or handle behind, so node:test can exit. */
  async close(): Promise<void> {
    this.closed = true;
    for (const record of this.entries.values()) clearTimeout(record.rotationTimer);
    await this.stop();
    await Promise.allSettled([...this.inflight]);
    for (const record of this.entries.values()) clearTimeout(record.rotationTimer);
    for (const notify of this.streamCountListeners) notify();
  }

  // ------------------------------------------- raw bundle injection (fuzzing)
  // Added for test/integration/fuzz-agent-material.test.ts (hardening issue #8).

  /**
   * Sends every open bundle stream exactly `raw` as the bundle of
   * `trustDomainId` (`spiffe://td`), next to whatever that stream was last
   * sent — no checks, so garbage, truncated or empty DER reaches the client as
   * a real agent bug would send it. The agent's own CAs and federated bundles
   * are untouched, and SVID streams are not woken; {@link resendBundles} sends
   * the held bundles again. Streams opened later never see the injection.
   */
  injectBundle(trustDomainId: string, raw: Buffer): void {
    this.assertOpen();
    for (const subscriber of this.bundleSubscribers) {
      if (subscriber.done) continue;
      subscriber.sent[trustDomainId] = Buffer.from(raw);
      subscriber.call.write({ ca_certificates: { ...subscriber.sent } });
    }
  }

  /**
   * Sends the bundles the agent holds to every open bundle stream, also when
   * nothing changed: an identical re-send (which the real agent occasionally
   * does, F9), or the end of an {@link injectBundle}.
   */
  resendBundles(): void {
    this.assertOpen();
    for (const subscriber of this.bundleSubscribers) this.writeBundles(subscriber);
  }

  // ---------------------------------------------------------- introspection

  /** The own trust domain's CA certificates, oldest first. */
  bundleDers(): Buffer[] {
    return this.cas.map((ca) => ca.certDer);
  }

  /** The CA that signs new SVIDs, for tests that mint their own SVIDs under it. */
  activeCa(): MintedCa {
    const ca = this.cas[this.cas.length - 1];
    if (!ca) throw new Error('DevAgent has no CA yet');
    return ca;
  }

  currentSvid(entryId: string): CurrentSvid {
    const record = this.entries.get(entryId);
    if (!record) throw new Error(`no entry ${entryId}`);
    const svid = record.svid;
    const leaf = svid?.certChain[0];
    if (!svid || !leaf) throw new Error(`entry ${entryId} has no SVID yet; await addEntry() first`);
    return {
      certDer: leaf,
      certChain: [...svid.certChain],
      keyPkcs8Der: svid.keyPkcs8Der,
      serialHex: svid.serialHex,
      spiffeId: record.entry.spiffeId,
      notAfter: svid.notAfter,
    };
  }

  /** The selectors of every SubscribeToX509SVIDs request received, in order, rejected ones included. */
  receivedSelectorSets(): Selector[][] {
    return this.selectorLog.map((set) => set.map((s) => ({ ...s })));
  }

  openSvidStreams(): number {
    return this.svidSubscribers.size;
  }

  openBundleStreams(): number {
    return this.bundleSubscribers.size;
  }

  /** Resolves once exactly `n` SVID streams are open. */
  waitForSvidStreams(n: number, timeoutMs = 5000): Promise<void> {
    return this.waitForStreamCount('SVID', () => this.svidSubscribers.size, n, timeoutMs);
  }

  /** Resolves once exactly `n` bundle streams are open. */
  waitForBundleStreams(n: number, timeoutMs = 5000): Promise<void> {
    return this.waitForStreamCount('bundle', () => this.bundleSubscribers.size, n, timeoutMs);
  }

  // -------------------------------------------------------------- transport

  private async listen(): Promise<void> {
    // F1: the agent creates the parent directory and replaces whatever file
    // sits at the socket path (a stale socket from a crash).
    await fs.mkdir(path.dirname(this.socketPath), { recursive: true, mode: 0o755 });
    await fs.rm(this.socketPath, { force: true });
    const server = new grpc.Server();
    server.addService(delegatedIdentityService().service, {
      SubscribeToX509SVIDs: (call: SvidCall) => this.onSubscribeToX509Svids(call),
      SubscribeToX509Bundles: (call: BundleCall) => this.onSubscribeToX509Bundles(call),
      FetchJWTSVIDs: (_call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        callback({ code: grpc.status.UNIMPLEMENTED, details: 'the development agent does not issue JWT-SVIDs' });
      },
      SubscribeToJWTBundles: (call: grpc.ServerWritableStream<unknown, unknown>) => {
        endWithStatus(call, grpc.status.UNIMPLEMENTED, 'the development agent does not serve JWT bundles');
      },
    });
    // Connections are accepted here and handed to grpc-js, so that stop() can
    // sever them the way a crash does.
    const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
    const listener = net.createServer((socket) => {
      this.connections.add(socket);
      socket.on('close', () => this.connections.delete(socket));
      injector.injectConnection(socket);
    });
    await new Promise<void>((resolve, reject) => {
      listener.once('error', reject);
      listener.listen(this.socketPath, () => {
        listener.off('error', reject);
        resolve();
      });
    });
    // F1: only root or the agent's uid/gid may connect.
    await fs.chmod(this.socketPath, 0o770);
    if (this.closed) {
      listener.close();
      server.forceShutdown();
      return;
    }
    this.server = server;
    this.listener = listener;
  }

  private onSubscribeToX509Svids(call: SvidCall): void {
    const request = call.request;
    const selectors = request.selectors ?? [];
    this.selectorLog.push(selectors.map((s) => ({ type: s.type, value: s.value })));

    // F2 then F3: the caller is checked before the request is looked at.
    const denied = this.authorizationFailure();
    if (denied) return endWithStatus(call, grpc.status.PERMISSION_DENIED, denied);
    const pid = request.pid ?? 0;
    if ((selectors.length === 0) === (pid === 0)) {
      return endWithStatus(call, grpc.status.INVALID_ARGUMENT, 'must provide either selectors or non-zero PID, but not both');
    }
    if (pid !== 0) {
      // The real agent would attest that PID with its own workload attestors.
      return endWithStatus(call, grpc.status.UNIMPLEMENTED, 'the development agent only supports selectors, not pid');
    }
    if (!selectors.every(isValidSelector)) {
      return endWithStatus(call, grpc.status.INVALID_ARGUMENT, 'could not parse provided selectors');
    }

    const subscriber: SvidSubscriber = {
      call,
      selectorKeys: new Set(selectors.map(selectorKey)),
      firstSent: false,
      firstDelayTimer: undefined,
      done: false,
    };
    this.svidSubscribers.add(subscriber);
    this.streamCountChanged();
    call.on('cancelled', () => this.detachSvidSubscriber(subscriber));

    // F5: with nothing matching the answer is immediate; with matches it comes
    // only once SVIDs are cached, which the delay stands in for.
    if (this.firstResponseDelayMs > 0 && this.matchingRecords(subscriber.selectorKeys).length > 0) {
      subscriber.firstDelayTimer = setTimeout(() => {
        subscriber.firstDelayTimer = undefined;
        this.deliverSvids(subscriber);
      }, this.firstResponseDelayMs);
      subscriber.firstDelayTimer.unref();
    } else {
      this.deliverSvids(subscriber);
    }
  }

  private onSubscribeToX509Bundles(call: BundleCall): void {
    const denied = this.authorizationFailure();
    if (denied) return endWithStatus(call, grpc.status.PERMISSION_DENIED, denied);
    const subscriber: BundleSubscriber = { call, sent: {}, done: false };
    this.bundleSubscribers.add(subscriber);
    this.streamCountChanged();
    call.on('cancelled', () => this.detachBundleSubscriber(subscriber));
    // F9: the current bundles go out at once, without re-checking the caller.
    this.writeBundles(subscriber);
  }

  // ------------------------------------------------------------- delivery

  /** Sends the subscriber a full snapshot (F6), unless its first response must still wait. */
  private deliverSvids(subscriber: SvidSubscriber): void {
    if (subscriber.done) return;
    const matched = this.matchingRecords(subscriber.selectorKeys);
    if (!subscriber.firstSent) {
      if (subscriber.firstDelayTimer) return;
      // F5: the real agent sends nothing until every matching SVID is cached;
      // the signing that completes it calls back here.
      if (matched.some((r) => r.svid === undefined)) return;
    }
    const denied = this.authorizationFailure();
    if (denied) {
      this.detachSvidSubscriber(subscriber);
      return endWithStatus(subscriber.call, grpc.status.PERMISSION_DENIED, denied);
    }
    subscriber.firstSent = true;
    subscriber.call.write(this.svidSnapshot(matched));
  }

  private svidSnapshot(matched: EntryRecord[]): SubscribeToX509SvidsResponse {
    const x509Svids: X509SvidWithKey[] = [];
    const federatesWith = new Set<string>();
    for (const record of matched) {
      // F4 admin entries are never handed out; F6 identities whose SVID is
      // not cached yet are left out of the snapshot rather than waited for.
      if (record.entry.admin || !record.svid) continue;
      const id = parseSpiffeId(record.entry.spiffeId);
      x509Svids.push({
        x509_svid: {
          cert_chain: record.svid.certChain,
          id: { trust_domain: id.trustDomain, path: id.path },
          expires_at: record.svid.expiresAt,
          hint: record.entry.hint,
        },
        x509_svid_key: record.svid.keyPkcs8Der,
      });
      // F7: only trust domains whose bundle the agent actually holds.
      for (const td of record.entry.federatesWith) if (this.federatedBundles.has(td)) federatesWith.add(td);
    }
    return { x509_svids: x509Svids, federates_with: [...federatesWith].sort(compareStrings) };
  }

  /** Every stream whose selectors cover any of these entries. */
  private deliverToSubscribersOf(records: EntryRecord[]): void {
    for (const subscriber of this.svidSubscribers) {
      if (records.some((r) => r.selectorKeys.every((key) => subscriber.selectorKeys.has(key)))) {
        this.deliverSvids(subscriber);
      }
    }
  }

  /** F6: an own-trust-domain bundle change wakes every subscriber, matched or not. */
  private ownBundleChanged(): void {
    this.bundlesMaybeChanged();
    for (const subscriber of this.svidSubscribers) this.deliverSvids(subscriber);
  }

  private bundlesMaybeChanged(): void {
    const signature = this.bundleSignature();
    if (signature === this.lastBundleSignature) return;
    this.lastBundleSignature = signature;
    for (const subscriber of this.bundleSubscribers) {
      const denied = this.authorizationFailure();
      if (denied) {
        this.detachBundleSubscriber(subscriber);
        endWithStatus(subscriber.call, grpc.status.PERMISSION_DENIED, denied);
        continue;
      }
      this.writeBundles(subscriber);
    }
  }

  private writeBundles(subscriber: BundleSubscriber): void {
    if (subscriber.done) return;
    for (const [td, der] of this.heldBundles()) subscriber.sent[td] = der;
    subscriber.call.write({ ca_certificates: { ...subscriber.sent } });
  }

  /** Own trust domain plus the federated bundles some entry federates with (F9), as concatenated DER (F8). */
  private heldBundles(): Map<string, Buffer> {
    const held = new Map<string, Buffer>([[`spiffe://${this.trustDomain}`, Buffer.concat(this.bundleDers())]]);
    const referenced = new Set<string>();
    for (const record of this.entries.values()) for (const td of record.entry.federatesWith) referenced.add(td);
    for (const td of [...referenced].sort(compareStrings)) {
      const certs = this.federatedBundles.get(td);
      if (certs) held.set(td, Buffer.concat(certs));
    }
    return held;
  }

  private bundleSignature(): string {
    return [...this.heldBundles()].map(([td, der]) => `${td}=${der.toString('base64')}`).join(';');
  }

  /** F4: entries all of whose selectors are in the set, sorted by entry ID. */
  private matchingRecords(selectorKeys: Set<string>): EntryRecord[] {
    return [...this.entries.values()]
      .filter((r) => r.selectorKeys.every((key) => selectorKeys.has(key)))
      .sort((a, b) => compareStrings(a.entry.id, b.entry.id));
  }

  /** Null when authorized, else the PERMISSION_DENIED message of F2. */
  private authorizationFailure(): string | null {
    switch (this.callerAuthorization) {
      case 'authorized':
        return null;
      case 'no-entry':
        return 'no identity issued';
      case 'not-delegate':
        return 'caller not configured as an authorized delegate';
    }
  }

  private detachSvidSubscriber(subscriber: SvidSubscriber): void {
    subscriber.done = true;
    clearTimeout(subscriber.firstDelayTimer);
    if (this.svidSubscribers.delete(subscriber)) this.streamCountChanged();
  }

  private detachBundleSubscriber(subscriber: BundleSubscriber): void {
    subscriber.done = true;
    if (this.bundleSubscribers.delete(subscriber)) this.streamCountChanged();
  }

  // -------------------------------------------------------------- signing

  /**
   * Signs fresh SVIDs (new key, new serial) with the active CA, then pushes one
   * snapshot per affected stream — the agent batches a sync's signings into one
   * `UpdateSVIDs` notification.
   */
  private async issue(records: EntryRecord[]): Promise<void> {
    const ca = this.activeCa();
    const issued: EntryRecord[] = [];
    await Promise.all(
      records.map(async (record) => {
        const generation = ++record.generation;
        const now = Date.now();
        // SPIRE never signs past its CA's NotAfter.
        const notAfter = new Date(Math.min(now + record.entry.ttlSeconds * 1000, ca.notAfter.getTime()));
        const minted = await mintSvid({ ca, spiffeId: record.entry.spiffeId, notAfter });
        if (this.closed || record.generation !== generation || this.entries.get(record.entry.id) !== record) return;
        record.svid = {
          certChain: minted.certChain,
          keyPkcs8Der: minted.keyPkcs8Der,
          serialHex: minted.serialHex,
          notAfter: minted.notAfter,
          expiresAt: Math.floor(minted.notAfter.getTime() / 1000),
        };
        this.scheduleRotation(record, now);
        issued.push(record);
      }),
    );
    if (issued.length > 0) this.deliverToSubscribersOf(issued);
  }

  /**
   * ShouldRotateX509 rotates at half the lifetime. Measured from issuance, not
   * from the backdated NotBefore: with a few-second test TTL the 10 s backdate
   * would put the half-life in the past and rotate in a tight loop.
   */
  private scheduleRotation(record: EntryRecord, issuedAtMs: number): void {
    clearTimeout(record.rotationTimer);
    record.rotationTimer = undefined;
    if (!this.autoRotate || !record.svid) return;
    const delay = Math.max(MIN_ROTATION_DELAY_MS, (record.svid.notAfter.getTime() - issuedAtMs) / 2);
    record.rotationTimer = setTimeout(() => {
      record.rotationTimer = undefined;
      if (this.closed || this.entries.get(record.entry.id) !== record) return;
      this.track(this.issue([record])).catch((err: unknown) => {
        if (!this.closed) process.emitWarning(`DevAgent auto-rotation of ${record.entry.id} failed: ${String(err)}`);
      });
    }, delay);
    record.rotationTimer.unref();
  }

  private async mintAgentCa(): Promise<MintedCa> {
    const lifetimeMs = Math.max(CA_MIN_TTL_MS, 4 * this.svidTtlSeconds * 1000);
    return mintCa({ trustDomain: this.trustDomain, notAfter: new Date(Date.now() + lifetimeMs) });
  }

  // ---------------------------------------------------------------- misc

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

  private streamCountChanged(): void {
    for (const notify of this.streamCountListeners) notify();
  }

  private waitForStreamCount(kind: string, count: () => number, n: number, timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (count() === n) {
          finish();
          resolve();
        } else if (this.closed) {
          finish();
          reject(new Error(`DevAgent closed while waiting for ${n} ${kind} streams`));
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${n} open ${kind} streams; ${count()} open`));
      }, timeoutMs);
      const finish = (): void => {
        clearTimeout(timer);
        this.streamCountListeners.delete(check);
      };
      this.streamCountListeners.add(check);
      check();
    });
  }
}

// ------------------------------------------------------------------ helpers

function endWithStatus(call: grpc.ServerWritableStream<unknown, unknown>, code: grpc.status, details: string): void {
  // grpc-js turns an 'error' event on a server stream into the call's final status.
  const error: grpc.ServerErrorResponse = Object.assign(new Error(details), { code, details });
  call.emit('error', error);
}

/** `api.SelectorsFromProto` rules (F3). */
function isValidSelector(selector: Selector): boolean {
  return selector.type !== '' && !selector.type.includes(':') && selector.value !== '';
}

function selectorKey(selector: Selector): string {
  // Unambiguous because a valid type never contains ':'.
  return `${selector.type}:${selector.value}`;
}

function parseSelectorString(text: string): Selector {
  const colon = text.indexOf(':');
  const selector = { type: colon < 0 ? '' : text.slice(0, colon), value: colon < 0 ? '' : text.slice(colon + 1) };
  if (!isValidSelector(selector)) throw new Error(`selector "${text}" is not "type:value"`);
  return selector;
}

function parseSpiffeId(id: string): { trustDomain: string; path: string } {
  const match = /^spiffe:\/\/([a-z0-9._-]+)(\/[^?#]+)$/.exec(id);
  if (!match?.[1] || !match[2]) throw new Error(`"${id}" is not a SPIFFE ID with a path`);
  return { trustDomain: match[1], path: match[2] };
}

/** `td` or `spiffe://td` → `spiffe://td`, the form the API uses (F7). */
function trustDomainId(text: string): string {
  const name = text.startsWith('spiffe://') ? text.slice('spiffe://'.length) : text;
  if (!/^[a-z0-9._-]+$/.test(name)) throw new Error(`"${text}" is not a trust domain`);
  return `spiffe://${name}`;
}

/** Byte order like Go's sort.Strings, not locale order. */
function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** A socket file whose listener was killed: connecting to it fails with ECONNREFUSED. */
async function leaveStaleSocket(socketPath: string): Promise<void> {
  const child = spawn(process.execPath, [
    '-e',
    `require('net').createServer().listen(${JSON.stringify(socketPath)}, () => process.kill(process.pid, 'SIGKILL'))`,
  ]);
  await new Promise((resolve) => child.once('exit', resolve));
}
