/**
 * The health of a volume (NodeGetVolumeStats' volume_condition) and the
 * gauges built on it: the pure decision with chosen times, then a real
 * VolumeManager and ManagedVolume on the in-memory fakes with a wall clock the
 * test moves, so that an SVID can age past its renewal point and expire
 * without waiting.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { before, describe, it } from 'node:test';
import { status } from '../../src/grpc-status.js';
import { DriverError } from '../../src/errors.js';
import { DriverMetrics } from '../../src/observability/metrics.js';
import { describeStreamFailure, type StreamFailure } from '../../src/spire/agent-errors.js';
import { BundleWatcher } from '../../src/spire/bundle-watcher.js';
import { parseVolumeAttributes } from '../../src/volumes/attributes.js';
import { inlineVolumeId } from '../../src/volumes/pod-binding.js';
import type { PublishSpec } from '../../src/volumes/publish-spec.js';
import { VolumeManager } from '../../src/volumes/volume-manager.js';
import { assessVolumeHealth, renewalPointMs, type CurrentSvid } from '../../src/volumes/volume-health.js';
import { mintSvid } from '../support/certs.js';
import { FakeAgentConnection, FakeTrustDomain, svidResponse, type FakeSvid } from '../support/fakes/fake-agent.js';
import { ManualClock, settle } from '../support/fakes/manual-clock.js';
import { MemoryLog } from '../support/fakes/memory-log.js';
import { MemoryRecordStore } from '../support/fakes/memory-record-store.js';
import { MemoryVolumeStorage } from '../support/fakes/memory-volume-storage.js';

const HOUR = 3600_000;
const MINUTE = 60_000;
const SOCKET = '/run/spire/agent-sockets/admin.sock';
const SPIFFE_ID = 'spiffe://example.org/ns/default/sa/app';

describe('assessVolumeHealth', () => {
  const t0 = Date.parse('2026-11-01T00:00:00Z');
  const svid: CurrentSvid = { spiffeId: SPIFFE_ID, notBefore: new Date(t0), notAfter: new Date(t0 + HOUR) };
  const base = { svid, streamFailure: undefined, agentSocketPath: SOCKET, writeFailure: undefined };
  const unavailable: StreamFailure = { code: status.UNAVAILABLE, details: 'connect ENOENT', socketMissing: true };

  it('puts the renewal point half way through the lifetime', () => {
    assert.equal(renewalPointMs(svid), t0 + 30 * MINUTE);
  });

  it('is normal before the renewal point and within the grace (10 % of the lifetime) after it', () => {
    for (const nowMs of [t0, t0 + 30 * MINUTE, t0 + 36 * MINUTE]) {
      const condition = assessVolumeHealth({ ...base, nowMs });
      assert.equal(condition.abnormal, false, new Date(nowMs).toISOString());
      assert.match(condition.message, /valid until 2026-11-01T01:00:00.000Z/);
    }
  });

  it('is abnormal past the renewal point plus the grace, saying when renewal was due and what to check', () => {
    const condition = assessVolumeHealth({ ...base, nowMs: t0 + 36 * MINUTE + 1 });
    assert.equal(condition.abnormal, true);
    assert.equal(
      condition.message,
      `the SVID in this volume (${SPIFFE_ID}) should have been renewed at 2026-11-01T00:30:00.000Z (half its lifetime) ` +
        'but the SPIRE agent has sent no newer one; it expires at 2026-11-01T01:00:00.000Z. ' +
        "Check the SPIRE agent's logs (can it reach the server?) and that the pod's registration entry still exists",
    );
  });

  it('is abnormal once expired, with the agent failure as the cause when there is one', () => {
    const expired = assessVolumeHealth({ ...base, nowMs: t0 + HOUR });
    assert.equal(expired.abnormal, true);
    assert.equal(
      expired.message,
      `the SVID in this volume (${SPIFFE_ID}) expired at 2026-11-01T01:00:00.000Z, so workloads using it fail their TLS handshakes: ` +
        "the SPIRE agent has not renewed it; check the agent's logs and the registration entry of this pod",
    );
    const agentDown = assessVolumeHealth({ ...base, nowMs: t0 + 2 * HOUR, streamFailure: unavailable });
    assert.equal(agentDown.abnormal, true);
    assert.ok(agentDown.message.endsWith(describeStreamFailure(unavailable, SOCKET)), agentDown.message);
  });

  it('is abnormal while the agent stream fails or writes fail, even with a fresh SVID', () => {
    const agentDown = assessVolumeHealth({ ...base, nowMs: t0 + MINUTE, streamFailure: unavailable });
    assert.equal(agentDown.abnormal, true);
    assert.equal(
      agentDown.message,
      `the SVID in this volume cannot be renewed: ${describeStreamFailure(unavailable, SOCKET)}. ` +
        `The files hold the SVID ${SPIFFE_ID}, valid until 2026-11-01T01:00:00.000Z.`,
    );
    const writing = assessVolumeHealth({ ...base, nowMs: t0 + MINUTE, writeFailure: 'writing the SVID files into /x is failing' });
    assert.equal(writing.abnormal, true);
    assert.match(writing.message, /^the renewed SVID has not reached this volume: writing the SVID files into \/x is failing\. The files hold/);
  });

  it('is normal when the SVID is not known yet (a resumed volume before the first response)', () => {
    assert.deepEqual(assessVolumeHealth({ ...base, svid: undefined, nowMs: t0 }), {
      abnormal: false,
      message: 'the files are in place; waiting for the SPIRE agent to confirm the current SVID',
    });
  });
});

let td: FakeTrustDomain;
before(async () => {
  td = await FakeTrustDomain.create('example.org');
});

/** An SVID of example.org with the given validity (NotBefore at most 5 min ahead of now: svid-check.ts). */
async function svidValid(notBefore: Date, notAfter: Date): Promise<FakeSvid> {
  const minted = await mintSvid({ ca: td.ca, spiffeId: SPIFFE_ID, notBefore, notAfter });
  return {
    spiffeId: SPIFFE_ID,
    serialHex: minted.serialHex,
    message: {
      x509_svid: {
        cert_chain: minted.certChain,
        id: { trust_domain: 'example.org', path: '/ns/default/sa/app' },
        expires_at: Math.floor(minted.notAfter.getTime() / 1000),
        hint: '',
      },
      x509_svid_key: minted.keyPkcs8Der,
    },
  };
}

function podSpec(n: number): PublishSpec {
  const uid = `pod-uid-${n}`;
  return {
    volumeId: inlineVolumeId(uid, 'spiffe'),
    targetPath: `/var/lib/kubelet/pods/${uid}/volumes/kubernetes.io~csi/spiffe/mount`,
    volumeName: 'spiffe',
    pod: { uid, name: `app-${n}`, namespace: 'default', serviceAccount: 'app' },
    // The defaults, whatever fields the attributes grow.
    attributes: parseVolumeAttributes({}),
    fsGroup: null,
  };
}

class World {
  readonly clock = new ManualClock();
  readonly agent = new FakeAgentConnection();
  readonly metrics = new DriverMetrics();
  readonly storage = new MemoryVolumeStorage();
  readonly bundles: BundleWatcher;
  readonly manager: VolumeManager;
  /** The wall clock the volumes judge SVID validity by. */
  wallNow = Date.now();

  constructor() {
    const logger = new MemoryLog().logger('debug');
    const random = (): number => 1;
    this.bundles = new BundleWatcher({ connection: this.agent, logger, metrics: this.metrics, clock: this.clock, random });
    this.manager = new VolumeManager({
      nodeName: 'node-a',
      driverName: 'csi.spire.io',
      publishTimeoutMs: 60_000,
      maxVolumes: 10,
      connection: this.agent,
      bundles: this.bundles,
      store: new MemoryRecordStore(),
      storage: this.storage,
      logger,
      metrics: this.metrics,
      createWriter: this.storage.createWriter,
      writeRetry: { random },
      clock: this.clock,
      random,
      wallClock: () => this.wallNow,
    });
  }

  async publishLive(spec: PublishSpec, svid: FakeSvid): Promise<void> {
    const call = this.manager.publish(spec, new AbortController().signal);
    await settle();
    if (this.agent.openBundleCall().sent === 0) this.agent.openBundleCall().push(td.bundleResponse());
    this.agent.openSvidCall(spec.pod.uid).push(svidResponse(svid));
    await call;
  }

  async gauge(name: 'earliestSvidExpiry' | 'abnormalVolumes'): Promise<number | undefined> {
    return (await this.metrics[name].get()).values[0]?.value;
  }

  async close(): Promise<void> {
    await this.manager.shutdown();
    this.bundles.close();
  }
}

function notAfterOf(svid: FakeSvid): number {
  const der = svid.message.x509_svid?.cert_chain[0];
  assert.ok(der);
  return new Date(new X509Certificate(der).validTo).getTime();
}

describe('volume health through the VolumeManager', () => {
  it('turns abnormal when renewal is overdue, normal again when a newer SVID is written, abnormal once expired', async () => {
    const w = new World();
    const t0 = Math.floor(Date.now() / 1000) * 1000;
    const spec = podSpec(1);
    const first = await svidValid(new Date(t0 - 10_000), new Date(t0 + HOUR - 10_000));
    await w.publishLive(spec, first);
    const volume = w.manager.liveVolume(spec.volumeId, spec.targetPath);
    assert.equal(volume.health().abnormal, false);
    assert.equal(await w.gauge('earliestSvidExpiry'), notAfterOf(first) / 1000);
    assert.equal(await w.gauge('abnormalVolumes'), 0);

    w.wallNow = t0 + 40 * MINUTE;
    assert.equal(volume.health().abnormal, true);
    assert.match(volume.health().message, /should have been renewed at .* but the SPIRE agent has sent no newer one/);
    assert.equal(await w.gauge('abnormalVolumes'), 1);

    // The agent renews: a newer SVID whose own renewal point is ahead.
    const renewed = await svidValid(new Date(t0 + 4 * MINUTE), new Date(t0 + 2 * HOUR + 4 * MINUTE));
    w.agent.openSvidCall(spec.pod.uid).push(svidResponse(renewed));
    await settle();
    assert.deepEqual(volume.health().abnormal, false, volume.health().message);
    assert.equal(await w.gauge('earliestSvidExpiry'), notAfterOf(renewed) / 1000);

    w.wallNow = t0 + 3 * HOUR;
    assert.equal(volume.health().abnormal, true);
    assert.match(volume.health().message, /^the SVID in this volume \(spiffe:\/\/example.org\/ns\/default\/sa\/app\) expired at /);
    await w.close();
  });

  it('is abnormal while its SVID stream fails or its writes fail, and normal once they recover', async () => {
    const w = new World();
    const spec = podSpec(2);
    await w.publishLive(spec, await td.svid('/ns/default/sa/app'));
    const volume = w.manager.liveVolume(spec.volumeId, spec.targetPath);

    w.agent.openSvidCall(spec.pod.uid).fail(status.UNAVAILABLE, 'connection refused');
    const failure: StreamFailure = { code: status.UNAVAILABLE, details: 'connection refused', socketMissing: false };
    assert.equal(volume.health().abnormal, true);
    assert.match(volume.health().message, /^the SVID in this volume cannot be renewed: /);
    assert.ok(volume.health().message.includes(describeStreamFailure(failure, w.agent.socketPath)));

    // The stream re-opens after its backoff and the agent answers: the failure clears.
    await w.clock.advance(w.clock.nextDueIn() ?? 0);
    w.storage.failWrites(1);
    w.agent.openSvidCall(spec.pod.uid).push(svidResponse(await td.svid('/ns/default/sa/app')));
    await settle();
    assert.equal(volume.health().abnormal, true);
    assert.match(volume.health().message, /^the renewed SVID has not reached this volume: writing the SVID files into .* is failing/);

    await w.clock.advance(w.clock.nextDueIn() ?? 0);
    assert.equal(volume.health().abnormal, false, volume.health().message);
    await w.close();
  });

  it('finds only live volumes at their own path (NOT_FOUND otherwise), and has no expiry gauge without volumes', async () => {
    const w = new World();
    assert.equal(await w.gauge('earliestSvidExpiry'), undefined);
    const spec = podSpec(3);
    const notFound = (err: unknown): boolean => err instanceof DriverError && err.code === status.NOT_FOUND;
    assert.throws(() => w.manager.liveVolume(spec.volumeId, spec.targetPath), notFound);
    await w.publishLive(spec, await td.svid('/ns/default/sa/app'));
    assert.equal(w.manager.liveVolume(spec.volumeId, `${spec.targetPath}/`).record.volumeId, spec.volumeId);
    assert.throws(
      () => w.manager.liveVolume(spec.volumeId, '/elsewhere'),
      (err: unknown) => {
        assert.ok(notFound(err));
        assert.match(String((err as Error).message), /is published at .*, not at \/elsewhere/);
        return true;
      },
    );
    assert.equal(typeof (await w.gauge('earliestSvidExpiry')), 'number');
    await w.manager.unpublish(spec.volumeId, spec.targetPath);
    assert.equal(await w.gauge('earliestSvidExpiry'), undefined, 'gone with the last volume');
    await w.close();
  });
});
