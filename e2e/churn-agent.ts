/**
 * The churn workload's agent side (test/support/churn-workload.ts, ChurnAgent)
 * on a real SPIRE server + agent from the e2e testbed: shared by the soak
 * script (bench/churn.ts --real-agent) and the e2e zero-leak test
 * (e2e/churn.test.ts).
 *
 * Entries are made ahead, a batch per spire-server call, so that a pod's entry
 * has usually reached the agent (1 s sync interval in the e2e config) by the
 * time its volume is published; deleted entries are batched the same way.
 * Long-lived pods get one entry each, with a short TTL so the agent itself
 * rotates them during the churn (it cannot be told to re-sign one now, so
 * there is no `rotate`, nor `rotateCa`).
 */
import { randomUUID } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { ChurnAgent, PodLease } from '../test/support/churn-workload.js';
import type { KubeletSimulator } from '../test/support/kubelet-simulator.js';
import { TRUST_DOMAIN, type SpireTestbed } from './spire-testbed.js';

export interface RealAgentChurnOptions {
  /** X.509-SVID TTL of the long-lived pods' entries: the agent re-signs them at about half of it. Default 60. */
  longLivedTtlSeconds?: number;
  /** Short-lived entries are created and deleted this many per spire-server call. Default 50. */
  entryBatch?: number;
  /** Namespace (and SPIFFE ID path segment) of the pods. Default "churn". */
  namespace?: string;
}

/** A ChurnAgent whose pods' entries live on the testbed's SPIRE server (k8s:pod-uid selectors, as spire-controller-manager writes them). */
export function realAgentChurn(testbed: SpireTestbed, kubelet: KubeletSimulator, options: RealAgentChurnOptions = {}): ChurnAgent {
  const longLivedTtlSeconds = options.longLivedTtlSeconds ?? 60;
  const entryBatch = options.entryBatch ?? 50;
  const namespace = options.namespace ?? 'churn';
  let serial = 0;
  const ready: PodLease[] = [];
  let refilling: Promise<void> | undefined;
  let toDelete: string[] = [];
  let deleting: Promise<void> = Promise.resolve();

  const makeLeases = async (count: number, ttlSeconds?: number): Promise<PodLease[]> => {
    const pods = Array.from({ length: count }, () => kubelet.createPod({ name: `churn-${serial++}`, namespace, uid: randomUUID() }));
    const ids = pods.map((pod) => `spiffe://${TRUST_DOMAIN}/${namespace}/${pod.name}`);
    const entryIds = await testbed.createEntries(
      pods.map((pod, i) => ({
        spiffeId: ids[i] as string,
        selectors: [`k8s:pod-uid:${pod.uid}`],
        ...(ttlSeconds ? { x509SvidTtlSeconds: ttlSeconds } : {}),
      })),
    );
    return pods.map((pod, i) => ({ pod, spiffeId: ids[i] as string, entryId: entryIds[i] as string }));
  };
  const refill = (): Promise<void> => {
    refilling ??= makeLeases(entryBatch)
      .then((leases) => {
        ready.push(...leases);
      })
      .finally(() => {
        refilling = undefined;
      });
    return refilling;
  };
  const deleteBatch = (ids: string[]): Promise<void> => {
    const file = path.join(testbed.dir, `delete-${randomUUID()}.json`);
    deleting = deleting.then(async () => {
      await fsp.writeFile(file, JSON.stringify({ ids }));
      try {
        await testbed.serverCli(['entry', 'delete', '-file', file, '-output', 'json']);
      } finally {
        await fsp.rm(file, { force: true });
      }
    });
    return deleting;
  };

  return {
    async acquire(kind) {
      if (kind === 'long-lived') return (await makeLeases(1, longLivedTtlSeconds))[0] as PodLease;
      while (ready.length === 0) await refill();
      const lease = ready.shift() as PodLease;
      // Keep a batch ahead, so that entries have reached the agent before their pods publish.
      if (ready.length < entryBatch) void refill().catch(() => undefined);
      return lease;
    },
    async release(lease) {
      toDelete.push(lease.entryId);
      if (toDelete.length >= entryBatch) {
        const batch = toDelete;
        toDelete = [];
        await deleteBatch(batch);
      }
    },
    async flush() {
      await refilling?.catch(() => undefined);
      const unused = ready.splice(0).map((lease) => lease.entryId);
      const batch = [...toDelete, ...unused];
      toDelete = [];
      if (batch.length > 0) await deleteBatch(batch);
      await deleting;
    },
  };
}

/**
 * SubscribeToX509SVIDs requests the real agent has received so far: the lines
 * "Subscribing to cache changes" it logs at level DEBUG (the e2e config's),
 * one per request. The real agent shows no open-stream count (its telemetry
 * counts RPCs when they end, and is off in the e2e config), so one request per
 * NodePublishVolume is what says no stream had to be re-opened.
 */
export async function agentSubscriptions(testbed: SpireTestbed): Promise<number> {
  const log = await fsp.readFile(path.join(testbed.dir, 'agent.log'), 'utf8').catch(() => '');
  return log.split('Subscribing to cache changes').length - 1;
}
