/**
 * The churn workload of hardening issue #8, shared by the soak script
 * (bench/churn.ts) and the zero-leak test (test/integration/churn-leaks.test.ts):
 * a fixed set of long-lived volumes that stay published (and rotate now and
 * then), while a few workers publish and unpublish short-lived pods' volumes
 * concurrently, the way pods come and go on a node. Each short-lived pod gets
 * its own registration entry (k8s:pod-uid, as spire-controller-manager makes
 * them), which is deleted again after its unpublish; kubelet's pod directory
 * goes too, as when the pod is deleted.
 *
 * The agent side is abstracted (ChurnAgent) so the same workload runs against
 * the development agent and against a real SPIRE server + agent.
 */
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { DevAgent } from './dev-agent/dev-agent.js';
import type { KubeletSimulator, Pod, PublishedVolume } from './kubelet-simulator.js';
import { DEFAULT_NAMES } from './volume-assertions.js';

/** A pod whose registration entry exists; `entryId` goes back to the agent on release. */
export interface PodLease {
  pod: Pod;
  spiffeId: string;
  entryId: string;
}

export interface ChurnAgent {
  /** A fresh pod with its own entry (the agent may still be syncing it: the publish waits for it, as on a node). */
  acquire(kind: 'long-lived' | 'short-lived'): Promise<PodLease>;
  /** The pod is gone: delete its entry (possibly batched). */
  release(lease: PodLease): Promise<void>;
  /** Re-signs one long-lived pod's SVID now, if the agent can be told to (the real one rotates by TTL on its own). */
  rotate?(lease: PodLease): Promise<void>;
  /** A CA rotation: prepare + activate a new CA, re-sign everything, later drop the old one. */
  rotateCa?(): Promise<void>;
  /** Whatever acquire/release left pending (batched deletes): done before figures are taken. */
  flush?(): Promise<void>;
}

export interface ChurnOptions {
  kubelet: KubeletSimulator;
  kubeletRootDir: string;
  agent: ChurnAgent;
  /** Publish/unpublish cycles of short-lived pods. */
  cycles: number;
  /** Number of the first cycle (a run in phases counts on); default 0. */
  firstCycle?: number;
  /** Short-lived pods in flight at once. */
  concurrency: number;
  /** Every this many cycles, one long-lived volume (round robin) is rotated. 0: never. */
  rotateEvery: number;
  /** Every this many cycles, the CA rotates. 0: never. */
  caRotateEvery: number;
  /** Cycles started per second at most (paced evenly from the start of this run); 0 or undefined: as fast as they go. */
  maxCyclesPerSecond?: number;
  /** NodePublishVolume deadline, as kubelet's call timeout. */
  publishTimeoutMs: number;
  /** Stop at the first failed cycle (the test) instead of counting failures (the script). */
  failFast: boolean;
  /** Called after each finished cycle (its number, counted from firstCycle) with its duration. */
  onCycle?: (cycle: number, ms: number) => void | Promise<void>;
}

export interface ChurnFailure {
  cycle: number;
  what: string;
  error: string;
}

export interface ChurnResult {
  cycles: number;
  failures: ChurnFailure[];
  /** Duration of each cycle of this run (publish + check + unpublish + cleanup), in cycle order. */
  cycleMs: number[];
  durationMs: number;
}

/** The long-lived set: published once, kept until `unpublishAll`. */
export class LongLivedVolumes {
  readonly leases: PodLease[] = [];
  readonly volumes: PublishedVolume[] = [];
  private nextToRotate = 0;

  constructor(
    private readonly kubelet: KubeletSimulator,
    private readonly agent: ChurnAgent,
    private readonly kubeletRootDir: string,
  ) {}

  async publishAll(count: number, timeoutMs: number): Promise<void> {
    // One after another: an agent may make entries with one CLI call each.
    const leases: PodLease[] = [];
    for (let i = 0; i < count; i++) leases.push(await this.agent.acquire('long-lived'));
    this.leases.push(...leases);
    this.volumes.push(...(await Promise.all(leases.map((lease) => this.kubelet.publish(lease.pod, { timeoutMs })))));
    await Promise.all(leases.map((lease, i) => expectIdentity(this.volumes[i] as PublishedVolume, lease.spiffeId)));
  }

  async rotateNext(): Promise<void> {
    if (!this.agent.rotate || this.leases.length === 0) return;
    const lease = this.leases[this.nextToRotate++ % this.leases.length] as PodLease;
    await this.agent.rotate(lease);
  }

  async unpublishAll(): Promise<void> {
    for (const [i, volume] of this.volumes.entries()) {
      const lease = this.leases[i] as PodLease;
      await this.kubelet.unpublish(volume);
      await removePodDir(this.kubeletRootDir, lease.pod);
      await this.agent.release(lease);
    }
    this.volumes.length = 0;
    this.leases.length = 0;
  }
}

/**
 * Runs `cycles` publish/unpublish cycles with `concurrency` in flight, rotating
 * the long-lived volumes and the CA on the way. Every background task it
 * starts is awaited before it returns, so nothing of the workload is left
 * running when the caller takes its figures.
 */
export async function runChurn(options: ChurnOptions, longLived: LongLivedVolumes): Promise<ChurnResult> {
  const { kubelet, agent } = options;
  const failures: ChurnFailure[] = [];
  const cycleMs: number[] = new Array<number>(options.cycles).fill(NaN);
  const background: Promise<void>[] = [];
  let next = 0;
  const started = performance.now();

  const fail = (cycle: number, what: string, err: unknown): void => {
    const failure = { cycle, what, error: err instanceof Error ? err.message : String(err) };
    if (options.failFast) throw new Error(`cycle ${cycle}: ${what} failed: ${failure.error}`, { cause: err });
    failures.push(failure);
  };

  const firstCycle = options.firstCycle ?? 0;
  const oneCycle = async (cycle: number): Promise<void> => {
    const t0 = performance.now();
    const lease = await agent.acquire('short-lived');
    // Every fourth pod has an fsGroup, so the chown path churns too.
    const fsGroup = cycle % 4 === 3 ? 2000 + (cycle % 7) : undefined;
    let volume: PublishedVolume | undefined;
    try {
      volume = await kubelet.publish(lease.pod, { timeoutMs: options.publishTimeoutMs, ...(fsGroup === undefined ? {} : { fsGroup }) });
      await expectIdentity(volume, lease.spiffeId);
    } catch (err) {
      fail(cycle, 'publish', err);
    }
    // kubelet unpublishes whatever it may have mounted, also after a failed or uncertain publish.
    try {
      await kubelet.unpublish(volume ?? kubelet.volumeFor(lease.pod));
    } catch (err) {
      fail(cycle, 'unpublish', err);
    }
    await removePodDir(options.kubeletRootDir, lease.pod);
    try {
      await agent.release(lease);
    } catch (err) {
      fail(cycle, 'deleting the entry', err);
    }
    cycleMs[cycle - firstCycle] = performance.now() - t0;
  };

  let stopped = false;
  const worker = async (): Promise<void> => {
    for (;;) {
      const local = next++;
      if (local >= options.cycles || stopped) return;
      const cycle = firstCycle + local;
      if (options.maxCyclesPerSecond) {
        const wait = started + (local * 1000) / options.maxCyclesPerSecond - performance.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      }
      if (options.rotateEvery > 0 && cycle > 0 && cycle % options.rotateEvery === 0) background.push(longLived.rotateNext());
      if (options.caRotateEvery > 0 && cycle > 0 && cycle % options.caRotateEvery === 0 && agent.rotateCa) background.push(agent.rotateCa());
      try {
        await oneCycle(cycle);
      } catch (err) {
        stopped = true;
        throw err;
      }
      await options.onCycle?.(cycle, cycleMs[local] as number);
    }
  };

  // allSettled, not all: with failFast, the first failure must not return
  // while the other workers are still publishing behind the caller's back.
  const workers = await Promise.allSettled(Array.from({ length: options.concurrency }, () => worker()));
  const rotations = await Promise.allSettled(background);
  await agent.flush?.();
  for (const result of workers) if (result.status === 'rejected') throw result.reason;
  for (const result of rotations) if (result.status === 'rejected') fail(-1, 'rotation', result.reason);
  return { cycles: options.cycles, failures, cycleMs, durationMs: performance.now() - started };
}

/** The volume holds an SVID for this pod's SPIFFE ID: a publish that returned OK really delivered. */
export async function expectIdentity(volume: PublishedVolume, spiffeId: string): Promise<void> {
  const pem = await fs.readFile(path.join(volume.targetPath, DEFAULT_NAMES.cert), 'utf8');
  const san = new X509Certificate(pem).subjectAltName;
  if (san !== `URI:${spiffeId}`) throw new Error(`${volume.targetPath} holds an SVID for ${String(san)}, not ${spiffeId}`);
}

/**
 * kubelet removes the pod directory once the pod is gone. Non-recursive, level
 * by level: a directory that is not empty (a leaked mount or file) stays, and
 * shows up in `leftoverPodDirs`.
 */
export async function removePodDir(kubeletRootDir: string, pod: Pod): Promise<void> {
  const podDir = path.join(kubeletRootDir, 'pods', pod.uid);
  for (const dir of [path.join(podDir, 'volumes', 'kubernetes.io~csi'), path.join(podDir, 'volumes'), podDir]) {
    try {
      await fs.rmdir(dir);
    } catch {
      return;
    }
  }
}

/** Pod directories under kubelet's root, other than `keep`'s. */
export async function leftoverPodDirs(kubeletRootDir: string, keep: readonly Pod[]): Promise<string[]> {
  const keepUids = new Set(keep.map((pod) => pod.uid));
  try {
    return (await fs.readdir(path.join(kubeletRootDir, 'pods'))).filter((uid) => !keepUids.has(uid));
  } catch {
    return [];
  }
}

/** Names in a state directory subdirectory (volumes/, tombstones/, quarantine/); none when it does not exist. */
export async function stateFiles(stateDir: string, sub: 'volumes' | 'tombstones' | 'quarantine'): Promise<string[]> {
  try {
    return (await fs.readdir(path.join(stateDir, sub))).sort();
  } catch {
    return [];
  }
}

/** The metadata files of these volumes, as the driver names them. */
export function metadataFileNames(volumes: readonly PublishedVolume[]): string[] {
  return volumes.map((v) => `${v.volumeId}.json`).sort();
}

export function quantile(values: readonly number[], q: number): number {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[index] as number;
}

/**
 * The development agent as a ChurnAgent: one entry per pod, signed at once;
 * rotations on demand; a CA rotation drops the old CA `dropOldCaAfterMs` after
 * every SVID was re-signed, as SPIRE does once the new authority is in use.
 */
export function devAgentChurn(agent: DevAgent, kubelet: KubeletSimulator, options: { dropOldCaAfterMs?: number } = {}): ChurnAgent {
  let serial = 0;
  return {
    async acquire(kind) {
      const pod = kubelet.createPod({ name: `${kind}-${serial++}`, namespace: 'churn' });
      const spiffeId = `spiffe://${agent.trustDomain}/churn/${pod.name}`;
      const entryId = await agent.addEntry({ spiffeId, selectors: [`k8s:pod-uid:${pod.uid}`] });
      return { pod, spiffeId, entryId };
    },
    async release(lease) {
      agent.removeEntry(lease.entryId);
    },
    rotate: (lease) => agent.rotateSvids(lease.entryId),
    async rotateCa() {
      await agent.rotateCa();
      await new Promise((resolve) => setTimeout(resolve, options.dropOldCaAfterMs ?? 1000));
      agent.dropOldCa();
    },
  };
}
