/**
 * One live volume: its SVID stream, its share of the node-wide bundle stream,
 * and its single writer. Every SVID response and every change of its trust
 * domain's bundle marks the volume dirty; one sync loop per volume turns the
 * newest state into files, so writes never overlap and a burst of updates
 * becomes one swap (docs/design.md invariant 4). Identical content writes nothing;
 * an empty or invalid response keeps the previous files (invariants 5, 6).
 * A write that fails is retried with the newest material on a capped, jittered
 * backoff until it lands (write-retry.ts), without waiting for the agent.
 */
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { status } from '../grpc-status.js';
import { AtomicWriter, digestOfFiles, type FileSpec, type WriteOptions, type WriteResult } from '../fs/atomic-writer.js';
import { inlineFs, threadPoolFs } from '../fs/writer-fs.js';
import { DriverError, errorMessage } from '../errors.js';
import { lazyChild, roundMs, type LogFields, type Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics-api.js';
import type { AgentStreamConnection } from '../spire/agent-connection.js';
import { describeStreamFailure, isConfigurationFailure, type StreamFailure } from '../spire/agent-errors.js';
import type { BundleSource } from '../spire/bundle-watcher.js';
import type { JwtBundleSource } from '../spire/jwt-bundle-watcher.js';
import type { Selector, SubscribeToX509SvidsResponse } from '../spire/messages.js';
import { ResilientStream, systemClock, type Clock } from '../spire/resilient-stream.js';
import { formatSelectors } from '../spire/selectors.js';
import { parseSubjectAltName } from '../x509/subject-alt-name.js';
import { checkSvid, type CheckedSvid, type LeafCheckMemo } from '../x509/svid-check.js';
import { DEFAULT_COMBINED_BUNDLE_FILE, buildFederatedBundleFiles, federatedBundleModeOf, federatedTrustDomainIds } from './federated-bundles.js';
import type { VolumeRecord } from './metadata-store.js';
import { buildVolumeFiles, keyFileMode, loadPkcs12Support, pickSvid, type PickedSvid } from './volume-files.js';
import { buildJwtFiles } from './jwt-files.js';
import { JwtRefresher } from './jwt-refresh.js';
import { assessVolumeHealth, type CurrentSvid, type VolumeCondition } from './volume-health.js';
import { WriteRetry, errnoCodeOf, writeFailureReason, type WriteRetryOptions } from './write-retry.js';

/** A FetchJWTSVIDs call that takes longer fails, and the refresher's backoff retries it. */
const JWT_FETCH_DEADLINE_MS = 30_000;

/** What a volume needs from the writer of its directory (AtomicWriter in production). */
export interface VolumeWriter {
  write(files: readonly FileSpec[], options?: WriteOptions): Promise<WriteResult>;
  /** True when the volume's current version is exactly `files` (AtomicWriter.holds); optional for test writers. */
  holds?(files: readonly FileSpec[], options?: WriteOptions): Promise<boolean>;
}

export interface ManagedVolumeDeps {
  connection: AgentStreamConnection;
  bundles: BundleSource;
  /** The node-wide JWT bundles; only volumes with csi.spire.io/jwt-audiences subscribe (which opens the stream). */
  jwtBundles?: JwtBundleSource;
  logger: Logger;
  metrics: Metrics;
  /** Default: an AtomicWriter on the target path. Tests inject one that fails on demand. */
  createWriter?: (targetPath: string) => VolumeWriter;
  /** Default: 1 s to 30 s on the clock's timers. Tests inject the random source and the schedule. */
  writeRetry?: WriteRetryOptions;
  /**
   * The timers that decide behaviour (publish timeout, the SVID stream's
   * re-open backoff, and the write retry unless writeRetry.schedule is given)
   * and the durations in debug lines. Default: systemClock, real timers.
   */
  clock?: Clock;
  /** Jitter source of the SVID stream's re-open backoff. Default: Math.random. */
  random?: () => number;
  /**
   * Wall-clock milliseconds since the epoch, for the volume's health: SVID
   * validity is wall-clock time, which `clock` (monotonic) is not. Default: Date.now.
   */
  wallClock?: () => number;
  /**
   * Called after work that allocates a lot: a publish, an unpublish, the
   * resume at start (by the VolumeManager), and each write of new files (a
   * bundle change writes every volume of its trust domain at once).
   * memory-trimmer.ts trims once the activity stops.
   */
  onActivity?: () => void;
}

/** The files the newest material makes, and the SVID checks to pass before they are written. */
interface CollectedFiles {
  files: FileSpec[];
  /** digestOfFiles(files). */
  digest: string;
  /** checkSvid on the material, logged; undefined (with `problem` set) when refused. */
  check: () => CheckedSvid | undefined;
}

/** SVID material that passed every check, ready to become the volume's files. */
interface PreparedWrite {
  files: FileSpec[];
  /** digestOfFiles(files): what the files are, once written. */
  digest: string;
  svid: CheckedSvid;
}

/**
 * How a volume's files first came to be the agent's latest answer: found on
 * disk as they were, or written; or the volume closed before that happened.
 */
export type FirstMatchOutcome = 'unchanged' | 'rewritten' | 'closed';

/** Shared by every volume that federates with none (one Set less per volume). */
const NO_TRUST_DOMAINS: ReadonlySet<string> = new Set();

export class ManagedVolume {
  private readonly writer: VolumeWriter;
  private readonly retry: WriteRetry;
  private readonly logger: Logger;
  private readonly clock: Clock;
  /** When start() ran, on the clock: the first response's debug line says how long the agent took. */
  private startedAt = 0;
  private receivedMessage = false;
  /** When the first response carrying SVIDs arrived, on the clock; the agent's re-sends do not move it. */
  private firstSvidsArrivedAt: number | undefined;
  /** From start() to firstSvidsArrivedAt, once the first files are written: the publish's wait for the agent. */
  private agentWaitedMs: number | undefined;
  /** Told once, then dropped: when the files first are the agent's latest answer, or the volume closes first. */
  private onFirstMatch: ((outcome: FirstMatchOutcome) => void) | undefined;
  private stream: ResilientStream<SubscribeToX509SvidsResponse> | undefined;
  private unsubscribeBundles: (() => void) | undefined;
  /** With csi.spire.io/jwt-audiences: the volume's one refresh timer, and its JWT bundle subscription. */
  private jwtRefresher: JwtRefresher | undefined;
  private unsubscribeJwtBundles: (() => void) | undefined;
  private readonly onSocketReady = (): void => {
    if (this.jwtRefresher !== undefined && this.jwtRefresher.failedAttempts > 0) this.jwtRefresher.refreshNow();
  };
  private latest: SubscribeToX509SvidsResponse | undefined;
  private trustDomainId: string | undefined;
  /**
   * The federated trust domains whose bundles this volume writes, from the
   * newest SVID response: a change of one of their bundles rewrites this
   * volume, a change of any other trust domain's does not.
   */
  private federatedTrustDomains: ReadonlySet<string> = NO_TRUST_DOMAINS;
  private dirty = false;
  /** The last sync found the newest material on disk (written, or already there); false until then and after one that did not. */
  private latestSettled = false;
  private draining: Promise<void> | undefined;
  /**
   * Every write waits for this (start()): a new volume's streams open while
   * its record is written and its tmpfs mounted, and nothing may be written
   * before the mount is there. Rejected: the volume never writes.
   */
  private writable: Promise<void> = Promise.resolve();
  private closed = false;
  /** Made by the first waitUntilWritten: most volumes never have a waiter after their publish. */
  private stateListeners: Set<() => void> | undefined;
  /** The last JWT-SVID fetch failure, cleared by the next success; part of `problem` while no token is held. */
  private jwtFailure: string | undefined;
  /**
   * The JWT files of the last write (or found on disk after a restart). While
   * no current token can be written they go into the next version unchanged,
   * so a JWT problem never holds back the X.509 rotation of a volume that has
   * files, and a token file never disappears (the previous files stay, invariant 6).
   */
  private lastJwtFiles: FileSpec[] | undefined;
  /** Why the volume has no (current) files, in words for kubelet's event. */
  private problem = 'the SPIRE agent has not sent an SVID for this pod yet (it may still be signing it)';
  /** Files are on disk: written by this process, or found in place after a restart. */
  private hasFiles: boolean;
  /**
   * The validity of the SVID on disk: set by each successful (or unchanged)
   * write, or read from the files of a resumed volume. Its health and the
   * earliest-expiry gauge are judged against it.
   */
  private svidOnDisk: CurrentSvid | undefined;
  /**
   * digestOfFiles of the last write that succeeded in this process, cleared
   * when a write fails. 32 bytes in place of the files, which the volume
   * does not keep: after a restart the first write compares with the disk.
   */
  private writtenDigest: string | undefined;
  /** The SVID whose own checks last passed: a bundle change re-checks only its validity and chain (svid-check.ts). */
  private readonly leafCheck: LeafCheckMemo = {};

  constructor(
    readonly record: VolumeRecord,
    readonly selectors: Selector[],
    private readonly deps: ManagedVolumeDeps,
    options: { filesPresent: boolean; onFirstMatch?: (outcome: FirstMatchOutcome) => void },
  ) {
    // Our tmpfs is memory: its system calls run inline (writer-fs.ts); a plain
    // directory on the node's disk keeps the thread pool.
    this.writer = deps.createWriter?.(record.targetPath) ?? new AtomicWriter(record.targetPath, { fs: record.tmpfs ? inlineFs : threadPoolFs });
    this.clock = deps.clock ?? systemClock;
    const clock = this.clock;
    this.retry = new WriteRetry({ schedule: (callback, delayMs) => clock.schedule(callback, delayMs), ...deps.writeRetry });
    this.hasFiles = options.filesPresent;
    this.onFirstMatch = options.onFirstMatch;
    this.logger = lazyChild(deps.logger, {
      volume_id: record.volumeId,
      pod: `${record.pod.namespace}/${record.pod.name}`,
    });
  }

  /** The validity of the SVID in the files, undefined until known. */
  get currentSvid(): CurrentSvid | undefined {
    return this.svidOnDisk;
  }

  /** volume_condition of NodeGetVolumeStats (volume-health.ts). */
  health(): VolumeCondition {
    return assessVolumeHealth({
      nowMs: (this.deps.wallClock ?? Date.now)(),
      svid: this.svidOnDisk,
      // Only this volume's own stream, as in waitUntilWritten: the shared
      // bundle stream's last failure may be stale.
      streamFailure: this.stream?.lastFailure,
      agentSocketPath: this.deps.connection.socketPath,
      // A JWT-SVID fetch failing keeps the tokens from being renewed as a failing write keeps any file.
      writeFailure: this.retry.failedAttempts > 0 ? this.problem : this.jwtFailure,
    });
  }

  /**
   * A resumed volume: reads the validity of the leaf in its files, so its
   * health is known before the agent's first response (which may never come
   * while the agent is down). A file that cannot be read leaves it unknown
   * until then; a write that comes first wins, and replaces it either way.
   * It may run after start(): it parses a certificate (~0.2 ms with
   * --jitless), and the stream need not wait for that.
   */
  async readSvidOnDisk(): Promise<void> {
    try {
      const pem = await fs.readFile(path.join(this.record.targetPath, this.record.files.cert), 'utf8');
      // X509Certificate takes the first PEM block: the leaf (volume-files.ts writes it first).
      const leaf = new X509Certificate(pem);
      const uri = parseSubjectAltName(leaf.subjectAltName).find((entry) => entry.type === 'URI');
      const spiffeId = uri?.value ?? this.record.spiffeId ?? 'unknown';
      this.svidOnDisk ??= { spiffeId, notBefore: new Date(leaf.validFrom), notAfter: new Date(leaf.validTo) };
    } catch (err) {
      this.logger.debug({ err: errorMessage(err) }, 'could not read the SVID in the files; its validity is known after the first response');
    }
  }

  /**
   * A resumed JWT volume's token and bundle files, kept as lastJwtFiles;
   * unreadable ones leave it unset. Before start(): they are what the volume
   * keeps writing while no current token can be fetched, so they must be
   * known before the agent's first answer can arrive.
   */
  async readJwtFilesOnDisk(): Promise<void> {
    const jwt = this.record.jwt;
    if (jwt === undefined) return;
    const tokenMode = keyFileMode(this.record.fsGroup);
    try {
      const read = (name: string): Promise<Buffer> => fs.readFile(path.join(this.record.targetPath, name));
      this.lastJwtFiles = [
        ...(await Promise.all(jwt.svids.map(async (svid) => ({ name: svid.file, data: await read(svid.file), mode: tokenMode })))),
        { name: jwt.bundleFile, data: await read(jwt.bundleFile), mode: 0o644 },
      ];
    } catch (err) {
      this.logger.debug({ err: errorMessage(err) }, 'could not read the JWT files of the resumed volume; the next write needs current tokens');
    }
  }

  /**
   * Opens the streams. `writableAfter`: no file is written before it resolves,
   * and none ever if it rejects (the publish that owns it has failed).
   */
  start(options: { writableAfter?: Promise<void> } = {}): void {
    if (options.writableAfter !== undefined) this.writable = options.writableAfter;
    this.startedAt = this.clock.now();
    this.unsubscribeBundles = this.deps.bundles.subscribe((changed) => {
      if (this.trustDomainId !== undefined && changed.has(this.trustDomainId)) {
        this.logger.debug({ trust_domain: this.trustDomainId }, "the trust bundle of the volume's trust domain changed");
        this.scheduleSync();
        return;
      }
      const federated = [...changed].filter((trustDomainId) => this.federatedTrustDomains.has(trustDomainId));
      if (federated.length > 0) {
        this.logger.debug({ trust_domains: federated }, 'the trust bundle of a federated trust domain of the volume changed');
        this.scheduleSync();
      }
    });
    this.stream = new ResilientStream({
      kind: 'svid',
      connection: this.deps.connection,
      open: (client) => {
        const call = client.subscribeToX509Svids({ selectors: this.selectors });
        this.logger.debug({ selectors: formatSelectors(this.selectors) }, 'SVID stream opened; waiting for the SPIRE agent');
        return call;
      },
      onMessage: (message) => {
        this.logReceived(message);
        this.latest = message;
        if (this.firstSvidsArrivedAt === undefined && message.x509_svids.length > 0) this.firstSvidsArrivedAt = this.clock.now();
        this.scheduleSync();
      },
      // The agent's re-send of exactly the last response (F6): nothing to do
      // once that response is on disk; otherwise (refused, empty, no match, a
      // failed write) it is tried again, as any message is, since the reason
      // may have passed (a leaf not yet valid on a clock that was behind).
      onRepeat: () => {
        if (this.latestSettled) this.deps.metrics.svidUpdates.inc({ outcome: 'repeat' });
        else this.scheduleSync();
      },
      onFailure: () => this.notifyStateListeners(),
      logger: this.logger,
      metrics: this.deps.metrics,
      clock: this.clock,
      random: this.deps.random,
    });
    this.stream.start();
    // JWT-SVIDs once the volume may be written: the agent signs a token for
    // every fetch, and a publish whose record or mount fails must not cost one.
    // (The SVID stream opens at once: it only subscribes.)
    this.writable.then(
      () => {
        if (!this.closed) this.startJwt();
      },
      () => undefined,
    );
  }

  /**
   * JWT-SVIDs: fetched with the same selectors as the X.509 stream, refreshed
   * on one timer (jwt-refresh.ts); the node-wide JWT bundle stream wakes the
   * volume only when a trust domain it writes changed.
   */
  private startJwt(): void {
    const jwt = this.record.jwt;
    if (jwt === undefined || this.deps.jwtBundles === undefined) return;
    this.unsubscribeJwtBundles = this.deps.jwtBundles.subscribe((changed) => {
      if (this.jwtTrustDomainIds().some((id) => changed.has(id))) {
        this.logger.debug({ trust_domains: [...changed] }, 'a JWT bundle the volume writes changed');
        this.scheduleSync();
      }
    });
    this.deps.connection.on('socket-ready', this.onSocketReady);
    this.jwtRefresher = new JwtRefresher({
      requests: jwt.svids,
      fetch: async (audiences) => {
        const response = await this.deps.connection
          .client()
          .fetchJwtSvids({ audience: [...audiences], selectors: this.selectors }, JWT_FETCH_DEADLINE_MS);
        return response.svids;
      },
      schedule: (callback, delayMs) => this.clock.schedule(callback, delayMs),
      wallClock: this.deps.wallClock ?? Date.now,
      random: this.deps.random,
      onTokens: () => {
        this.jwtFailure = undefined;
        this.logger.debug('JWT-SVIDs fetched from the SPIRE agent');
        this.scheduleSync();
      },
      onFailure: (err, attempt, retryInMs) => {
        this.jwtFailure = `fetching the JWT-SVIDs from the SPIRE agent failed (${attempt} failed ${attempt === 1 ? 'attempt' : 'attempts'}, last: ${errorMessage(err)}); the driver keeps retrying with backoff`;
        const fields: LogFields = { err: errorMessage(err), attempt, retry_in_ms: retryInMs };
        if (attempt === 1) this.logger.error(fields, 'fetching the JWT-SVIDs failed; retrying with backoff');
        else this.logger.warn(fields, 'fetching the JWT-SVIDs failed again; retrying');
        this.notifyStateListeners();
      },
    });
    this.jwtRefresher.start();
  }

  /** The trust domains whose JWT bundles the volume writes: its own, then those its SVID federates with. */
  private jwtTrustDomainIds(): string[] {
    if (this.trustDomainId === undefined) return [];
    return [this.trustDomainId, ...(this.latest?.federates_with ?? []).filter((id) => id !== this.trustDomainId)];
  }

  private logReceived(message: SubscribeToX509SvidsResponse): void {
    const svids = message.x509_svids.length;
    if (this.receivedMessage) {
      this.logger.debug({ svids }, 'SVID update received from the SPIRE agent');
      return;
    }
    this.receivedMessage = true;
    this.logger.debug({ svids, duration_ms: roundMs(this.clock.now() - this.startedAt) }, 'first SVID response received from the SPIRE agent');
  }

  /**
   * How long the first files waited for the SPIRE agent: from the stream's
   * start to the first response carrying SVIDs. Undefined until this process
   * has written files. A publish takes this plus the driver's own work (the
   * "volume published" line has both). It counts as the agent's any delay of
   * the event loop in handling the response (a timestamp taken in
   * JavaScript), and leaves to the driver's part a trust bundle that came
   * after the SVID and a first SVID the checks refused.
   */
  get agentWaitMs(): number | undefined {
    return this.agentWaitedMs;
  }

  /** Stops the streams and any retry, and waits for a write in progress, leaving the files as they are. */
  async close(): Promise<void> {
    this.closed = true;
    this.reportFirstMatch('closed');
    this.stream?.close();
    this.unsubscribeBundles?.();
    this.jwtRefresher?.close();
    this.unsubscribeJwtBundles?.();
    this.deps.connection.off('socket-ready', this.onSocketReady);
    // A write still in progress cannot schedule another: writeFailed checks `closed`.
    this.retry.reset();
    this.deps.metrics.setWriteFailing(this, false);
    await this.draining;
    this.notifyStateListeners();
  }

  /**
   * docs/design.md invariant 3: NodePublishVolume returns only once the files are on
   * disk. Resolves when they are; rejects early when retrying cannot help (the
   * agent refuses the driver), on timeout with the reason, or when kubelet
   * cancels the call.
   */
  waitUntilWritten(timeoutMs: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const finish = (settle: () => void): void => {
        cancelTimer();
        signal.removeEventListener('abort', onAbort);
        this.stateListeners?.delete(check);
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
      const cancelTimer = this.clock.schedule(() => finish(() => reject(this.timeoutError(timeoutMs))), timeoutMs);
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort);
      (this.stateListeners ??= new Set()).add(check);
      check();
    });
  }

  private currentFailure(): StreamFailure | undefined {
    const jwtBundleFailure = this.record.jwt === undefined ? undefined : this.deps.jwtBundles?.lastFailure;
    return this.stream?.lastFailure ?? this.deps.bundles.lastFailure ?? jwtBundleFailure;
  }

  private timeoutError(timeoutMs: number): DriverError {
    const seconds = Math.round(timeoutMs / 1000);
    const failure = this.currentFailure();
    if (failure) {
      return new DriverError(status.UNAVAILABLE, `no SVID after ${seconds}s: ${describeStreamFailure(failure, this.deps.connection.socketPath)}`);
    }
    // A JWT fetch that failed after the last sync is not in `problem` yet.
    const jwt = this.jwtFailure !== undefined && !this.problem.includes(this.jwtFailure) ? `; ${this.jwtFailure}` : '';
    return new DriverError(status.DEADLINE_EXCEEDED, `no SVID after ${seconds}s: ${this.problem}${jwt}`);
  }

  private reportFirstMatch(outcome: FirstMatchOutcome): void {
    const report = this.onFirstMatch;
    this.onFirstMatch = undefined;
    report?.(outcome);
  }

  private notifyStateListeners(): void {
    for (const listener of [...(this.stateListeners ?? [])]) listener();
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
    try {
      await this.writable;
    } catch {
      // Not prepared: the publish failed and closes the volume. Nothing is
      // pending any more, or the loop in scheduleSync would spin until then.
      this.dirty = false;
      return;
    }
    while (this.dirty && !this.closed) {
      this.dirty = false;
      await this.sync();
      this.notifyStateListeners();
    }
  }

  private async sync(): Promise<void> {
    // This attempt uses the newest material, so a retry still waiting is moot;
    // should this one fail too, it schedules the next.
    this.retry.supersede();
    this.logger.debug('syncing the volume files with the newest material');
    if (this.record.files.pkcs12 !== undefined) await loadPkcs12Support();
    this.latestSettled = false;
    const collected = this.prepareWrite();
    if (collected === 'unchanged') {
      this.latestSettled = true;
      this.deps.metrics.svidUpdates.inc({ outcome: 'unchanged' });
      this.logger.debug('the newest material is what the files already hold; nothing checked or written');
      return;
    }
    const svid = collected === undefined ? undefined : await this.checkUnlessOnDisk(collected);
    if (collected === undefined || svid === undefined) {
      this.logger.debug({ reason: this.problem }, 'nothing to write from the newest material');
      this.stopRetrying();
      return;
    }
    if (svid === 'on-disk') {
      this.latestSettled = true;
      this.deps.metrics.svidUpdates.inc({ outcome: 'unchanged' });
      this.logger.debug('the files on disk already are the newest material; nothing checked or written');
      this.stopRetrying();
      return;
    }
    await this.writeFiles({ files: collected.files, digest: collected.digest, svid });
    this.latestSettled = this.writtenDigest === collected.digest;
    if (this.agentWaitedMs === undefined && this.firstSvidsArrivedAt !== undefined && this.writtenDigest === collected.digest) {
      this.agentWaitedMs = roundMs(this.firstSvidsArrivedAt - this.startedAt);
    }
  }

  /**
   * Runs the SVID checks, except when the files on disk already are exactly
   * these (a resumed volume: the agent's first answer after a restart is
   * normally what the last driver wrote, checked then): `on-disk`, and the
   * volume knows its files from then on. A restart with 500 volumes thus
   * reads three files per volume instead of parsing and verifying its key and
   * chain. Undefined when the checks refuse the SVID (`problem` says why).
   */
  private async checkUnlessOnDisk(collected: CollectedFiles): Promise<CheckedSvid | 'on-disk' | undefined> {
    if (this.writtenDigest === undefined && this.hasFiles && this.writer.holds !== undefined) {
      const gid = this.record.fsGroup === null ? {} : { gid: this.record.fsGroup };
      const onDisk = await this.writer.holds(collected.files, gid).catch(() => false);
      if (onDisk) {
        this.writtenDigest = collected.digest;
        this.reportFirstMatch('unchanged');
        return 'on-disk';
      }
    }
    return collected.check();
  }

  /**
   * The files for the newest SVID material; `unchanged` when they are those of
   * the last successful write; undefined (with `problem` set) when there is
   * nothing to write.
   */
  private prepareWrite(): CollectedFiles | 'unchanged' | undefined {
    const latest = this.latest;
    if (latest === undefined) return undefined;
    if (latest.x509_svids.length === 0) {
      this.problem =
        `no registration entry matches selectors ${formatSelectors(this.selectors)} yet. ` +
        'Create one, e.g. a ClusterSPIFFEID whose podSelector selects this pod (spire-controller-manager entries carry k8s:pod-uid), ' +
        'or spire-server entry create with -selector k8s:ns:<namespace> -selector k8s:sa:<service-account>';
      this.keepPreviousFiles('empty', 'the SPIRE agent sent no SVID for this pod (entry deleted?)');
      return undefined;
    }
    const picked = pickSvid(latest.x509_svids, { spiffeId: this.record.spiffeId, hint: this.record.hint });
    if ('problem' in picked) {
      this.problem = picked.problem;
      this.keepPreviousFiles('no_match', picked.problem);
      return undefined;
    }
    this.trustDomainId = picked.trustDomainId;
    const bundle = this.deps.bundles.get(picked.trustDomainId);
    if (bundle === undefined) {
      this.problem = `the SPIRE agent has not sent the trust bundle of ${picked.trustDomainId} yet`;
      return undefined;
    }
    const ownFiles = buildVolumeFiles(picked, bundle.certificates, this.record.files, this.record.fsGroup, this.record.pkcs12Password);
    const federatedFiles = this.federatedBundleFiles(latest.federates_with, picked, bundle.certificates, ownFiles);
    if (federatedFiles === undefined) return undefined;
    const jwtFiles = this.prepareJwtFiles(picked.spiffeId, picked.hint);
    if (jwtFiles === undefined) return undefined;
    const files = [...ownFiles, ...federatedFiles, ...jwtFiles];
    const digest = digestOfFiles(files);
    // The agent re-sends SVIDs it already sent (to every subscriber on each
    // cache change, docs/design.md F6) and the bundle stream repeats itself: an
    // update that would write exactly the files of the last successful write
    // stops here, before the certificate checks and without touching the disk.
    if (digest === this.writtenDigest) return 'unchanged';
    const check = (): CheckedSvid | undefined => {
      const checkStartedAt = this.clock.now();
      const checked = checkSvid(
        {
          spiffeId: picked.spiffeId,
          certChain: picked.certChain,
          keyDer: picked.keyDer,
          bundle: bundle.certificates,
        },
        undefined,
        this.leafCheck,
      );
      if (!checked.ok) {
        this.problem = `the SPIRE agent's SVID for ${picked.spiffeId} was rejected: ${checked.reason}`;
        this.deps.metrics.svidUpdates.inc({ outcome: 'rejected' });
        this.logger.error({ spiffe_id: picked.spiffeId, reason: checked.reason }, 'rejected an SVID from the SPIRE agent; the previous files stay');
        return undefined;
      }
      this.logger.debug(
        {
          spiffe_id: checked.svid.spiffeId,
          serial: checked.svid.serialNumber,
          expires_at: checked.svid.notAfter.toISOString(),
          duration_ms: roundMs(this.clock.now() - checkStartedAt),
        },
        'SVID checked',
      );
      return checked.svid;
    };
    return { files, digest, check };
  }

  /** The JWT files (none without jwt-audiences), or undefined with `problem` set: the volume writes all its files or none. */
  private prepareJwtFiles(spiffeId: string, hint: string): FileSpec[] | undefined {
    const jwt = this.record.jwt;
    if (jwt === undefined) return [];
    if (this.jwtRefresher === undefined || this.deps.jwtBundles === undefined) {
      this.problem = 'this driver was started without JWT support';
      return undefined;
    }
    const refresher = this.jwtRefresher;
    const built = buildJwtFiles({
      jwt,
      spiffeId,
      hint,
      trustDomainIds: this.jwtTrustDomainIds(),
      svidsFor: (request) => refresher.svidsFor(request),
      bundles: this.deps.jwtBundles,
      tokenMode: keyFileMode(this.record.fsGroup),
      nowMs: (this.deps.wallClock ?? Date.now)(),
    });
    if ('problem' in built) {
      this.problem = this.jwtFailure === undefined ? built.problem : `${built.problem}: ${this.jwtFailure}`;
      if (this.lastJwtFiles === undefined) return undefined;
      this.logger.warn({ reason: this.problem }, 'no current JWT-SVID to write; the X.509 files are updated and the JWT files stay as they are');
      return this.lastJwtFiles;
    }
    this.lastJwtFiles = built;
    return built;
  }

  /**
   * The files of the federated trust domains the entry federates with
   * (federated-bundles.ts), or undefined (with `problem` set) while the first
   * files of the volume wait for a bundle the response lists: the agent lists
   * only trust domains whose bundle it holds (docs/design.md F22), so the bundle
   * stream brings it at once, and the pod should not start without it. A live
   * volume never waits: its rotation is written, and the file follows when the
   * bundle arrives.
   */
  private federatedBundleFiles(
    federatesWith: readonly string[],
    picked: PickedSvid,
    ownBundle: readonly Buffer[],
    files: readonly FileSpec[],
  ): FileSpec[] | undefined {
    const mode = federatedBundleModeOf(this.record.federatedBundles);
    const trustDomainIds = mode === 'none' ? [] : federatedTrustDomainIds(federatesWith, picked.trustDomainId);
    this.federatedTrustDomains = trustDomainIds.length === 0 ? NO_TRUST_DOMAINS : new Set(trustDomainIds);
    const federated = new Map<string, readonly Buffer[]>();
    const missing: string[] = [];
    for (const trustDomainId of trustDomainIds) {
      const bundle = this.deps.bundles.get(trustDomainId);
      if (bundle === undefined) missing.push(trustDomainId);
      else federated.set(trustDomainId, bundle.certificates);
    }
    if (missing.length > 0 && !this.hasFiles) {
      this.problem =
        `the SPIRE agent lists ${missing.join(', ')} among the trust domains ${picked.spiffeId} federates with ` +
        `but has not sent ${missing.length === 1 ? 'its bundle' : 'their bundles'} yet`;
      return undefined;
    }
    if (missing.length > 0)
      this.logger.warn({ trust_domains: missing }, 'no bundle yet for a federated trust domain; its file follows when it arrives');
    const built = buildFederatedBundleFiles({
      mode,
      combinedFileName: this.record.files.combinedBundle ?? DEFAULT_COMBINED_BUNDLE_FILE,
      ownBundle,
      federated,
      takenNames: new Set(files.map((file) => file.name)),
    });
    for (const { trustDomainId, problem } of built.skipped) {
      this.logger.error({ trust_domain: trustDomainId, reason: problem }, 'not writing the bundle of a federated trust domain');
    }
    return built.files;
  }

  private async writeFiles({ files, digest, svid }: PreparedWrite): Promise<void> {
    let result: WriteResult;
    const writeStartedAt = this.clock.now();
    try {
      result = await this.writer.write(files, this.record.fsGroup === null ? {} : { gid: this.record.fsGroup });
    } catch (err) {
      this.writtenDigest = undefined;
      this.writeFailed(err, svid);
      return;
    }
    this.writtenDigest = digest;
    this.reportFirstMatch(result.changed ? 'rewritten' : 'unchanged');
    this.logger.debug(
      { version: result.version, duration_ms: roundMs(this.clock.now() - writeStartedAt) },
      result.changed ? 'volume files written' : 'volume files unchanged; nothing written',
    );
    this.hasFiles = true;
    if (result.changed) this.deps.onActivity?.();
    this.svidOnDisk = { spiffeId: svid.spiffeId, notBefore: svid.notBefore, notAfter: svid.notAfter };
    this.deps.metrics.svidUpdates.inc({ outcome: result.changed ? 'written' : 'unchanged' });
    if (result.changed) {
      this.logger.info(
        { spiffe_id: svid.spiffeId, serial: svid.serialNumber, expires_at: svid.notAfter.toISOString(), version: result.version },
        'SVID files written',
      );
    }
    this.writeSucceeded(svid);
  }

  /**
   * Counts the failure and schedules a retry of the newest material. The first
   * failure of a run is an error; the retries after it warn, at the rate the
   * backoff allows.
   */
  private writeFailed(err: unknown, svid: CheckedSvid): void {
    const code = errnoCodeOf(err);
    this.deps.metrics.volumeWriteFailures.inc({ reason: writeFailureReason(code) });
    if (this.closed) return;
    const { attempt, delayMs } = this.retry.failed(() => this.scheduleSync());
    this.deps.metrics.setWriteFailing(this, true);
    this.problem =
      `writing the SVID files into ${this.record.targetPath} is failing (${attempt} failed ${attempt === 1 ? 'attempt' : 'attempts'}, ` +
      `last: ${errorMessage(err)}); the driver keeps retrying with backoff`;
    const fields: LogFields = { spiffe_id: svid.spiffeId, err: errorMessage(err), code, attempt, retry_in_ms: delayMs };
    if (attempt === 1) this.logger.error(fields, 'writing the SVID files failed; retrying with backoff until they are written');
    else this.logger.warn(fields, 'writing the SVID files failed again; retrying');
  }

  private writeSucceeded(svid: CheckedSvid): void {
    const failedAttempts = this.retry.reset();
    if (failedAttempts === 0) return;
    this.deps.metrics.setWriteFailing(this, false);
    this.logger.info({ spiffe_id: svid.spiffeId, failed_attempts: failedAttempts }, 'SVID files written after failed attempts; no longer retrying');
  }

  /**
   * The newest material has nothing to write (no SVID, no match, no bundle yet,
   * rejected; each says why elsewhere), so an older failed write is not retried:
   * the previous files stay, as they would had that write never been tried.
   */
  private stopRetrying(): void {
    const failedAttempts = this.retry.reset();
    if (failedAttempts === 0) return;
    this.deps.metrics.setWriteFailing(this, false);
    this.logger.info(
      { failed_attempts: failedAttempts },
      'no longer retrying the failed write: the newest material from the SPIRE agent has nothing to write',
    );
  }

  private keepPreviousFiles(outcome: 'empty' | 'no_match', why: string): void {
    this.deps.metrics.svidUpdates.inc({ outcome });
    if (this.hasFiles) this.logger.warn({ selectors: formatSelectors(this.selectors) }, `${why}; keeping the last files`);
  }
}
