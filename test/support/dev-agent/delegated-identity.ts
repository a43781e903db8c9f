/**
 * The development agent's DelegatedIdentity gRPC service: the caller check that
 * stands in for peer attestation, the SVID and bundle streams with their
 * subscribers, and the snapshots they are sent (docs/design.md §6, F2–F9).
 * What to send comes from the {@link EntryStore}; the agent tells this service
 * when it changed.
 */
import * as grpc from '@grpc/grpc-js';
import { delegatedIdentityService } from '../grpc-services.js';
import {
  type FetchJwtSvidsRequest,
  type FetchJwtSvidsResponse,
  type JwtSvidMessage,
  type Selector,
  type SubscribeToJwtBundlesResponse,
  type SubscribeToX509BundlesResponse,
  type SubscribeToX509SvidsRequest,
  type SubscribeToX509SvidsResponse,
  type X509SvidWithKey,
} from '../../../src/spire/messages.js';
import type { EntryStore } from './entry-store.js';
import type { JwtIssuer } from './jwt-issuer.js';
import { compareStrings, isValidSelector, parseSpiffeId, selectorKey } from './spiffe-names.js';
import type { CallerAuthorization, EntryRecord } from './types.js';

type SvidCall = grpc.ServerWritableStream<SubscribeToX509SvidsRequest, SubscribeToX509SvidsResponse>;
type BundleCall = grpc.ServerWritableStream<Record<string, never>, SubscribeToX509BundlesResponse>;
type JwtBundleCall = grpc.ServerWritableStream<Record<string, never>, SubscribeToJwtBundlesResponse>;
type JwtFetchCall = grpc.ServerUnaryCall<FetchJwtSvidsRequest, FetchJwtSvidsResponse>;

interface SvidSubscriber {
  call: SvidCall;
  selectorKeys: Set<string>;
  firstSent: boolean;
  firstDelayTimer: NodeJS.Timeout | undefined;
  done: boolean;
  /** performance.now() when the request reached the handler. */
  receivedAt: number;
  /** A response with SVIDs has been sent (the first response may have had none). */
  svidsSent: boolean;
}

/** How long this agent took to answer one SubscribeToX509SVIDs with its first SVIDs. */
export interface FirstSvidResponseTiming {
  /** The request's selectors, "type:value". */
  selectors: string[];
  /** From the request reaching the handler to the first response with SVIDs, built and about to be written, in ms. */
  handlingMs: number;
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

export interface DelegatedIdentityOptions {
  callerAuthorization: CallerAuthorization;
  firstResponseDelayMs: number;
  isClosed: () => boolean;
  jwt: JwtIssuer;
}

export class DelegatedIdentityService {
  /** Checked whenever a stream has something to send (F2). */
  callerAuthorization: CallerAuthorization;
  /** Applies to streams opened afterwards (F5). */
  firstResponseDelayMs: number;

  private readonly svidSubscribers = new Set<SvidSubscriber>();
  private readonly bundleSubscribers = new Set<BundleSubscriber>();
  private readonly jwtBundleSubscribers = new Set<{ call: JwtBundleCall; done: boolean }>();
  private readonly jwtFetchLog: FetchJwtSvidsRequest[] = [];
  /** While set, every FetchJWTSVIDs call that gets past the checks fails with it (the agent's signing failing). */
  jwtFetchFault: { code: grpc.status; details: string } | undefined;
  private readonly jwt: JwtIssuer;
  private readonly selectorLog: Selector[][] = [];
  private readonly firstSvidResponseLog: FirstSvidResponseTiming[] = [];
  private lastBundleSignature: string;
  private readonly streamCountListeners = new Set<() => void>();
  private readonly isClosed: () => boolean;

  constructor(
    private readonly store: EntryStore,
    options: DelegatedIdentityOptions,
  ) {
    this.callerAuthorization = options.callerAuthorization;
    this.firstResponseDelayMs = options.firstResponseDelayMs;
    this.isClosed = options.isClosed;
    this.jwt = options.jwt;
    this.lastBundleSignature = store.bundleSignature();
  }

  /** Serves the API on `server`. */
  addTo(server: grpc.Server): void {
    server.addService(delegatedIdentityService().service, {
      SubscribeToX509SVIDs: (call: SvidCall) => this.onSubscribeToX509Svids(call),
      SubscribeToX509Bundles: (call: BundleCall) => this.onSubscribeToX509Bundles(call),
      FetchJWTSVIDs: (call: JwtFetchCall, callback: grpc.sendUnaryData<FetchJwtSvidsResponse>) => this.onFetchJwtSvids(call, callback),
      SubscribeToJWTBundles: (call: JwtBundleCall) => this.onSubscribeToJwtBundles(call),
    });
  }

  /**
   * service.go's FetchJWTSVIDs: the audience first, then the caller, then the
   * selectors; one token per matching non-admin entry, sorted by entry ID;
   * none: PERMISSION_DENIED "no identity issued".
   */
  private onFetchJwtSvids(call: JwtFetchCall, callback: grpc.sendUnaryData<FetchJwtSvidsResponse>): void {
    const request = call.request;
    const audience = request.audience ?? [];
    const selectors = request.selectors ?? [];
    this.jwtFetchLog.push({ audience: [...audience], selectors: selectors.map((s) => ({ type: s.type, value: s.value })), pid: request.pid ?? 0 });
    const fail = (code: grpc.status, details: string): void => callback({ code, details });
    if (audience.length === 0) return fail(grpc.status.INVALID_ARGUMENT, 'audience must be specified');
    const denied = this.authorizationFailure();
    if (denied) return fail(grpc.status.PERMISSION_DENIED, denied);
    if ((selectors.length === 0) === ((request.pid ?? 0) === 0)) {
      return fail(grpc.status.INVALID_ARGUMENT, 'must provide either selectors or non-zero PID, but not both');
    }
    if (!selectors.every(isValidSelector)) return fail(grpc.status.INVALID_ARGUMENT, 'could not parse provided selectors');
    const matched = this.store.matching(new Set(selectors.map(selectorKey))).filter((record) => !record.entry.admin);
    if (matched.length === 0) return fail(grpc.status.PERMISSION_DENIED, 'no identity issued');
    if (this.jwtFetchFault) return fail(this.jwtFetchFault.code, this.jwtFetchFault.details);
    const svids: JwtSvidMessage[] = matched.map((record) => {
      const issued = this.jwt.issue(record.entry.id, record.entry.spiffeId, audience);
      const id = parseSpiffeId(record.entry.spiffeId);
      return {
        token: issued.token,
        id: { trust_domain: id.trustDomain, path: id.path },
        expires_at: issued.expiresAt,
        issued_at: issued.issuedAt,
        hint: record.entry.hint,
      };
    });
    callback(null, { svids });
  }

  private onSubscribeToJwtBundles(call: JwtBundleCall): void {
    const denied = this.authorizationFailure();
    if (denied) return endWithStatus(call, grpc.status.PERMISSION_DENIED, denied);
    const subscriber = { call, done: false };
    this.jwtBundleSubscribers.add(subscriber);
    call.on('cancelled', () => {
      subscriber.done = true;
      this.jwtBundleSubscribers.delete(subscriber);
    });
    call.write(this.jwtBundles());
  }

  /** The own trust domain's JWT signing keys changed: every JWT bundle stream gets the new map. */
  jwtBundlesChanged(): void {
    for (const subscriber of this.jwtBundleSubscribers) if (!subscriber.done) subscriber.call.write(this.jwtBundles());
  }

  private jwtBundles(): SubscribeToJwtBundlesResponse {
    return { bundles: { [`spiffe://${this.jwt.name}`]: this.jwt.jwks() } };
  }

  /** Every FetchJWTSVIDs request received, in order, rejected ones included. */
  receivedJwtFetches(): FetchJwtSvidsRequest[] {
    return this.jwtFetchLog.map((request) => structuredClone(request));
  }

  openJwtBundleStreams(): number {
    return this.jwtBundleSubscribers.size;
  }

  // --------------------------------------------------------------- requests

  private onSubscribeToX509Svids(call: SvidCall): void {
    const receivedAt = performance.now();
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
      receivedAt,
      svidsSent: false,
    };
    this.svidSubscribers.add(subscriber);
    this.streamCountChanged();
    call.on('cancelled', () => this.detachSvidSubscriber(subscriber));

    // F5: with nothing matching the answer is immediate; with matches it comes
    // only once SVIDs are cached, which the delay stands in for.
    if (this.firstResponseDelayMs > 0 && this.store.matching(subscriber.selectorKeys).length > 0) {
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

  // ---------------------------------------------------------------- changes

  /** Every stream whose selectors cover any of these entries. */
  deliverToSubscribersOf(records: EntryRecord[]): void {
    for (const subscriber of this.svidSubscribers) {
      if (records.some((r) => r.selectorKeys.every((key) => subscriber.selectorKeys.has(key)))) {
        this.deliverSvids(subscriber);
      }
    }
  }

  /** F6: an own-trust-domain bundle change wakes every subscriber, matched or not. */
  ownBundleChanged(): void {
    this.bundlesMaybeChanged();
    for (const subscriber of this.svidSubscribers) this.deliverSvids(subscriber);
  }

  /** A federated bundle changed: bundle streams, and the SVID streams whose entries federate with `td` (F7). */
  federatedBundleChanged(td: string): void {
    this.bundlesMaybeChanged();
    for (const subscriber of this.svidSubscribers) {
      if (this.store.matching(subscriber.selectorKeys).some((r) => r.entry.federatesWith.includes(td))) {
        this.deliverSvids(subscriber);
      }
    }
  }

  /** Sends the held bundles to every bundle stream if they differ from the last ones sent. */
  bundlesMaybeChanged(): void {
    const signature = this.store.bundleSignature();
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

  /** Sends every SVID stream its current SVIDs again, unchanged, as a bundle change does (F6). */
  resendSvids(): void {
    for (const subscriber of this.svidSubscribers) this.deliverSvids(subscriber);
  }

  /** Sends the held bundles to every open bundle stream, changed or not. */
  resendBundles(): void {
    for (const subscriber of this.bundleSubscribers) this.writeBundles(subscriber);
  }

  /** Sends every open bundle stream `raw` as the bundle of `trustDomainId`, unchecked. */
  injectBundle(trustDomainId: string, raw: Buffer): void {
    for (const subscriber of this.bundleSubscribers) {
      if (subscriber.done) continue;
      subscriber.sent[trustDomainId] = Buffer.from(raw);
      subscriber.call.write({ ca_certificates: { ...subscriber.sent } });
    }
  }

  /** Forgets every stream, whose connection is gone (the agent stopped). */
  dropAllStreams(): void {
    for (const subscriber of this.svidSubscribers) {
      subscriber.done = true;
      clearTimeout(subscriber.firstDelayTimer);
    }
    for (const subscriber of this.bundleSubscribers) subscriber.done = true;
    for (const subscriber of this.jwtBundleSubscribers) subscriber.done = true;
    this.jwtBundleSubscribers.clear();
    this.svidSubscribers.clear();
    this.bundleSubscribers.clear();
    this.streamCountChanged();
  }

  // --------------------------------------------------------------- delivery

  /** Sends the subscriber a full snapshot (F6), unless its first response must still wait. */
  private deliverSvids(subscriber: SvidSubscriber): void {
    if (subscriber.done) return;
    const matched = this.store.matching(subscriber.selectorKeys);
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
    const snapshot = this.svidSnapshot(matched);
    if (!subscriber.svidsSent && snapshot.x509_svids.length > 0) {
      subscriber.svidsSent = true;
      this.firstSvidResponseLog.push({ selectors: [...subscriber.selectorKeys], handlingMs: performance.now() - subscriber.receivedAt });
    }
    subscriber.firstSent = true;
    subscriber.call.write(snapshot);
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
      for (const td of record.entry.federatesWith) if (this.store.hasFederatedBundle(td)) federatesWith.add(td);
    }
    return { x509_svids: x509Svids, federates_with: [...federatesWith].sort(compareStrings) };
  }

  private writeBundles(subscriber: BundleSubscriber): void {
    if (subscriber.done) return;
    for (const [td, der] of this.store.heldBundles()) subscriber.sent[td] = der;
    subscriber.call.write({ ca_certificates: { ...subscriber.sent } });
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

  // ---------------------------------------------------------- introspection

  /** The selectors of every SubscribeToX509SVIDs request received, in order, rejected ones included. */
  receivedSelectorSets(): Selector[][] {
    return this.selectorLog.map((set) => set.map((s) => ({ ...s })));
  }

  /**
   * The time this agent itself took to answer each SVID subscription, in
   * order: what a benchmark subtracts to get the caller's own overhead.
   */
  firstSvidResponseTimings(): FirstSvidResponseTiming[] {
    return this.firstSvidResponseLog.map((t) => ({ ...t, selectors: [...t.selectors] }));
  }

  openSvidStreams(): number {
    return this.svidSubscribers.size;
  }

  openBundleStreams(): number {
    return this.bundleSubscribers.size;
  }

  /** Resolves once exactly `n` streams of the kind are open; rejects on timeout or once the agent is closed. */
  waitForStreamCount(kind: 'SVID' | 'bundle', n: number, timeoutMs: number): Promise<void> {
    const count = kind === 'SVID' ? () => this.svidSubscribers.size : () => this.bundleSubscribers.size;
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (count() === n) {
          finish();
          resolve();
        } else if (this.isClosed()) {
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

  /** Wakes every {@link waitForStreamCount}, e.g. so that they notice the agent closed. */
  streamCountChanged(): void {
    for (const notify of this.streamCountListeners) notify();
  }
}

/** Ends a server stream with a status, as a handler returning an error does. */
function endWithStatus(call: grpc.ServerWritableStream<unknown, unknown>, code: grpc.status, details: string): void {
  // grpc-js turns an 'error' event on a server stream into the call's final status.
  const error: grpc.ServerErrorResponse = Object.assign(new Error(details), { code, details });
  call.emit('error', error);
}
