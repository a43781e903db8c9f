/**
 * Owns the lifecycle of every volume on the node: publish (wait for the first
 * SVID, clean up completely on failure), unpublish, and resume after a driver
 * restart. Calls for one volume are serialised; an unpublish cancels a publish
 * of the same volume that is still waiting (the CSI spec's "negation" call).
 * At most maxVolumes volumes are live or being published at once.
 */
import path from 'node:path';
import { setImmediate as nextTurnOfTheEventLoop } from 'node:timers/promises';
import { status } from '../grpc-status.js';
import { DriverError, errorMessage } from '../errors.js';
import { roundMs } from '../observability/logger.js';
import { systemClock, type Clock } from '../spire/resilient-stream.js';
import { formatSelectors, selectorsForPod } from '../spire/selectors.js';
import { DEFAULT_LAYOUT } from './attributes.js';
import { federatedBundleModeOf } from './federated-bundles.js';
import { ManagedVolume, type FirstMatchOutcome, type ManagedVolumeDeps } from './managed-volume.js';
import type { VolumeRecord, VolumeRecordStore } from './metadata-store.js';
import type { PublishSpec } from './publish-spec.js';
import type { VolumeStorageBackend } from './volume-storage.js';

/**
 * Everything a ManagedVolume needs (the agent connection, the bundles, logger,
 * metrics, and the optional writer, retry, clock and jitter injections), plus
 * the records and the storage. Production passes MetadataStore and
 * VolumeStorage; the unit tests in-memory fakes (test/support/fakes/).
 */
export interface VolumeManagerDeps extends ManagedVolumeDeps {
  nodeName: string;
  /** The CSI driver name, for messages. */
  driverName: string;
  publishTimeoutMs: number;
  /** --max-volumes: at least 1. */
  maxVolumes: number;
  store: VolumeRecordStore;
  storage: VolumeStorageBackend;
}

export class VolumeManager {
  private readonly volumes = new Map<string, ManagedVolume>();
  private readonly locks = new Map<string, Promise<void>>();
  /** Publishes in flight per volume, so an unpublish can cancel every one of them. */
  private readonly publishing = new Map<string, Set<AbortController>>();
  /**
   * New volumes past the limit check and not yet in `volumes` (waiting for
   * their first SVID): each holds one of the maxVolumes places.
   */
  private readonly reserved = new Set<string>();
  /** Set by shutdown(): the volumes it closes were not checked against the agent (countFirstMatches). */
  private stopping = false;
  private readonly clock: Clock;

  constructor(private readonly deps: VolumeManagerDeps) {
    this.clock = deps.clock ?? systemClock;
    deps.metrics.countVolumesWith(() => this.volumes.size);
    deps.metrics.watchVolumeHealthWith(() => this.healthSummary());
  }

  /**
   * NodeGetVolumeStats: the live volume published at `volumePath`. NOT_FOUND
   * for a volume that is not live (unknown, or still being published) or that
   * is published elsewhere, as the CSI spec asks of both.
   */
  liveVolume(volumeId: string, volumePath: string): ManagedVolume {
    const volume = this.volumes.get(volumeId);
    if (volume === undefined) throw new DriverError(status.NOT_FOUND, `volume ${volumeId} is not published on this node`);
    if (path.resolve(volumePath) !== path.resolve(volume.record.targetPath)) {
      throw new DriverError(status.NOT_FOUND, `volume ${volumeId} is published at ${volume.record.targetPath}, not at ${volumePath}`);
    }
    return volume;
  }

  /** Read at scrape time: the earliest SVID expiry among live volumes, and how many are abnormal. */
  private healthSummary(): { earliestExpiryMs: number | undefined; abnormal: number } {
    let earliestExpiryMs: number | undefined;
    let abnormal = 0;
    for (const volume of this.volumes.values()) {
      const notAfter = volume.currentSvid?.notAfter.getTime();
      if (notAfter !== undefined && (earliestExpiryMs === undefined || notAfter < earliestExpiryMs)) earliestExpiryMs = notAfter;
      if (volume.health().abnormal) abnormal++;
    }
    return { earliestExpiryMs, abnormal };
  }

  get volumeCount(): number {
    return this.volumes.size;
  }

  get maxVolumes(): number {
    return this.deps.maxVolumes;
  }

  /**
   * docs/design.md invariant 6: take back every volume recorded in the state
   * directory. Files and mounts stay exactly as they are; the streams are
   * re-opened and the first response rewrites a file only if it differs.
   */
  async resume(): Promise<void> {
    const checked = this.countFirstMatches();
    const { records, quarantined, unsupported } = await this.deps.store.loadAll();
    await this.forgetTombstonesOfGonePods().catch((err: unknown) =>
      this.deps.logger.warn({ err: errorMessage(err) }, 'could not check the tombstones of quarantined volumes; trying again on the next start'),
    );
    const results = await Promise.allSettled(records.map((record) => this.resumeOne(record, checked.track)));
    checked.allTracked();
    results.forEach((result, index) => {
      if (result.status === 'rejected') {
        this.deps.logger.error(
          { volume_id: records[index]?.volumeId, err: errorMessage(result.reason) },
          'could not resume a volume; its metadata stays so the next start or NodeUnpublishVolume retries',
        );
      }
    });
    // Every stream is open, and its request goes out when this turn of the
    // event loop ends. Then, before resume() returns and the CSI server starts,
    // the certificate on each volume's disk (~0.15 ms a parse): kubelet's first
    // NodeGetVolumeStats already sees an SVID that expired while the driver was
    // down. Parsing them after the requests are out, not between them, has the
    // agent see all 500 streams of a restart ~0.1 s sooner.
    await nextTurnOfTheEventLoop();
    await Promise.all([...this.volumes.values()].map((volume) => volume.readSvidOnDisk()));
    this.deps.logger.info(
      { volumes: this.volumes.size, quarantined: quarantined.length, newer_format: unsupported.length },
      'resumed volumes from the state directory',
    );
    this.deps.onActivity?.();
  }

  /**
   * The info line that ends a restart: once every resumed volume's files have
   * been compared with the agent's first answer (and rewritten where they
   * differ), or the volume was unpublished first. It does not come while the
   * agent leaves a volume unanswered or refuses its SVID; those volumes have
   * their own lines.
   */
  private countFirstMatches(): { track: () => (outcome: FirstMatchOutcome) => void; allTracked: () => void } {
    const startedAt = this.clock.now();
    const counts: Record<FirstMatchOutcome, number> = { unchanged: 0, rewritten: 0, closed: 0 };
    let tracked = 0;
    // One for resume() itself, until every volume is tracked: a volume the agent answers first must not end the count.
    let pending = 1;
    const settled = (): void => {
      // Volumes closed by a stopping driver were not checked: no line then.
      if (--pending > 0 || tracked === 0 || this.stopping) return;
      this.deps.logger.info(
        { volumes: tracked, ...counts, duration_ms: this.msSince(startedAt) },
        "resumed volumes checked against the SPIRE agent's first answers",
      );
    };
    return {
      track: () => {
        tracked++;
        pending++;
        return (outcome) => {
          counts[outcome]++;
          settled();
        };
      },
      allTracked: settled,
    };
  }

  private async resumeOne(record: VolumeRecord, trackFirstMatch: () => (outcome: FirstMatchOutcome) => void): Promise<void> {
    const log = this.deps.logger.child({ volume_id: record.volumeId, target_path: record.targetPath });
    const found = await this.deps.storage.inspect(record.targetPath);
    if (found === 'gone') {
      log.info('target path is gone (pod deleted while the driver was down); forgetting the volume');
      await this.deps.store.remove(record.volumeId);
      return;
    }
    if (found === 'not-a-directory') {
      // Something replaced our directory (or unmounted tmpfs) with a link or a
      // file while the driver was down. Writing there would follow it, so the
      // volume is not resumed: the link itself is removed, never its target.
      log.error(
        'target path is no longer a directory (a symbolic link or a file replaced it while the driver was down); not resuming the volume, removing what is there',
      );
      await this.deps.storage.remove(record.targetPath);
      await this.deps.store.remove(record.volumeId);
      return;
    }
    if (found === 'no-files') {
      // No files: the driver died inside NodePublishVolume before the first
      // write, so the call never returned OK and no container uses the volume;
      // or the node rebooted and took the tmpfs with it. Either way kubelet
      // publishes again when a pod needs it: start from a clean slate.
      log.info('cleaning up a volume without files (publish interrupted by a restart, or tmpfs lost in a reboot)');
      await this.deps.storage.remove(record.targetPath);
      await this.deps.store.remove(record.volumeId);
      return;
    }
    // Not limited: these volumes are in use by running pods, even when a lowered
    // --max-volumes leaves fewer places than that; new publishes wait until
    // enough are unpublished.
    const reportFirstMatch = trackFirstMatch();
    let volume: ManagedVolume;
    try {
      volume = this.createVolume(record, true, reportFirstMatch);
    } catch (err) {
      reportFirstMatch('closed');
      throw err;
    }
    await volume.readJwtFilesOnDisk();
    this.volumes.set(record.volumeId, volume);
    volume.start();
  }

  async publish(spec: PublishSpec, callSignal: AbortSignal): Promise<void> {
    const startedAt = this.clock.now();
    const controller = new AbortController();
    const abort = (): void => controller.abort(new DriverError(status.ABORTED, 'kubelet cancelled the NodePublishVolume call'));
    if (callSignal.aborted) abort();
    callSignal.addEventListener('abort', abort);
    const inFlight = this.publishing.get(spec.volumeId) ?? new Set<AbortController>();
    this.publishing.set(spec.volumeId, inFlight.add(controller));
    try {
      await this.withVolumeLock(spec.volumeId, () => this.publishLocked(spec, controller.signal, startedAt));
    } finally {
      this.deps.onActivity?.();
      callSignal.removeEventListener('abort', abort);
      inFlight.delete(controller);
      if (inFlight.size === 0 && this.publishing.get(spec.volumeId) === inFlight) this.publishing.delete(spec.volumeId);
    }
  }

  private async publishLocked(spec: PublishSpec, signal: AbortSignal, startedAt: number): Promise<void> {
    // Cancelled while it waited for the lock (kubelet gave up, or an unpublish came first).
    if (signal.aborted) throw signal.reason;
    const existing = this.volumes.get(spec.volumeId);
    if (existing) {
      // docs/design.md invariant 7: a repeated publish of a live volume is OK and
      // mounts nothing again (spiffe-csi#331: non-idempotent publishes stacked
      // mounts until the node died).
      if (existing.record.targetPath !== spec.targetPath) {
        throw new DriverError(
          status.FAILED_PRECONDITION,
          `volume ${spec.volumeId} is already published at ${existing.record.targetPath}, not at ${spec.targetPath}`,
        );
      }
      const difference = describeDifference(existing.record, spec);
      if (difference) {
        throw new DriverError(status.ALREADY_EXISTS, `volume ${spec.volumeId} is already published with other parameters: ${difference}`);
      }
      // Only volumes with files are in the map: published ones, and resumed ones found with files.
      return;
    }

    // The check and the reservation run without an await in between, so two
    // publishes of different volumes racing for the last place cannot both get
    // it (the per-volume lock does not serialise them).
    this.reservePlaceFor(spec);
    try {
      await this.publishNew(spec, signal, startedAt);
    } finally {
      this.reserved.delete(spec.volumeId);
    }
  }

  /**
   * Takes one of the node's maxVolumes places for a new volume, or refuses it.
   * kubelet enforces no limit on inline ephemeral volumes (see NodeGetInfo in
   * csi/node-service.ts), so this is the only one. RESOURCE_EXHAUSTED is the
   * code CSI gives "max volumes attached" (ControllerPublishVolume). kubelet
   * retries a failed mount with backoff while the pod stays ContainerCreating,
   * so the pod starts once a place frees up; it treats this code as not final
   * (the mount is "uncertain", so it sends NodeUnpublishVolume if the pod goes
   * first, which is OK for a volume the driver never had).
   */
  private reservePlaceFor(spec: PublishSpec): void {
    const live = this.volumes.size;
    const publishing = this.reserved.size;
    if (live + publishing >= this.deps.maxVolumes) {
      throw new DriverError(
        status.RESOURCE_EXHAUSTED,
        `cannot publish volume ${spec.volumeId} of pod ${spec.pod.namespace}/${spec.pod.name}: ` +
          `this node already serves ${live + publishing} ${this.deps.driverName} volumes (${live} published, ${publishing} being published), ` +
          `the limit set by the driver's --max-volumes=${this.deps.maxVolumes} (chart value driver.maxVolumes): ` +
          "raise it (with the driver's memory limit: every volume costs memory) or spread the pods over more nodes. " +
          'kubelet retries; the pod starts once a volume on this node is unpublished',
      );
    }
    this.reserved.add(spec.volumeId);
  }

  /** `startedAt`: when the call arrived, on the clock, for the debug lines that time each step. */
  private async publishNew(spec: PublishSpec, signal: AbortSignal, startedAt: number): Promise<void> {
    const record = recordFor(spec, this.deps.storage.usesTmpfs);
    const log = this.deps.logger.child({
      volume_id: spec.volumeId,
      pod: `${spec.pod.namespace}/${spec.pod.name}`,
      target_path: spec.targetPath,
    });
    // The agent looks up (or signs) the SVID while the record is written, the
    // target path prepared and the tmpfs mounted, instead of after: a publish
    // waits for the longer of the two, not for their sum. Those steps are
    // synchronous system calls (~1 ms together; metadata-store.ts and
    // volume-storage.ts say why), so they wait for the next turn of the event
    // loop: by then the stream's request, which the HTTP/2 connection writes
    // at the end of this turn, is on its way to the agent. The stream touches
    // nothing on the node, and the volume writes no file before `prepared`
    // resolves (none at all if it rejects).
    const volume = this.createVolume(record, false);
    let recorded = false;
    const prepared = (async () => {
      await nextTurnOfTheEventLoop();
      // Cancelled, or the driver stopping, meanwhile: nothing recorded, nothing to undo.
      if (signal.aborted) throw signal.reason;
      // Metadata before anything on the node, and only once: a crash after
      // this leaves a record that the next start resumes (files written) or
      // cleans up (no files), so no mount or file is ever orphaned.
      let stepStartedAt = this.clock.now();
      try {
        await this.deps.store.write(record);
      } catch (err) {
        throw new DriverError(
          status.INTERNAL,
          `cannot publish volume ${spec.volumeId}: recording it in the state directory ${this.deps.store.volumesDir} failed (${errorMessage(err)}). ` +
            'The driver needs that directory writable (--state-dir, a hostPath in the chart); nothing was mounted and kubelet retries',
        );
      }
      recorded = true;
      log.debug({ duration_ms: this.msSince(stepStartedAt) }, 'metadata record written');
      stepStartedAt = this.clock.now();
      await this.deps.storage.prepare(spec.targetPath, record.tmpfs);
      log.debug(
        { tmpfs: record.tmpfs, duration_ms: this.msSince(stepStartedAt) },
        record.tmpfs ? 'target path prepared, tmpfs mounted' : 'target path prepared',
      );
    })();
    // Settled below in every case; this only keeps a start() that throws from
    // leaving the rejection unhandled.
    prepared.catch(() => undefined);
    log.info({ selectors: formatSelectors(volume.selectors) }, 'publishing volume; waiting for the SVID');
    try {
      volume.start({ writableAfter: prepared });
      await prepared;
      await volume.waitUntilWritten(this.deps.publishTimeoutMs, signal);
      this.volumes.set(spec.volumeId, volume);
      // duration_ms: from the decoded, validated call reaching the volume
      // manager to the files on disk; agent_wait_ms: the part of it spent
      // waiting for the SPIRE agent's answer. The rest is the driver's own
      // (README "Benchmarks" measures it from these fields).
      log.info({ duration_ms: this.msSince(startedAt), agent_wait_ms: volume.agentWaitMs }, 'volume published');
    } catch (err) {
      await volume.close();
      // Wait for the record and the mount to finish either way, so the
      // cleanup below does not race them.
      await prepared.catch(() => undefined);
      // A record that could not be written: nothing was created on the node.
      if (!recorded) throw err;
      try {
        await this.deps.storage.remove(spec.targetPath);
        await this.deps.store.remove(spec.volumeId);
      } catch (cleanupError) {
        // The record stays, so NodeUnpublishVolume or the next start finishes the job.
        log.error({ err: errorMessage(cleanupError) }, 'cleaning up after a failed publish failed');
      }
      throw err;
    }
  }

  async unpublish(volumeId: string, targetPath: string): Promise<void> {
    try {
      await this.unpublishVolume(volumeId, targetPath);
    } finally {
      this.deps.onActivity?.();
    }
  }

  private async unpublishVolume(volumeId: string, targetPath: string): Promise<void> {
    for (const controller of this.publishing.get(volumeId) ?? []) {
      controller.abort(new DriverError(status.ABORTED, 'the volume was unpublished while it was being published'));
    }
    await this.withVolumeLock(volumeId, async () => {
      const volume = this.volumes.get(volumeId);
      // A record without a live volume: a failed cleanup or resume left it, and
      // its mount and files must go now.
      const record = volume?.record ?? (await this.deps.store.read(volumeId));
      if (!record) {
        await this.unpublishUnrecorded(volumeId, targetPath);
        return;
      }
      const log = this.deps.logger.child({ volume_id: volumeId, target_path: targetPath });
      if (record.targetPath !== targetPath) {
        log.warn({ published_at: record.targetPath }, 'unpublish names another target path than the volume has; nothing to do');
        return;
      }
      // Out of the map as soon as its streams stop: should the removal below
      // fail, the record stays for the retry, and a publish in between starts
      // afresh instead of finding a volume that no longer rotates.
      await volume?.close();
      this.volumes.delete(volumeId);
      await this.deps.storage.remove(targetPath);
      await this.deps.store.remove(volumeId);
      log.info('volume unpublished');
    });
  }

  /**
   * A volume without a usable record: quarantined, in a newer version's
   * format, or its state directory wiped. Ours if what is on disk says so, and
   * then removed completely: answering OK while our tmpfs and key stay on the
   * node would leave them there for good, since kubelet then forgets the
   * volume. Otherwise OK with nothing done (docs/design.md invariant 7: kubelet
   * retries every error forever, a pod stuck Terminating).
   */
  private async unpublishUnrecorded(volumeId: string, targetPath: string): Promise<void> {
    const knownAsOurs = await this.deps.store.knows(volumeId);
    const outcome = await this.deps.storage.removeUnrecordedVolume(volumeId, targetPath, knownAsOurs);
    if (outcome === 'not-ours') return;
    await this.deps.store.remove(volumeId);
    if (outcome === 'removed') {
      this.deps.logger.warn(
        { volume_id: volumeId, target_path: targetPath, known_in_state_dir: knownAsOurs },
        'unpublished a volume that had no usable metadata record (quarantined, newer format, or state directory lost): removed its mount and files',
      );
    }
  }

  /**
   * Tombstones of quarantined records whose pod is gone from kubelet's pods
   * directory: no unpublish will come for them any more.
   */
  private async forgetTombstonesOfGonePods(): Promise<void> {
    for (const volumeId of await this.deps.store.tombstones()) {
      if ((await this.deps.storage.findKubeletTargetPath(volumeId)) !== undefined) continue;
      await this.deps.store.remove(volumeId);
      this.deps.logger.info({ volume_id: volumeId }, 'forgot the tombstone of a quarantined volume whose pod is gone');
    }
  }

  /** SIGTERM: stop every stream and leave every volume in place for the next start. */
  async shutdown(): Promise<void> {
    this.stopping = true;
    for (const controllers of this.publishing.values()) {
      for (const controller of controllers) controller.abort(new DriverError(status.UNAVAILABLE, 'the driver is shutting down; kubelet will retry'));
    }
    await Promise.all([...this.volumes.values()].map((volume) => volume.close()));
    await Promise.allSettled([...this.locks.values()]);
  }

  private msSince(startedAt: number): number {
    return roundMs(this.clock.now() - startedAt);
  }

  private createVolume(record: VolumeRecord, filesPresent: boolean, onFirstMatch?: (outcome: FirstMatchOutcome) => void): ManagedVolume {
    return new ManagedVolume(record, selectorsForPod(record.pod, this.deps.nodeName), this.deps, {
      filesPresent,
      ...(onFirstMatch && { onFirstMatch }),
    });
  }

  private async withVolumeLock<T>(volumeId: string, task: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(volumeId) ?? Promise.resolve();
    const run = previous.then(task);
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.locks.set(volumeId, settled);
    try {
      return await run;
    } finally {
      if (this.locks.get(volumeId) === settled) this.locks.delete(volumeId);
    }
  }
}

/** The metadata record a publish of `spec` writes. */
export function recordFor(spec: PublishSpec, tmpfs: boolean): VolumeRecord {
  return {
    version: 1,
    volumeId: spec.volumeId,
    targetPath: spec.targetPath,
    volumeName: spec.volumeName,
    pod: { ...spec.pod },
    layout: spec.attributes.layout,
    files: {
      cert: spec.attributes.certFile,
      key: spec.attributes.keyFile,
      bundle: spec.attributes.bundleFile,
      ...(spec.attributes.credentialBundleFile === undefined ? {} : { credentialBundle: spec.attributes.credentialBundleFile }),
      ...(spec.attributes.pkcs12File === undefined ? {} : { pkcs12: spec.attributes.pkcs12File }),
      ...(spec.attributes.combinedBundleFile === undefined ? {} : { combinedBundle: spec.attributes.combinedBundleFile }),
    },
    ...(spec.attributes.federatedBundles === undefined ? {} : { federatedBundles: spec.attributes.federatedBundles }),
    ...(spec.attributes.pkcs12Password === undefined ? {} : { pkcs12Password: spec.attributes.pkcs12Password }),
    ...(spec.attributes.jwt === undefined ? {} : { jwt: structuredClone(spec.attributes.jwt) }),
    fsGroup: spec.fsGroup,
    spiffeId: spec.attributes.spiffeId ?? null,
    hint: spec.attributes.hint ?? null,
    tmpfs,
    createdAt: new Date().toISOString(),
  };
}

function describeDifference(record: VolumeRecord, spec: PublishSpec): string | undefined {
  const wanted = recordFor(spec, record.tmpfs);
  // Field by field: a record read back from disk has its keys in schema order,
  // so comparing serialised objects would see differences that are not there.
  const fields: [string, unknown, unknown][] = [
    ['pod uid', record.pod.uid, wanted.pod.uid],
    ['pod name', record.pod.name, wanted.pod.name],
    ['pod namespace', record.pod.namespace, wanted.pod.namespace],
    ['service account', record.pod.serviceAccount, wanted.pod.serviceAccount],
    ['cert-file', record.files.cert, wanted.files.cert],
    ['key-file', record.files.key, wanted.files.key],
    ['bundle-file', record.files.bundle, wanted.files.bundle],
    // Records from before layouts and credential bundles: spiffe-helper, none.
    ['layout', record.layout ?? DEFAULT_LAYOUT, wanted.layout],
    ['credential-bundle-file', record.files.credentialBundle ?? 'none', wanted.files.credentialBundle ?? 'none'],
    ['pkcs12-file', record.files.pkcs12 ?? 'none', wanted.files.pkcs12 ?? 'none'],
    // Records from before federation: the default.
    ['federated-bundles', federatedBundleModeOf(record.federatedBundles), federatedBundleModeOf(wanted.federatedBundles)],
    ['combined-bundle-file', record.files.combinedBundle ?? 'none', wanted.files.combinedBundle ?? 'none'],
    ['fsGroup', record.fsGroup, wanted.fsGroup],
    ['spiffe-id', record.spiffeId, wanted.spiffeId],
    ['hint', record.hint, wanted.hint],
    ['jwt-audiences', describeJwt(record.jwt), describeJwt(wanted.jwt)],
  ];
  const differing = fields.filter(([, was, now]) => was !== now).map(([name, was, now]) => `${name} was ${String(was)}, now ${String(now)}`);
  // Compared, never shown: the message becomes a pod event.
  if (record.pkcs12Password !== wanted.pkcs12Password) differing.push('pkcs12-password differs');
  return differing.length > 0 ? differing.join('; ') : undefined;
}

/** The JWT attributes as one comparable string ("none" without them). */
function describeJwt(jwt: VolumeRecord['jwt']): string {
  if (jwt === undefined) return 'none';
  return `${jwt.svids.map((svid) => `${svid.file}=${svid.audiences.join(',')}`).join(';')} (bundle ${jwt.bundleFile})`;
}
