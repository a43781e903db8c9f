/**
 * ManagedVolume and a federated bundle the SVID response lists before the
 * bundle stream has brought it: the first files of a volume wait for it (the
 * pod should not start without the trust it was registered for) and a publish
 * that times out says which trust domain is missing; a live volume writes its
 * rotation at once, and the federated file follows when the bundle arrives.
 * The agent is the development agent; the bundle source withholds one trust
 * domain until the test releases it; the writer records what it is given.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { status } from '@grpc/grpc-js';
import { DriverError } from '../../src/errors.js';
import type { FileSpec, WriteResult } from '../../src/fs/atomic-writer.js';
import { createLogger } from '../../src/observability/logger.js';
import { DriverMetrics } from '../../src/observability/metrics.js';
import { AgentConnection } from '../../src/spire/agent-connection.js';
import type { StreamFailure } from '../../src/spire/agent-errors.js';
import { BundleWatcher, type BundleListener, type BundleSource, type TrustBundle } from '../../src/spire/bundle-watcher.js';
import { ManagedVolume, type VolumeWriter } from '../../src/volumes/managed-volume.js';
import type { VolumeRecord } from '../../src/volumes/metadata-store.js';
import { mintCa } from '../support/certs.js';
import { DevAgent } from '../support/dev-agent/dev-agent.js';
import { LogCapture, eventually, sleep } from '../support/driver-harness.js';
import { makeScratchDir, removeScratchDir } from '../support/scratch.js';

/** The node-wide bundles, except the trust domains in `withheld`, which look not yet streamed. */
class WithholdingBundles implements BundleSource {
  readonly withheld = new Set<string>();
  private readonly listeners = new Set<BundleListener>();

  constructor(private readonly inner: BundleWatcher) {}

  get(trustDomainId: string): TrustBundle | undefined {
    return this.withheld.has(trustDomainId) ? undefined : this.inner.get(trustDomainId);
  }

  get lastFailure(): StreamFailure | undefined {
    return this.inner.lastFailure;
  }

  subscribe(listener: BundleListener): () => void {
    this.listeners.add(listener);
    const unsubscribe = this.inner.subscribe((changed) => {
      const visible = new Set([...changed].filter((id) => !this.withheld.has(id)));
      if (visible.size > 0) listener(visible);
    });
    return () => {
      this.listeners.delete(listener);
      unsubscribe();
    };
  }

  /** The bundle "arrives": listeners hear of it as of a change. */
  release(trustDomainId: string): void {
    this.withheld.delete(trustDomainId);
    for (const listener of [...this.listeners]) listener(new Set([trustDomainId]));
  }
}

class RecordingWriter implements VolumeWriter {
  readonly written: FileSpec[][] = [];

  write(files: readonly FileSpec[]): Promise<WriteResult> {
    this.written.push([...files]);
    return Promise.resolve({ changed: true, version: `..v${this.written.length}` });
  }

  namesOf(index: number): string[] {
    return (this.written[index] ?? []).map((file) => file.name).sort();
  }
}

let agent: DevAgent;
let connection: AgentConnection;
let watcher: BundleWatcher;
let scratch: string;
let podNumber = 0;

before(async () => {
  scratch = await makeScratchDir('federation');
  agent = await DevAgent.start({ socketPath: path.join(scratch, 'admin.sock') });
  const logger = createLogger({ level: 'silent' });
  connection = new AgentConnection({ socketPath: agent.socketPath, maxReceiveMessageBytes: 4 * 1024 * 1024, logger });
  watcher = new BundleWatcher({ connection, logger, metrics: new DriverMetrics() });
  agent.setFederatedBundle('spiffe://held.test', [(await mintCa({ trustDomain: 'held.test' })).certDer]);
  agent.setFederatedBundle('spiffe://late.test', [(await mintCa({ trustDomain: 'late.test' })).certDer]);
});

after(async () => {
  watcher.close();
  await connection.close();
  await agent.close();
  await removeScratchDir(scratch);
});

async function startVolume(options: {
  filesPresent: boolean;
}): Promise<{ volume: ManagedVolume; writer: RecordingWriter; bundles: WithholdingBundles; logs: LogCapture }> {
  podNumber += 1;
  const uid = `federation-pod-${podNumber}`;
  await agent.addEntry({
    spiffeId: `spiffe://example.org/federation-${podNumber}`,
    selectors: [`k8s:pod-uid:${uid}`],
    federatesWith: ['spiffe://held.test', 'spiffe://late.test'],
  });
  const record: VolumeRecord = {
    version: 1,
    volumeId: `csi-${String(podNumber).padStart(64, '0')}`,
    targetPath: `/volumes/${uid}`,
    volumeName: 'svid',
    pod: { uid, name: uid, namespace: 'default', serviceAccount: 'app' },
    files: { cert: 'svid.pem', key: 'svid_key.pem', bundle: 'svid_bundle.pem' },
    federatedBundles: 'separate',
    fsGroup: null,
    spiffeId: null,
    hint: null,
    tmpfs: false,
    createdAt: new Date().toISOString(),
  };
  const bundles = new WithholdingBundles(watcher);
  bundles.withheld.add('spiffe://late.test');
  const writer = new RecordingWriter();
  const logs = new LogCapture();
  const logger = createLogger({ level: 'debug', destination: logs });
  const volume = new ManagedVolume(
    record,
    [{ type: 'k8s', value: `pod-uid:${uid}` }],
    { connection, bundles, logger, metrics: new DriverMetrics(), createWriter: () => writer },
    options,
  );
  volume.start();
  return { volume, writer, bundles, logs };
}

describe('a federated bundle listed before it is streamed', () => {
  it('holds back the first files, names the trust domain on timeout, and writes everything once it arrives', async () => {
    const { volume, writer, bundles } = await startVolume({ filesPresent: false });
    try {
      await eventually('the own bundle and the SVID', () => watcher.get('spiffe://example.org') !== undefined);
      await assert.rejects(volume.waitUntilWritten(500, new AbortController().signal), (err: unknown) => {
        assert.ok(err instanceof DriverError);
        assert.equal(err.code, status.DEADLINE_EXCEEDED);
        assert.match(
          err.message,
          /lists spiffe:\/\/late\.test among the trust domains spiffe:\/\/example\.org\/federation-\d+ federates with but has not sent its bundle yet/,
        );
        return true;
      });
      assert.equal(writer.written.length, 0, 'nothing was written without it');
      const published = volume.waitUntilWritten(10_000, new AbortController().signal);
      bundles.release('spiffe://late.test');
      await published;
      assert.deepEqual(writer.namesOf(0), [
        'held.test.federated-bundle.pem',
        'late.test.federated-bundle.pem',
        'svid.pem',
        'svid_bundle.pem',
        'svid_key.pem',
      ]);
    } finally {
      await volume.close();
    }
  });

  it('does not hold back a live volume: its files are written at once, the federated file follows', async () => {
    const { volume, writer, bundles, logs } = await startVolume({ filesPresent: true });
    try {
      await eventually('the first write', () => writer.written.length === 1);
      assert.deepEqual(writer.namesOf(0), ['held.test.federated-bundle.pem', 'svid.pem', 'svid_bundle.pem', 'svid_key.pem']);
      assert.match(logs.text(), /no bundle yet for a federated trust domain; its file follows when it arrives/);
      bundles.release('spiffe://late.test');
      await eventually('the write with the late bundle', () => writer.written.length === 2);
      assert.deepEqual(writer.namesOf(1), [
        'held.test.federated-bundle.pem',
        'late.test.federated-bundle.pem',
        'svid.pem',
        'svid_bundle.pem',
        'svid_key.pem',
      ]);
      await sleep(100);
      assert.equal(writer.written.length, 2, 'one write per change');
    } finally {
      await volume.close();
    }
  });
});
