/**
 * The volume lifecycle (VolumeManager, ManagedVolume, ResilientStream,
 * BundleWatcher) against in-memory fakes (test/support/fakes/): the records,
 * the volume directories and their writer, an agent connection whose calls the
 * test answers by hand, and a manual clock. No socket, no file, no real timer:
 * every step is driven and every delay is exact. The integration tests run the
 * same paths on real sockets, tmpfs and timers.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { before, describe, it } from 'node:test';
import { status } from '@grpc/grpc-js';
import { DriverError } from '../../src/errors.js';
import { DriverMetrics } from '../../src/observability/metrics.js';
import { describeStreamFailure, type StreamFailure } from '../../src/spire/agent-errors.js';
import { Backoff } from '../../src/spire/backoff.js';
import { BundleWatcher } from '../../src/spire/bundle-watcher.js';
import { STREAM_BACKOFF_INITIAL_MS, STREAM_BACKOFF_MAX_MS } from '../../src/spire/resilient-stream.js';
import { formatSelectors, selectorsForPod } from '../../src/spire/selectors.js';
import { inlineVolumeId } from '../../src/volumes/pod-binding.js';
import type { PublishSpec } from '../../src/volumes/publish-spec.js';
import { recordFor, VolumeManager } from '../../src/volumes/volume-manager.js';
import { WRITE_RETRY_INITIAL_MS, WRITE_RETRY_MAX_MS } from '../../src/volumes/write-retry.js';
import { FakeAgentConnection, FakeTrustDomain, svidResponse, type FakeSvid } from '../support/fakes/fake-agent.js';
import { ManualClock, settle } from '../support/fakes/manual-clock.js';
import { MemoryLog } from '../support/fakes/memory-log.js';
import { MemoryRecordStore } from '../support/fakes/memory-record-store.js';
import { MemoryVolumeStorage } from '../support/fakes/memory-volume-storage.js';

const NODE_NAME = 'node-a';
const DRIVER_NAME = 'csi.spire.io';
const PUBLISH_TIMEOUT_MS = 60_000;
/** The top of every jitter range: each delay is its full step. */
const FULL_STEP = (): number => 1;

let td: FakeTrustDomain;
let otherTd: FakeTrustDomain;
/** Distinct SVIDs of example.org; any of them serves any pod (the fake agent matches nothing). */
let svids: FakeSvid[];

before(async () => {
  td = await FakeTrustDomain.create('example.org');
  otherTd = await FakeTrustDomain.create('other.example');
  svids = await Promise.all(Array.from({ length: 8 }, (_, i) => td.svid(`/ns/default/sa/app-${i}`)));
});

function svid(index: number): FakeSvid {
  const chosen = svids[index];
  assert.ok(chosen, `SVID ${index} was minted`);
  return chosen;
}

function podSpec(n: number): PublishSpec {
  const uid = `pod-uid-${n}`;
  const volumeName = 'spiffe';
  return {
    volumeId: inlineVolumeId(uid, volumeName),
    targetPath: `/var/lib/kubelet/pods/${uid}/volumes/kubernetes.io~csi/${volumeName}/mount`,
    volumeName,
    pod: { uid, name: `app-${n}`, namespace: 'default', serviceAccount: 'app' },
    attributes: {
      layout: 'spiffe-helper',
      certFile: 'svid.pem',
      keyFile: 'svid_key.pem',
      bundleFile: 'svid_bundle.pem',
      credentialBundleFile: undefined,
      fsGroup: undefined,
      spiffeId: undefined,
      hint: undefined,
    },
    fsGroup: null,
  };
}

/** A publish call in flight, whose outcome can be looked at without awaiting it. */
interface Tracked {
  promise: Promise<void>;
  settled: boolean;
  error: unknown;
}

function track(promise: Promise<void>): Tracked {
  const tracked: Tracked = { promise, settled: false, error: undefined };
  promise.then(
    () => {
      tracked.settled = true;
    },
    (err: unknown) => {
      tracked.settled = true;
      tracked.error = err;
    },
  );
  return tracked;
}

function assertFailedWith(call: Tracked, code: status, message: string): void {
  assert.equal(call.settled, true, 'the call has finished');
  assert.ok(call.error instanceof DriverError, `a DriverError, got ${String(call.error)}`);
  assert.equal(status[call.error.code], status[code]);
  assert.equal(call.error.message, message);
}

function assertSucceeded(call: Tracked): void {
  assert.equal(call.settled, true, 'the call has finished');
  assert.equal(call.error, undefined);
}

interface WorldOptions {
  maxVolumes?: number;
  publishTimeoutMs?: number;
  random?: () => number;
  logLevel?: string;
  /** From an earlier World: the state directory and the node's disk survive a driver restart. */
  store?: MemoryRecordStore;
  storage?: MemoryVolumeStorage;
}

/** One driver process: its manager wired to the fakes, as src/driver.ts wires the real parts. */
class World {
  readonly clock = new ManualClock();
  readonly agent = new FakeAgentConnection();
  readonly log = new MemoryLog();
  readonly metrics = new DriverMetrics();
  readonly store: MemoryRecordStore;
  readonly storage: MemoryVolumeStorage;
  readonly bundles: BundleWatcher;
  readonly manager: VolumeManager;

  constructor(options: WorldOptions = {}) {
    const random = options.random ?? FULL_STEP;
    const logger = this.log.logger(options.logLevel ?? 'debug');
    this.store = options.store ?? new MemoryRecordStore();
    this.storage = options.storage ?? new MemoryVolumeStorage();
    this.bundles = new BundleWatcher({ connection: this.agent, logger, metrics: this.metrics, clock: this.clock, random });
    this.manager = new VolumeManager({
      nodeName: NODE_NAME,
      driverName: DRIVER_NAME,
      publishTimeoutMs: options.publishTimeoutMs ?? PUBLISH_TIMEOUT_MS,
      maxVolumes: options.maxVolumes ?? 1000,
      connection: this.agent,
      bundles: this.bundles,
      store: this.store,
      storage: this.storage,
      logger,
      metrics: this.metrics,
      createWriter: this.storage.createWriter,
      writeRetry: { random },
      clock: this.clock,
      random,
    });
  }

  publish(spec: PublishSpec, signal = new AbortController().signal): Tracked {
    return track(this.manager.publish(spec, signal));
  }

  /** The agent sends the bundle stream's response (the first one opens with every bundle, fact F9). */
  sendBundle(response = td.bundleResponse()): void {
    this.agent.openBundleCall().push(response);
  }

  sendSvids(spec: PublishSpec, ...sent: FakeSvid[]): void {
    this.agent.openSvidCall(spec.pod.uid).push(svidResponse(...sent));
  }

  /** Publishes `spec` with the agent answering `sent` at once (and the bundle, on the first call). */
  async publishLive(spec: PublishSpec, sent: FakeSvid): Promise<void> {
    const call = this.publish(spec);
    await settle();
    if (this.agent.openBundleCall().sent === 0) this.sendBundle();
    this.sendSvids(spec, sent);
    await settle();
    assertSucceeded(call);
  }

  /** The serial of the certificate in the volume's files, lower-case hex. */
  serialOnDisk(spec: PublishSpec): string {
    const cert = this.storage.filesAt(spec.targetPath)?.get('svid.pem');
    assert.ok(cert, `a certificate at ${spec.targetPath}`);
    return new X509Certificate(cert.data).serialNumber.toLowerCase();
  }

  async counter(name: 'svidUpdates' | 'volumeWriteFailures' | 'agentStreamErrors', labels: Record<string, string>): Promise<number> {
    const values = (await this.metrics[name].get()).values;
    return values.find((v) => Object.entries(labels).every(([key, value]) => (v.labels as Record<string, unknown>)[key] === value))?.value ?? 0;
  }

  async writeFailing(): Promise<number | undefined> {
    return (await this.metrics.volumesWriteFailing.get()).values[0]?.value;
  }

  debugLines(volumeId: string): Record<string, unknown>[] {
    return this.log.entries().filter((e) => e['level'] === 'debug' && e['volume_id'] === volumeId);
  }

  async close(): Promise<void> {
    await this.manager.shutdown();
    this.bundles.close();
  }
}

describe('publish', () => {
  it('at debug level logs every step in order, each with its duration on the clock', async () => {
    const w = new World();
    const spec = podSpec(1);
    w.storage.onPrepare = () => w.clock.tick(7);
    w.storage.onWrite = () => w.clock.tick(3);
    const call = w.publish(spec);
    await settle();
    w.sendBundle();
    await w.clock.advance(100);
    w.sendSvids(spec, svid(0));
    await settle();
    assertSucceeded(call);

    const debug = w.debugLines(spec.volumeId);
    assert.deepEqual(
      debug.map((e) => [e['msg'], e['duration_ms']]),
      [
        // The stream opens first: the agent answers while the record is written and the tmpfs mounted.
        ['SVID stream opened; waiting for the SPIRE agent', undefined],
        ['metadata record written', 0],
        ['target path prepared, tmpfs mounted', 7],
        ['first SVID response received from the SPIRE agent', 107],
        ['syncing the volume files with the newest material', undefined],
        ['SVID checked', 0],
        ['volume files written', 3],
      ],
    );
    const [opened, record, prepared, first, , checked, written] = debug;
    for (const entry of [record, prepared]) {
      assert.equal(entry?.['target_path'], spec.targetPath);
      assert.equal(entry?.['pod'], 'default/app-1');
    }
    assert.equal(prepared?.['tmpfs'], true);
    assert.equal(opened?.['selectors'], formatSelectors(selectorsForPod(spec.pod, NODE_NAME)));
    assert.equal(first?.['svids'], 1);
    assert.equal(checked?.['spiffe_id'], svid(0).spiffeId);
    assert.equal(String(checked?.['serial']).toLowerCase(), svid(0).serialHex);
    assert.equal(typeof checked?.['expires_at'], 'string');
    assert.equal(written?.['version'], '..v1');
    const published = w.log.withMessage('volume published')[0];
    assert.equal(published?.['level'], 'info');
    assert.equal(published?.['duration_ms'], 110, 'from the call (0 ms) to the files (110 ms)');
    assert.equal(published?.['agent_wait_ms'], 107, "from the stream opening (0 ms) to the agent's answer (107 ms)");

    // The info lines stay what they were, interleaved at their places.
    assert.deepEqual(
      w.log
        .entries()
        .filter((e) => e['level'] === 'info')
        .map((e) => e['msg']),
      ['publishing volume; waiting for the SVID', 'trust bundle updated', 'SVID files written', 'volume published'],
    );
    await w.close();
  });

  it('asks the agent first, and writes the record and mounts on a later turn of the event loop, while the agent answers', async () => {
    const w = new World();
    const spec = podSpec(3);
    let callsAtPrepare: number | undefined;
    w.storage.onPrepare = () => {
      callsAtPrepare = w.agent.svidCallsOf(spec.pod.uid).length;
    };
    const call = w.publish(spec);
    // Same turn (microtasks only): the subscription is made, and its request goes out when the turn ends;
    // nothing is recorded or mounted yet.
    for (let i = 0; i < 50; i++) await Promise.resolve();
    assert.equal(w.agent.svidCallsOf(spec.pod.uid).length, 1);
    assert.equal(w.store.written.length, 0, 'the record waits for the next turn');
    assert.equal(callsAtPrepare, undefined, 'the mount waits for the next turn');
    await new Promise((resolve) => setImmediate(resolve));
    await settle();
    assert.equal(w.store.written.length, 1);
    assert.equal(callsAtPrepare, 1, 'the agent was asked before the target path was prepared');
    w.sendBundle();
    w.sendSvids(spec, svid(0));
    await settle();
    assertSucceeded(call);
    await w.close();
  });

  it('at info level logs none of the step lines', async () => {
    const w = new World({ logLevel: 'info' });
    const spec = podSpec(2);
    await w.publishLive(spec, svid(0));
    assert.deepEqual(
      w.log.entries().map((e) => [e['level'], e['msg']]),
      [
        ['info', 'publishing volume; waiting for the SVID'],
        ['info', 'trust bundle updated'],
        ['info', 'SVID files written'],
        ['info', 'volume published'],
      ],
    );
    await w.close();
  });

  it('times out at exactly --publish-timeout with what is missing as the message, and cleans up', async () => {
    const cases: { name: string; answer: (w: World, spec: PublishSpec) => void; code: status; message: (spec: PublishSpec, w: World) => string }[] = [
      {
        name: 'the agent says nothing',
        answer: (w) => w.sendBundle(),
        code: status.DEADLINE_EXCEEDED,
        message: () => 'no SVID after 60s: the SPIRE agent has not sent an SVID for this pod yet (it may still be signing it)',
      },
      {
        name: 'no entry matches',
        answer: (w, spec) => {
          w.sendBundle();
          w.sendSvids(spec);
        },
        code: status.DEADLINE_EXCEEDED,
        message: (spec) =>
          `no SVID after 60s: no registration entry matches selectors ${formatSelectors(selectorsForPod(spec.pod, NODE_NAME))} yet. ` +
          'Create one, e.g. a ClusterSPIFFEID whose podSelector selects this pod (spire-controller-manager entries carry k8s:pod-uid), ' +
          'or spire-server entry create with -selector k8s:ns:<namespace> -selector k8s:sa:<service-account>',
      },
      {
        name: "no bundle of the SVID's trust domain",
        answer: (w, spec) => {
          w.sendBundle(otherTd.bundleResponse());
          w.sendSvids(spec, svid(0));
        },
        code: status.DEADLINE_EXCEEDED,
        message: () => 'no SVID after 60s: the SPIRE agent has not sent the trust bundle of spiffe://example.org yet',
      },
      {
        name: 'the agent socket is gone',
        answer: (w, spec) => {
          w.agent.socketPresent = false;
          w.agent
            .openSvidCall(spec.pod.uid)
            .fail(status.UNAVAILABLE, 'No connection established. Last error: connect ENOENT /fake/spire-agent/admin.sock');
        },
        code: status.UNAVAILABLE,
        message: (_spec, w) =>
          `no SVID after 60s: ${describeStreamFailure(
            {
              code: status.UNAVAILABLE,
              details: 'No connection established. Last error: connect ENOENT /fake/spire-agent/admin.sock',
              socketMissing: true,
            },
            w.agent.socketPath,
          )}`,
      },
      {
        name: "the bundle stream is refused (only the volume's own stream fails a publish early)",
        answer: (w) => w.agent.openBundleCall().fail(status.PERMISSION_DENIED, 'caller not configured as an authorized delegate'),
        code: status.UNAVAILABLE,
        message: (_spec, w) =>
          `no SVID after 60s: ${describeStreamFailure(
            { code: status.PERMISSION_DENIED, details: 'caller not configured as an authorized delegate', socketMissing: false },
            w.agent.socketPath,
          )}`,
      },
    ];
    for (const [index, c] of cases.entries()) {
      const w = new World();
      const spec = podSpec(10 + index);
      const call = w.publish(spec);
      await settle();
      c.answer(w, spec);
      await settle();
      await w.clock.advance(PUBLISH_TIMEOUT_MS - 1);
      assert.equal(call.settled, false, `${c.name}: still waiting 1 ms before the timeout`);
      await w.clock.advance(1);
      assertFailedWith(call, c.code, c.message(spec, w));
      assert.equal(w.clock.now(), PUBLISH_TIMEOUT_MS);
      assert.equal(w.store.isEmpty(), true, `${c.name}: no record left`);
      assert.equal(w.storage.targets.size, 0, `${c.name}: no directory left`);
      assert.deepEqual(w.agent.openSvidCalls(), [], `${c.name}: no SVID stream left`);
      assert.deepEqual(w.clock.pendingDelays(), [], `${c.name}: no timer left`);
      assert.equal(w.manager.volumeCount, 0);
      await w.close();
    }
  });

  it('a metadata write that fails refuses the publish INTERNAL with nothing mounted or written, and its stream cancelled', async () => {
    const w = new World();
    const spec = podSpec(3);
    w.store.failWrites = new Error('EROFS: read-only file system, open');
    const call = w.publish(spec);
    await settle();
    assertFailedWith(
      call,
      status.INTERNAL,
      `cannot publish volume ${spec.volumeId}: recording it in the state directory /memory/state/volumes failed (EROFS: read-only file system, open). ` +
        'The driver needs that directory writable (--state-dir, a hostPath in the chart); nothing was mounted and kubelet retries',
    );
    assert.deepEqual(w.storage.calls, []);
    assert.equal(w.agent.svidCalls.length, 1, 'the stream opened with the publish');
    assert.ok(
      w.agent.svidCalls.every((c) => c.cancelled),
      'and is cancelled with it',
    );
    await w.close();
  });

  it('an SVID that arrives before the tmpfs is mounted is written only once it is', async () => {
    const w = new World();
    const spec = podSpec(4);
    let mount!: () => void;
    w.storage.onPrepare = () => new Promise<void>((resolve) => (mount = resolve));
    const call = w.publish(spec);
    await settle();
    w.sendBundle();
    w.sendSvids(spec, svid(0));
    await settle();
    assert.deepEqual(w.storage.written(spec.targetPath), [], 'nothing written into the unmounted directory');
    assert.equal(call.settled, false, 'the publish waits for the mount');
    mount();
    await settle();
    assertSucceeded(call);
    assert.equal(w.storage.written(spec.targetPath).length, 1);
    await w.close();
  });

  it("agent_wait_ms is the first SVIDs' arrival: the agent's re-send while the tmpfs is mounted counts as the driver's wait", async () => {
    const w = new World({ logLevel: 'info' });
    const spec = podSpec(6);
    let mount!: () => void;
    w.storage.onPrepare = () => new Promise<void>((resolve) => (mount = resolve));
    const call = w.publish(spec);
    await settle();
    w.sendBundle();
    await w.clock.advance(20);
    w.sendSvids(spec, svid(0));
    await settle();
    await w.clock.advance(30);
    w.sendSvids(spec, svid(0));
    await settle();
    mount();
    await settle();
    assertSucceeded(call);
    const published = w.log.withMessage('volume published')[0];
    assert.deepEqual([published?.['duration_ms'], published?.['agent_wait_ms']], [50, 20]);
    await w.close();
  });

  it('a failed mount writes nothing, even with the SVID already there, and removes the record', async () => {
    const w = new World();
    const spec = podSpec(5);
    let fail!: () => void;
    w.storage.onPrepare = () => new Promise<void>((_, reject) => (fail = () => reject(new DriverError(status.INTERNAL, 'mount failed'))));
    const call = w.publish(spec);
    await settle();
    w.sendBundle();
    w.sendSvids(spec, svid(0));
    await settle();
    fail();
    await settle();
    assertFailedWith(call, status.INTERNAL, 'mount failed');
    assert.deepEqual(w.storage.written(spec.targetPath), []);
    assert.deepEqual(w.store.recordIds(), []);
    assert.ok(w.agent.svidCalls.every((c) => c.cancelled));
    await w.close();
  });
});

describe('unpublish and cancellation', () => {
  it('an unpublish cancels a pending publish (ABORTED) and leaves nothing behind', async () => {
    const w = new World();
    const spec = podSpec(20);
    const call = w.publish(spec);
    await settle();
    // Publishing: the record, the mounted directory, the stream and the timeout exist.
    assert.deepEqual(w.store.recordIds(), [spec.volumeId]);
    assert.equal(w.storage.targets.get(spec.targetPath)?.tmpfs, true);
    const svidCall = w.agent.openSvidCall(spec.pod.uid);
    assert.deepEqual(w.clock.pendingDelays(), [PUBLISH_TIMEOUT_MS]);
    assert.equal(w.agent.listenerCount('socket-ready'), 2, 'the bundle stream and the SVID stream');

    await w.manager.unpublish(spec.volumeId, spec.targetPath);
    await settle();
    assertFailedWith(call, status.ABORTED, 'the volume was unpublished while it was being published');
    assert.equal(w.clock.now(), 0, 'at once, not after a timeout');
    assert.equal(w.store.isEmpty(), true);
    assert.equal(w.storage.targets.size, 0);
    assert.deepEqual(w.storage.calls, [
      `prepare ${spec.targetPath}`,
      `remove ${spec.targetPath}`,
      `removeUnrecordedVolume ${spec.targetPath}`,
      `removeIfEmptyKubeletDir ${spec.targetPath}`,
    ]);
    assert.equal(svidCall.cancelled, true);
    assert.deepEqual(w.agent.openSvidCalls(), []);
    assert.deepEqual(w.clock.pendingDelays(), [], 'the publish timeout is cancelled');
    assert.equal(w.agent.listenerCount('socket-ready'), 1, 'only the node-wide bundle stream listens');
    assert.equal(w.manager.volumeCount, 0);
    assert.deepEqual(w.storage.attempts, []);
    await w.close();
  });

  it('kubelet cancelling the call fails it ABORTED and cleans up', async () => {
    const w = new World();
    const spec = podSpec(21);
    const kubelet = new AbortController();
    const call = w.publish(spec, kubelet.signal);
    await settle();
    kubelet.abort();
    await settle();
    assertFailedWith(call, status.ABORTED, 'kubelet cancelled the NodePublishVolume call');
    assert.equal(w.store.isEmpty(), true);
    assert.equal(w.storage.targets.size, 0);
    assert.deepEqual(w.agent.openSvidCalls(), []);
    assert.deepEqual(w.clock.pendingDelays(), []);
    await w.close();
  });

  it('kubelet cancelling before the record is due (the same turn): nothing is recorded, prepared or removed', async () => {
    const w = new World();
    const spec = podSpec(23);
    const kubelet = new AbortController();
    const call = w.publish(spec, kubelet.signal);
    for (let i = 0; i < 50; i++) await Promise.resolve();
    assert.equal(w.agent.svidCallsOf(spec.pod.uid).length, 1, 'the stream is open, the record not yet written');
    kubelet.abort();
    await settle();
    assertFailedWith(call, status.ABORTED, 'kubelet cancelled the NodePublishVolume call');
    assert.deepEqual(w.store.written, [], 'no record written');
    assert.deepEqual(w.storage.calls, [], 'nothing prepared, nothing to remove');
    assert.deepEqual(w.agent.openSvidCalls(), []);
    await w.close();
  });

  it('unpublish of a live volume waits for a write in progress, then removes everything and writes nothing more', async () => {
    const w = new World();
    const spec = podSpec(22);
    await w.publishLive(spec, svid(0));
    const release = w.storage.holdWrites();
    w.sendSvids(spec, svid(1));
    await settle();
    assert.equal(w.storage.attempts.at(-1)?.outcome, 'pending');
    const unpublish = track(w.manager.unpublish(spec.volumeId, spec.targetPath));
    await settle();
    assert.equal(unpublish.settled, false, 'close() waits for the write');
    assert.equal(w.storage.targets.has(spec.targetPath), true);
    release();
    await settle();
    assertSucceeded(unpublish);
    assert.deepEqual(
      w.storage.attempts.map((a) => a.outcome),
      ['written', 'written'],
    );
    assert.equal(w.storage.targets.size, 0);
    assert.equal(w.store.isEmpty(), true);
    assert.deepEqual(w.agent.openSvidCalls(), []);
    assert.equal(w.manager.volumeCount, 0);
    assert.equal(w.log.withMessage('volume unpublished').length, 1);
    await w.close();
  });

  it('shutdown fails a waiting publish UNAVAILABLE and leaves live volumes, records and files in place', async () => {
    const w = new World();
    const live = podSpec(23);
    const pending = podSpec(24);
    await w.publishLive(live, svid(0));
    const call = w.publish(pending);
    await settle();
    await w.close();
    await settle();
    assertFailedWith(call, status.UNAVAILABLE, 'the driver is shutting down; kubelet will retry');
    assert.deepEqual(w.store.recordIds(), [live.volumeId]);
    assert.deepEqual([...w.storage.targets.keys()], [live.targetPath]);
    assert.equal(w.serialOnDisk(live), svid(0).serialHex);
    assert.deepEqual(w.agent.openSvidCalls(), []);
    assert.deepEqual(w.clock.pendingDelays(), []);
  });
});

describe('the sync loop', () => {
  it('a burst of updates while a write is in progress becomes exactly one more write, of the newest material', async () => {
    const w = new World();
    const spec = podSpec(30);
    await w.publishLive(spec, svid(0));
    const release = w.storage.holdWrites();
    w.sendSvids(spec, svid(1));
    await settle();
    assert.deepEqual(
      w.storage.attempts.map((a) => a.outcome),
      ['written', 'pending'],
    );
    for (let i = 2; i <= 7; i++) w.sendSvids(spec, svid(i));
    // The bundle changing in the middle of the burst joins it too.
    w.sendBundle(td.bundleResponse({ extraCas: [otherTd.ca.certDer] }));
    await settle();
    assert.equal(w.storage.attempts.length, 2, 'nothing more starts while the write is in progress');
    release();
    await settle();
    assert.deepEqual(
      w.storage.attempts.map((a) => a.outcome),
      ['written', 'written', 'written'],
    );
    assert.equal(w.serialOnDisk(spec), svid(7).serialHex, 'the newest SVID');
    const bundle = w.storage.filesAt(spec.targetPath)?.get('svid_bundle.pem');
    assert.equal((bundle?.data.toString().match(/BEGIN CERTIFICATE/g) ?? []).length, 2, 'the newest bundle');
    assert.equal(await w.counter('svidUpdates', { outcome: 'written' }), 3);
    assert.equal(w.log.withMessage('SVID update received from the SPIRE agent').length, 7);
    assert.equal(w.log.withMessage("the trust bundle of the volume's trust domain changed").length, 1);
    await w.close();
  });

  it('updates arriving in one tick while idle become one write', async () => {
    const w = new World();
    const spec = podSpec(31);
    await w.publishLive(spec, svid(0));
    w.sendSvids(spec, svid(1));
    w.sendSvids(spec, svid(2));
    w.sendBundle(td.bundleResponse({ extraCas: [otherTd.ca.certDer] }));
    w.sendSvids(spec, svid(3));
    await settle();
    assert.deepEqual(
      w.storage.attempts.map((a) => a.outcome),
      ['written', 'written'],
    );
    assert.equal(w.serialOnDisk(spec), svid(3).serialHex);
    await w.close();
  });

  it('identical material reaches neither the checks nor the disk; an unchanged or foreign bundle does not even sync', async () => {
    const w = new World();
    const spec = podSpec(32);
    await w.publishLive(spec, svid(0));
    const filesBefore = w.storage.filesAt(spec.targetPath);
    w.sendSvids(spec, svid(0));
    await settle();
    assert.deepEqual(
      w.storage.attempts.map((a) => a.outcome),
      ['written'],
      'the writer is not called for a re-send of what it wrote',
    );
    assert.equal(w.storage.filesAt(spec.targetPath), filesBefore, 'the same version');
    assert.equal(await w.counter('svidUpdates', { outcome: 'unchanged' }), 1);
    assert.equal(w.log.withMessage('SVID files written').length, 1, 'one info line: the first write');
    assert.equal(w.log.withMessage('SVID checked').length, 1, 'the re-send is not checked again');
    assert.equal(w.log.withMessage('the newest material is what the files already hold; nothing checked or written').length, 1);

    // The agent re-sends the same bundles, then adds another trust domain's.
    w.sendBundle();
    w.sendBundle(td.bundleResponse({ others: [otherTd] }));
    await settle();
    assert.equal(w.storage.attempts.length, 1, "no sync: the volume's own bundle did not change");
    assert.equal(await w.counter('svidUpdates', { outcome: 'unchanged' }), 1, 'not even counted as an unchanged update');
    await w.close();
  });

  it('at debug level a rotation logs the message, the bundle change, the sync and the write', async () => {
    const w = new World();
    const spec = podSpec(33);
    await w.publishLive(spec, svid(0));
    const mark = w.debugLines(spec.volumeId).length;
    w.storage.onWrite = () => w.clock.tick(4);
    w.sendBundle(td.bundleResponse({ extraCas: [otherTd.ca.certDer] }));
    await settle();
    w.sendSvids(spec, svid(1));
    await settle();
    w.sendSvids(spec, svid(1));
    await settle();
    w.sendSvids(spec);
    await settle();
    assert.deepEqual(
      w
        .debugLines(spec.volumeId)
        .slice(mark)
        .map((e) => [e['msg'], e['svids'] ?? e['trust_domain'] ?? e['duration_ms'] ?? null]),
      [
        ["the trust bundle of the volume's trust domain changed", 'spiffe://example.org'],
        ['syncing the volume files with the newest material', null],
        ['SVID checked', 0],
        ['volume files written', 4],
        ['SVID update received from the SPIRE agent', 1],
        ['syncing the volume files with the newest material', null],
        ['SVID checked', 0],
        ['volume files written', 4],
        ['SVID update received from the SPIRE agent', 1],
        ['syncing the volume files with the newest material', null],
        ['the newest material is what the files already hold; nothing checked or written', null],
        ['SVID update received from the SPIRE agent', 0],
        ['syncing the volume files with the newest material', null],
        ['nothing to write from the newest material', null],
      ],
    );
    assert.match(String(w.debugLines(spec.volumeId).at(-1)?.['reason']), /^no registration entry matches selectors /);
    assert.equal(w.serialOnDisk(spec), svid(1).serialHex, 'an empty response keeps the last files');
    await w.close();
  });
});

describe('stream reconnects', () => {
  it('a failing SVID stream re-opens on the Backoff schedule, exactly at each delay; a message resets it; the files stay', async () => {
    const w = new World();
    const spec = podSpec(40);
    await w.publishLive(spec, svid(0));
    const filesBefore = w.storage.filesAt(spec.targetPath);
    const schedule = new Backoff({ initialMs: STREAM_BACKOFF_INITIAL_MS, maxMs: STREAM_BACKOFF_MAX_MS, random: FULL_STEP });
    const delays: number[] = [];
    for (let failure = 1; failure <= 8; failure++) {
      const calls = w.agent.svidCallsOf(spec.pod.uid).length;
      w.agent.openSvidCall(spec.pod.uid).fail(status.UNAVAILABLE, 'connection reset by peer');
      await settle();
      const delay = w.clock.nextDueIn();
      assert.ok(delay !== undefined, `a re-open is scheduled after failure ${failure}`);
      assert.equal(delay, schedule.next());
      delays.push(delay);
      await w.clock.advance(delay - 1);
      assert.equal(w.agent.svidCallsOf(spec.pod.uid).length, calls, `failure ${failure}: not re-opened 1 ms early`);
      await w.clock.advance(1);
      assert.equal(w.agent.svidCallsOf(spec.pod.uid).length, calls + 1, `failure ${failure}: re-opened on time`);
    }
    assert.deepEqual(delays, [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000], 'doubling from 500 ms, capped at 30 s');
    assert.deepEqual(
      w.log
        .entries()
        .filter((e) => e['level'] === 'warn' && e['stream'] === 'svid')
        .map((e) => e['retry_in_ms']),
      delays,
    );
    assert.equal(w.log.withMessage('the SPIRE agent stream failed with UNAVAILABLE: connection reset by peer').length, 8);
    assert.equal(await w.counter('agentStreamErrors', { stream: 'svid', code: 'UNAVAILABLE' }), 8);
    assert.equal(w.storage.filesAt(spec.targetPath), filesBefore, 'the files stay while the agent is away');
    assert.equal(w.log.withMessage('SVID stream opened; waiting for the SPIRE agent').length, 9);

    // A message on the re-opened stream resets the backoff.
    w.sendSvids(spec, svid(0));
    await settle();
    w.agent.openSvidCall(spec.pod.uid).fail(status.UNAVAILABLE, 'connection reset by peer');
    await settle();
    assert.deepEqual(w.clock.pendingDelays(), [500]);
    await w.close();
    assert.deepEqual(w.clock.pendingDelays(), [], 'close cancels the pending re-open');
  });

  it('draws the jitter from the injected source: half of each step at the bottom of the range', async () => {
    const w = new World({ random: () => 0 });
    const spec = podSpec(41);
    await w.publishLive(spec, svid(0));
    const delays: number[] = [];
    for (let failure = 1; failure <= 3; failure++) {
      w.agent.openSvidCall(spec.pod.uid).fail(status.UNAVAILABLE, 'connection reset by peer');
      await settle();
      const delay = w.clock.nextDueIn() ?? -1;
      delays.push(delay);
      await w.clock.advance(delay);
    }
    assert.deepEqual(delays, [250, 500, 1000]);
    await w.close();
  });

  it('the agent ending a stream with OK is a failure like any other: re-opened after the backoff', async () => {
    const w = new World();
    const spec = podSpec(42);
    await w.publishLive(spec, svid(0));
    w.agent.openSvidCall(spec.pod.uid).end();
    await settle();
    assert.deepEqual(w.clock.pendingDelays(), [500]);
    assert.equal(w.log.withMessage('the SPIRE agent stream failed with UNAVAILABLE: the agent ended the stream').length, 1);
    await w.clock.advance(500);
    assert.equal(w.agent.svidCallsOf(spec.pod.uid).length, 2);
    await w.close();
  });

  it('the agent socket re-appearing re-opens at once: a stream waiting out a backoff, and a call of the replaced client', async () => {
    const w = new World();
    const spec = podSpec(43);
    await w.publishLive(spec, svid(0));
    for (let failure = 1; failure <= 3; failure++) {
      w.agent.openSvidCall(spec.pod.uid).fail(status.UNAVAILABLE, 'connection reset by peer');
      await settle();
      if (failure < 3) await w.clock.advance(w.clock.nextDueIn() ?? -1);
    }
    assert.deepEqual(w.clock.pendingDelays(), [2000]);
    const bundleCall = w.agent.openBundleCall();
    w.agent.socketReappeared();
    await settle();
    assert.equal(w.clock.now(), 1500, 'no time passed');
    assert.deepEqual(w.clock.pendingDelays(), [], 'the backoff timer is cancelled');
    const reopened = w.agent.openSvidCall(spec.pod.uid);
    assert.equal(reopened.generation, 1, 'on the new client');
    // The bundle call was still open on the replaced client: dropped and re-opened.
    assert.equal(bundleCall.cancelled, true);
    assert.equal(w.agent.openBundleCall().generation, 1);
    // The backoff starts over.
    reopened.fail(status.UNAVAILABLE, 'connection reset by peer');
    await settle();
    assert.deepEqual(w.clock.pendingDelays(), [500]);
    await w.close();
  });

  it("a configuration failure of the volume's stream fails a waiting publish at once with the remedy", async () => {
    const failures: StreamFailure[] = [
      { code: status.PERMISSION_DENIED, details: 'caller not configured as an authorized delegate', socketMissing: false },
      { code: status.PERMISSION_DENIED, details: 'no identity issued', socketMissing: false },
      { code: status.INVALID_ARGUMENT, details: 'could not parse provided selectors', socketMissing: false },
      { code: status.UNIMPLEMENTED, details: 'unknown service spire.api.agent.delegatedidentity.v1.DelegatedIdentity', socketMissing: false },
    ];
    for (const [index, failure] of failures.entries()) {
      const w = new World();
      const spec = podSpec(44 + index);
      const call = w.publish(spec);
      await settle();
      w.agent.openSvidCall(spec.pod.uid).fail(failure.code, failure.details);
      await settle();
      assertFailedWith(call, status.UNAVAILABLE, describeStreamFailure(failure, w.agent.socketPath));
      assert.equal(w.clock.now(), 0);
      assert.equal(w.store.isEmpty(), true);
      assert.equal(w.storage.targets.size, 0);
      assert.deepEqual(w.clock.pendingDelays(), [], 'neither the re-open nor the timeout is left');
      assert.deepEqual(w.agent.openSvidCalls(), []);
      await w.close();
    }
  });

  it('a transient failure does not fail a waiting publish: the re-opened stream serves it', async () => {
    const w = new World();
    const spec = podSpec(48);
    const call = w.publish(spec);
    await settle();
    w.sendBundle();
    w.agent.openSvidCall(spec.pod.uid).fail(status.UNAVAILABLE, 'connection reset by peer');
    await settle();
    assert.equal(call.settled, false);
    await w.clock.advance(500);
    w.sendSvids(spec, svid(0));
    await settle();
    assertSucceeded(call);
    assert.equal(w.serialOnDisk(spec), svid(0).serialHex);
    assert.deepEqual(w.clock.pendingDelays(), []);
    await w.close();
  });

  it('a new volume re-opens a bundle stream that waits out a backoff at once', async () => {
    const w = new World();
    const first = podSpec(49);
    await w.publishLive(first, svid(0));
    for (let failure = 1; failure <= 2; failure++) {
      w.agent.openBundleCall().fail(status.PERMISSION_DENIED, 'caller not configured as an authorized delegate');
      await settle();
      if (failure < 2) await w.clock.advance(w.clock.nextDueIn() ?? -1);
    }
    assert.deepEqual(w.clock.pendingDelays(), [1000]);
    const bundleCalls = w.agent.bundleCalls.length;
    const call = w.publish(podSpec(50));
    await settle();
    assert.equal(w.agent.bundleCalls.length, bundleCalls + 1, 'the bundle stream is re-opened by the new subscriber');
    assert.deepEqual(w.clock.pendingDelays(), [PUBLISH_TIMEOUT_MS]);
    w.sendBundle();
    w.sendSvids(podSpec(50), svid(1));
    await settle();
    assertSucceeded(call);
    await w.close();
  });
});

describe('resume after a restart', () => {
  it('takes back a live volume without writing; identical material then writes nothing, a rotation writes', async () => {
    const first = new World();
    const spec = podSpec(60);
    await first.publishLive(spec, svid(0));
    await first.close();

    const second = new World({ store: first.store, storage: first.storage });
    const attempts = second.storage.attempts.length;
    const calls = second.storage.calls.length;
    await second.manager.resume();
    assert.equal(second.manager.volumeCount, 1);
    assert.equal(second.storage.attempts.length, attempts, 'no write on resume');
    assert.deepEqual(second.storage.calls.slice(calls), [], 'nothing prepared or removed');
    second.sendBundle();
    second.sendSvids(spec, svid(0));
    await settle();
    assert.deepEqual(
      second.storage.attempts.slice(attempts).map((a) => a.outcome),
      ['unchanged'],
    );
    second.sendSvids(spec, svid(1));
    await settle();
    assert.deepEqual(
      second.storage.attempts.slice(attempts).map((a) => a.outcome),
      ['unchanged', 'written'],
    );
    assert.equal(second.serialOnDisk(spec), svid(1).serialHex);
    // A repeated publish of the resumed volume is OK at once (idempotent).
    const again = second.publish(spec);
    await settle();
    assertSucceeded(again);
    assert.equal(second.agent.svidCallsOf(spec.pod.uid).length, 1);
    await second.close();
  });

  it("ends with one info line once every resumed volume is checked against the agent's first answer: unchanged, rewritten or unpublished", async () => {
    const first = new World();
    const specs = [podSpec(70), podSpec(71), podSpec(72), podSpec(73)];
    for (const spec of specs) await first.publishLive(spec, svid(0));
    await first.close();

    const second = new World({ store: first.store, storage: first.storage, logLevel: 'info' });
    const line = (): Record<string, unknown>[] => second.log.withMessage("resumed volumes checked against the SPIRE agent's first answers");
    await second.manager.resume();
    second.sendBundle();
    second.clock.tick(40);
    second.sendSvids(specs[0] as PublishSpec, svid(0));
    second.sendSvids(specs[1] as PublishSpec, svid(1));
    await settle();
    assert.deepEqual(line(), [], 'two volumes still wait for their first answer');
    // An answer that cannot be written yet (no SVID for the pod) does not count.
    second.sendSvids(specs[2] as PublishSpec);
    await settle();
    assert.deepEqual(line(), []);
    await second.manager.unpublish((specs[3] as PublishSpec).volumeId, (specs[3] as PublishSpec).targetPath);
    second.clock.tick(2);
    second.sendSvids(specs[2] as PublishSpec, svid(0));
    await settle();
    assert.equal(line().length, 1);
    assert.deepEqual(Object.fromEntries(['volumes', 'unchanged', 'rewritten', 'closed', 'duration_ms'].map((key) => [key, line()[0]?.[key]])), {
      volumes: 4,
      unchanged: 2,
      rewritten: 1,
      closed: 1,
      duration_ms: 42,
    });
    // Later answers (a rotation) log nothing more.
    second.sendSvids(specs[0] as PublishSpec, svid(1));
    await settle();
    assert.equal(line().length, 1);
    await second.close();
  });

  it('logs no such line when the driver stops before the agent answered: the volumes it closes were not checked', async () => {
    const first = new World();
    const spec = podSpec(74);
    await first.publishLive(spec, svid(0));
    await first.close();
    const second = new World({ store: first.store, storage: first.storage, logLevel: 'info' });
    await second.manager.resume();
    await second.close();
    assert.deepEqual(second.log.withMessage("resumed volumes checked against the SPIRE agent's first answers"), []);
  });

  it('logs no such line when nothing was resumed', async () => {
    const w = new World({ logLevel: 'info' });
    await w.manager.resume();
    assert.deepEqual(w.log.withMessage("resumed volumes checked against the SPIRE agent's first answers"), []);
    await w.close();
  });

  it('decides per record: live, cleaned, forgotten, removed; drops tombstones of gone pods; leaves newer-format records', async () => {
    const w = new World();
    const live = podSpec(61);
    const noFiles = podSpec(62);
    const gone = podSpec(63);
    const symlink = podSpec(64);
    const tombstoneGonePod = inlineVolumeId('pod-uid-65', 'spiffe');
    const tombstoneLivePod = inlineVolumeId('pod-uid-66', 'spiffe');
    const newerFormat = inlineVolumeId('pod-uid-67', 'spiffe');
    const corrupt = inlineVolumeId('pod-uid-68', 'spiffe');
    for (const spec of [live, noFiles, gone, symlink]) w.store.seed(recordFor(spec, true));
    w.storage.seedDirectory(live.targetPath, { files: [{ name: 'svid.pem', data: Buffer.from('previous run'), mode: 0o644 }] });
    w.storage.seedDirectory(noFiles.targetPath);
    w.storage.seedSymlink(symlink.targetPath);
    w.store.seedTombstone(tombstoneGonePod);
    w.store.seedTombstone(tombstoneLivePod);
    w.storage.kubeletVolumes.set(tombstoneLivePod, '/var/lib/kubelet/pods/pod-uid-66/volumes/kubernetes.io~csi/spiffe/mount');
    w.store.seedNewerFormat(newerFormat);
    w.store.seedCorrupt(corrupt);
    w.storage.kubeletVolumes.set(corrupt, '/var/lib/kubelet/pods/pod-uid-68/volumes/kubernetes.io~csi/spiffe/mount');

    await w.manager.resume();

    assert.equal(w.manager.volumeCount, 1);
    assert.deepEqual(w.store.recordIds(), [live.volumeId]);
    assert.deepEqual(w.store.tombstoneIdsNow().sort(), [tombstoneLivePod, corrupt].sort());
    assert.deepEqual(w.store.newerFormatIds(), [newerFormat]);
    assert.deepEqual([...w.storage.targets.keys()], [live.targetPath]);
    assert.deepEqual(w.storage.calls.sort(), [`remove ${noFiles.targetPath}`, `remove ${symlink.targetPath}`].sort(), 'a gone target is not touched');
    assert.deepEqual(w.storage.attempts, [], 'the live volume is not rewritten');
    assert.deepEqual(
      w.agent.openSvidCalls().map((call) => call.request?.selectors.find((s) => s.value.startsWith('pod-uid:'))?.value),
      ['pod-uid:pod-uid-61'],
    );

    const byVolume = (volumeId: string): [unknown, unknown][] =>
      w.log
        .entries()
        .filter((e) => e['volume_id'] === volumeId && e['level'] !== 'debug')
        .map((e) => [e['level'], e['msg']]);
    assert.deepEqual(byVolume(noFiles.volumeId), [
      ['info', 'cleaning up a volume without files (publish interrupted by a restart, or tmpfs lost in a reboot)'],
    ]);
    assert.deepEqual(byVolume(gone.volumeId), [['info', 'target path is gone (pod deleted while the driver was down); forgetting the volume']]);
    assert.deepEqual(byVolume(symlink.volumeId), [
      [
        'error',
        'target path is no longer a directory (a symbolic link or a file replaced it while the driver was down); not resuming the volume, removing what is there',
      ],
    ]);
    assert.deepEqual(byVolume(tombstoneGonePod), [['info', 'forgot the tombstone of a quarantined volume whose pod is gone']]);
    assert.deepEqual(byVolume(live.volumeId), []);
    const summary = w.log.withMessage('resumed volumes from the state directory');
    assert.deepEqual(
      summary.map((e) => [e['volumes'], e['quarantined'], e['newer_format']]),
      [[1, 1, 1]],
    );

    // The newer-format volume is still ours for unpublish.
    assert.equal(await w.store.knows(newerFormat), true);
    await w.close();
  });

  it('a record whose target cannot be inspected stays for the next start; the others resume', async () => {
    const w = new World();
    const broken = podSpec(69);
    const fine = podSpec(70);
    for (const spec of [broken, fine]) {
      w.store.seed(recordFor(spec, true));
      w.storage.seedDirectory(spec.targetPath, { files: [{ name: 'svid.pem', data: Buffer.from('x'), mode: 0o644 }] });
    }
    const inspect = w.storage.inspect.bind(w.storage);
    w.storage.inspect = async (targetPath) =>
      targetPath === broken.targetPath ? Promise.reject(new Error('EIO: i/o error, readlink')) : inspect(targetPath);
    await w.manager.resume();
    assert.equal(w.manager.volumeCount, 1);
    assert.deepEqual(w.store.recordIds().sort(), [broken.volumeId, fine.volumeId].sort());
    const failed = w.log.withMessage('could not resume a volume; its metadata stays so the next start or NodeUnpublishVolume retries');
    assert.deepEqual(
      failed.map((e) => [e['volume_id'], e['err']]),
      [[broken.volumeId, 'EIO: i/o error, readlink']],
    );
    await w.close();
  });

  it('resumed volumes are never refused, even past --max-volumes; new publishes are', async () => {
    const w = new World({ maxVolumes: 1 });
    for (const spec of [podSpec(71), podSpec(72)]) {
      w.store.seed(recordFor(spec, true));
      w.storage.seedDirectory(spec.targetPath, { files: [{ name: 'svid.pem', data: Buffer.from('x'), mode: 0o644 }] });
    }
    await w.manager.resume();
    assert.equal(w.manager.volumeCount, 2);
    const spec = podSpec(73);
    const call = w.publish(spec);
    await settle();
    assertFailedWith(call, status.RESOURCE_EXHAUSTED, exhausted(spec, 2, 0, 1));
    await w.close();
  });
});

describe('write retry through ManagedVolume', () => {
  it('retries a failed first write on the clock until it lands; the publish waits for it', async () => {
    const w = new World();
    const spec = podSpec(80);
    w.storage.failWrites(3, 'ENOSPC');
    const call = w.publish(spec);
    await settle();
    w.sendBundle();
    w.sendSvids(spec, svid(0));
    await settle();
    const schedule = new Backoff({ initialMs: WRITE_RETRY_INITIAL_MS, maxMs: WRITE_RETRY_MAX_MS, random: FULL_STEP });
    const expected = [schedule.next(), schedule.next(), schedule.next()];
    assert.deepEqual(expected, [1000, 2000, 4000]);
    for (const [index, delay] of expected.entries()) {
      assert.equal(w.clock.nextDueIn(), delay, `retry ${index + 1} is due after ${delay} ms`);
      assert.equal(await w.writeFailing(), 1);
      await w.clock.advance(delay - 1);
      assert.equal(w.storage.attempts.length, index + 1, 'not retried early');
      await w.clock.advance(1);
      assert.equal(w.storage.attempts.length, index + 2, 'retried on time');
    }
    assertSucceeded(call);
    assert.equal(w.clock.now(), 7000);
    assert.deepEqual(
      w.storage.attempts.map((a) => a.outcome),
      ['failed', 'failed', 'failed', 'written'],
    );
    assert.deepEqual(w.clock.pendingDelays(), []);
    assert.equal(await w.counter('volumeWriteFailures', { reason: 'ENOSPC' }), 3);
    assert.equal(await w.writeFailing(), 0);
    assert.deepEqual(
      w.log
        .entries()
        .filter((e) => String(e['msg']).startsWith('writing the SVID files failed'))
        .map((e) => [e['level'], e['attempt'], e['retry_in_ms']]),
      [
        ['error', 1, 1000],
        ['warn', 2, 2000],
        ['warn', 3, 4000],
      ],
    );
    assert.deepEqual(
      w.log.withMessage('SVID files written after failed attempts; no longer retrying').map((e) => e['failed_attempts']),
      [3],
    );
    assert.equal(w.log.withMessage('volume published')[0]?.['duration_ms'], 7000);
    await w.close();
  });

  it('a publish whose writes keep failing times out at exactly --publish-timeout, saying so, and stops retrying', async () => {
    const w = new World();
    const spec = podSpec(81);
    w.storage.failWrites(Infinity, 'ENOSPC');
    const call = w.publish(spec);
    await settle();
    w.sendBundle();
    w.sendSvids(spec, svid(0));
    await settle();
    await w.clock.advance(PUBLISH_TIMEOUT_MS - 1);
    assert.equal(call.settled, false);
    // Attempts at 0, 1, 3, 7, 15 and 31 s; the next would be at 61 s.
    assert.equal(w.storage.attempts.length, 6);
    await w.clock.advance(1);
    assertFailedWith(
      call,
      status.DEADLINE_EXCEEDED,
      `no SVID after 60s: writing the SVID files into ${spec.targetPath} is failing (6 failed attempts, ` +
        `last: atomic writer for ${spec.targetPath}: writing files into ..v failed: ENOSPC: simulated failure, write); the driver keeps retrying with backoff`,
    );
    assert.deepEqual(w.clock.pendingDelays(), [], 'the retry timer is cancelled with the volume');
    assert.equal(await w.writeFailing(), 0);
    await w.clock.advance(60_000);
    assert.equal(w.storage.attempts.length, 6, 'no attempt after the failed publish');
    await w.close();
  });

  it('a failing rotation keeps the previous files; new material supersedes the pending retry and lands', async () => {
    const w = new World();
    const spec = podSpec(82);
    await w.publishLive(spec, svid(0));
    w.storage.failWrites(2, 'EIO');
    w.sendSvids(spec, svid(1));
    await settle();
    assert.deepEqual(w.clock.pendingDelays(), [1000]);
    assert.equal(w.serialOnDisk(spec), svid(0).serialHex, 'the previous files stay');
    await w.clock.advance(400);
    w.sendSvids(spec, svid(2));
    await settle();
    assert.deepEqual(w.clock.pendingDelays(), [2000], 'one timer: the first retry was superseded');
    assert.deepEqual(
      w.clock.history.map((t) => [t.at, t.delayMs, t.state]),
      [
        [0, PUBLISH_TIMEOUT_MS, 'cancelled'],
        [0, 1000, 'cancelled'],
        [400, 2000, 'pending'],
      ],
    );
    await w.clock.advance(2000);
    assert.deepEqual(
      w.storage.attempts.map((a) => a.outcome),
      ['written', 'failed', 'failed', 'written'],
    );
    assert.equal(w.serialOnDisk(spec), svid(2).serialHex);
    assert.equal(await w.counter('volumeWriteFailures', { reason: 'EIO' }), 2);
    assert.deepEqual(w.clock.pendingDelays(), []);
    await w.close();
  });

  it('stops retrying when the newest material has nothing to write', async () => {
    const w = new World();
    const spec = podSpec(83);
    await w.publishLive(spec, svid(0));
    w.storage.failWrites(Infinity, 'EROFS');
    w.sendSvids(spec, svid(1));
    await settle();
    assert.deepEqual(w.clock.pendingDelays(), [1000]);
    w.sendSvids(spec);
    await settle();
    assert.deepEqual(w.clock.pendingDelays(), []);
    assert.equal(await w.writeFailing(), 0);
    assert.deepEqual(
      w.log
        .withMessage('no longer retrying the failed write: the newest material from the SPIRE agent has nothing to write')
        .map((e) => e['failed_attempts']),
      [1],
    );
    assert.equal(w.serialOnDisk(spec), svid(0).serialHex);
    await w.close();
  });
});

/** RESOURCE_EXHAUSTED's message for `spec` with `live` published and `publishing` being published. */
function exhausted(spec: PublishSpec, live: number, publishing: number, maxVolumes: number): string {
  return (
    `cannot publish volume ${spec.volumeId} of pod ${spec.pod.namespace}/${spec.pod.name}: ` +
    `this node already serves ${live + publishing} ${DRIVER_NAME} volumes (${live} published, ${publishing} being published), ` +
    `the limit set by the driver's --max-volumes=${maxVolumes} (chart value driver.maxVolumes): ` +
    "raise it (with the driver's memory limit: every volume costs memory) or spread the pods over more nodes. " +
    'kubelet retries; the pod starts once a volume on this node is unpublished'
  );
}

describe('max-volumes', () => {
  it('two publishes racing for the last place: exactly one gets it, the other is refused with nothing touched', async () => {
    const w = new World({ maxVolumes: 1 });
    const [a, b] = [podSpec(90), podSpec(91)];
    const first = w.publish(a);
    const second = w.publish(b);
    await settle();
    assert.equal(first.settled, false);
    assertFailedWith(second, status.RESOURCE_EXHAUSTED, exhausted(b, 0, 1, 1));
    assert.deepEqual(
      w.store.written.map((r) => r.volumeId),
      [a.volumeId],
    );
    assert.deepEqual(w.storage.calls, [`prepare ${a.targetPath}`]);
    assert.deepEqual(
      w.agent.svidCalls.map((call) => call.request?.selectors[2]?.value),
      [`pod-uid:${a.pod.uid}`],
    );
    w.sendBundle();
    w.sendSvids(a, svid(0));
    await settle();
    assertSucceeded(first);
    await w.close();
  });

  it('a failed, cancelled or unpublished publish frees its place; a live volume keeps it', async () => {
    const w = new World({ maxVolumes: 2 });
    const [a, b, c, d] = [podSpec(92), podSpec(93), podSpec(94), podSpec(95)];
    const callA = w.publish(a);
    const kubelet = new AbortController();
    const callB = w.publish(b, kubelet.signal);
    await settle();
    const refused = w.publish(c);
    await settle();
    assertFailedWith(refused, status.RESOURCE_EXHAUSTED, exhausted(c, 0, 2, 2));

    kubelet.abort();
    await settle();
    assertFailedWith(callB, status.ABORTED, 'kubelet cancelled the NodePublishVolume call');
    const callC = w.publish(c);
    await settle();
    assert.equal(callC.settled, false, 'the cancelled publish gave its place back');

    w.sendBundle();
    w.sendSvids(a, svid(0));
    await settle();
    assertSucceeded(callA);
    const refusedD = w.publish(d);
    await settle();
    assertFailedWith(refusedD, status.RESOURCE_EXHAUSTED, exhausted(d, 1, 1, 2));

    await w.manager.unpublish(c.volumeId, c.targetPath);
    await settle();
    assertFailedWith(callC, status.ABORTED, 'the volume was unpublished while it was being published');
    const callD = w.publish(d);
    await settle();
    await w.clock.advance(PUBLISH_TIMEOUT_MS);
    assertFailedWith(
      callD,
      status.DEADLINE_EXCEEDED,
      'no SVID after 60s: the SPIRE agent has not sent an SVID for this pod yet (it may still be signing it)',
    );
    const callB2 = w.publish(b);
    await settle();
    assert.equal(callB2.settled, false, 'the timed-out publish gave its place back');
    await w.manager.unpublish(b.volumeId, b.targetPath);
    await w.manager.unpublish(a.volumeId, a.targetPath);
    assert.equal(w.manager.volumeCount, 0);
    assert.equal(w.store.isEmpty(), true);
    assert.equal(w.storage.targets.size, 0);
    await w.close();
  });

  it('a repeated publish of a volume being published waits for it and takes no second place', async () => {
    const w = new World({ maxVolumes: 1 });
    const spec = podSpec(96);
    const first = w.publish(spec);
    const repeated = w.publish(spec);
    await settle();
    assert.equal(first.settled, false);
    assert.equal(repeated.settled, false, 'waits behind the first on the volume lock');
    w.sendBundle();
    w.sendSvids(spec, svid(0));
    await settle();
    assertSucceeded(first);
    assertSucceeded(repeated);
    assert.equal(w.store.written.length, 1);
    assert.deepEqual(w.storage.calls, [`prepare ${spec.targetPath}`]);
    assert.equal(w.agent.svidCalls.length, 1);
    await w.close();
  });
});
