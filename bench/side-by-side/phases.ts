/**
 * The two halves of one side-by-side run, each on a fresh real SPIRE server +
 * agent (e2e/spire-testbed.ts), so that neither inherits the other's agent
 * memory: N spiffe-helper sidecars, then the driver with N volumes. Both
 * phases register N entries first and wait until the agent has signed their
 * SVIDs, then start the N workloads at once, wait until every one has its
 * files, let everything settle and read memory and CPU.
 */
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { DriverUnderTest } from '../../e2e/e2e-driver.js';
import { SpireTestbed, TRUST_DOMAIN, sleep, type EntrySpec } from '../../e2e/spire-testbed.js';
import type { Pod } from '../../test/support/kubelet-simulator.js';
import { CLOCK_TICKS_PER_SECOND, procStat } from '../measure.js';
import { waitForSignedSvids } from './agent-log.js';
import { HelperFleet } from './helper-fleet.js';
import { cpuPercent, cpuSeconds, fleetMemory } from './sampling.js';

export interface PhaseOptions {
  count: number;
  /** Quiet time after the workloads have their files; CPU is read over its second half. */
  settleMs: number;
  progress: (line: string) => void;
}

export interface HelperPhaseResult {
  /** From starting the helpers until every one has written its three files. */
  allWrittenMs: number;
  rssSumBytes: number;
  medianRssBytes: number;
  anonRssSumBytes: number;
  medianAnonRssBytes: number;
  /** PSS sum: pages the helpers share (the spiffe-helper binary) counted once in all. */
  pssSumBytes: number;
  /** All helpers together, over the second half of the settle window. */
  helpersCpuPercent: number;
  /** The agent with the N entries' SVIDs signed, before any helper starts. */
  agentBaselineRssBytes: number;
  agentRssBytes: number;
  agentCpuPercent: number;
  /** The agent's CPU time from starting the helpers until all have written. */
  agentStartupCpuSeconds: number;
}

export interface DriverPhaseResult {
  /** The driver started, no volume, after the idle window. */
  idleRssBytes: number;
  /** From sending the N NodePublishVolume calls at once until all have succeeded; NaN if any failed. */
  allPublishedMs: number;
  failedPublishes: number;
  firstFailure: string | undefined;
  /** VmHWM after the burst: the driver's largest RSS so far. */
  peakRssBytes: number;
  rssBytes: number;
  anonRssBytes: number;
  driverCpuPercent: number;
  agentBaselineRssBytes: number;
  agentRssBytes: number;
  agentCpuPercent: number;
  /** The agent's CPU time from sending the publishes until all succeeded. */
  agentBurstCpuSeconds: number;
}

/** Entries are registered this many per `spire-server entry create -data` call. */
const ENTRY_BATCH = 100;
/** Helper gids start here (far from system groups; only the attestor looks at them). */
const FIRST_HELPER_GID = 40_000;

async function createEntriesInBatches(testbed: SpireTestbed, specs: EntrySpec[]): Promise<void> {
  for (let i = 0; i < specs.length; i += ENTRY_BATCH) await testbed.createEntries(specs.slice(i, i + ENTRY_BATCH));
}

function agentPid(testbed: SpireTestbed): number {
  const pid = testbed.agent?.child.pid;
  if (pid === undefined || !testbed.agent?.running) throw new Error(`the SPIRE agent is not running\n${testbed.diagnostics(10)}`);
  return pid;
}

/** Settles, then reads `read()` at the start and end of the settle window's second half. */
async function settle<T>(settleMs: number, read: () => Promise<T>): Promise<{ before: T; after: T; windowMs: number }> {
  const half = settleMs / 2;
  await sleep(half);
  const before = await read();
  const started = performance.now();
  await sleep(half);
  const after = await read();
  return { before, after, windowMs: performance.now() - started };
}

export async function helperPhase(helperBinary: string, options: PhaseOptions): Promise<HelperPhaseResult> {
  const { count, progress } = options;
  // No entry for the benchmark's uid: each helper must match its own gid entry only.
  const testbed = await SpireTestbed.start({ label: 'sbs-helpers', delegate: 'no-entry' });
  let fleet: HelperFleet | undefined;
  try {
    const idPrefix = `spiffe://${TRUST_DOMAIN}/helper/`;
    progress(`helpers: registering ${count} entries (unix:gid:${FIRST_HELPER_GID}+i) and waiting for the agent to sign them…`);
    await createEntriesInBatches(
      testbed,
      Array.from({ length: count }, (_, i) => ({ spiffeId: `${idPrefix}${i}`, selectors: HelperFleet.selectorsOf(i, FIRST_HELPER_GID) })),
    );
    await waitForSignedSvids(testbed, idPrefix, count);
    const pid = agentPid(testbed);
    const agentBaseline = await procStat(pid);

    progress(`helpers: starting ${count} spiffe-helper processes…`);
    const started = performance.now();
    fleet = await HelperFleet.start({
      binary: helperBinary,
      count,
      dir: path.join(testbed.dir, 'helpers'),
      workloadSocketPath: testbed.workloadSocketPath,
      firstGid: FIRST_HELPER_GID,
    });
    const running = fleet;
    let written = 0;
    const deadline = Date.now() + 120_000 + count * 200;
    while ((written = await running.written()) < count) {
      running.assertAllRunning();
      if (Date.now() > deadline) throw new Error(`only ${written} of ${count} helpers wrote their files in time\n${testbed.diagnostics(10)}`);
      await sleep(100);
    }
    const allWrittenMs = performance.now() - started;
    const agentWritten = await procStat(pid);
    await running.assertIdentities((i) => `${idPrefix}${i}`);
    progress(`helpers: all ${count} wrote their files in ${(allWrittenMs / 1000).toFixed(1)} s; settling ${options.settleMs / 1000} s…`);

    const window = await settle(options.settleMs, async () => ({ agent: await procStat(pid), fleet: await fleetMemory(running.pids) }));
    running.assertAllRunning();
    return {
      allWrittenMs,
      rssSumBytes: window.after.fleet.rssSumBytes,
      medianRssBytes: window.after.fleet.medianRssBytes,
      anonRssSumBytes: window.after.fleet.anonRssSumBytes,
      medianAnonRssBytes: window.after.fleet.medianAnonRssBytes,
      pssSumBytes: window.after.fleet.pssSumBytes,
      helpersCpuPercent: ((window.after.fleet.cpuTicks - window.before.fleet.cpuTicks) / CLOCK_TICKS_PER_SECOND / (window.windowMs / 1000)) * 100,
      agentBaselineRssBytes: agentBaseline.rssBytes,
      agentRssBytes: window.after.agent.rssBytes,
      agentCpuPercent: cpuPercent(window.before.agent, window.after.agent, window.windowMs),
      agentStartupCpuSeconds: cpuSeconds(agentBaseline, agentWritten),
    };
  } finally {
    await fleet?.stop();
    await testbed.close();
  }
}

export async function driverPhase(options: PhaseOptions & { idleMs: number }): Promise<DriverPhaseResult> {
  const { count, progress } = options;
  const testbed = await SpireTestbed.start({ label: 'sbs-driver' });
  let driver: DriverUnderTest | undefined;
  try {
    driver = await DriverUnderTest.start({
      dir: path.join(testbed.dir, 'driver'),
      adminSocketPath: testbed.adminSocketPath,
      publishTimeoutMs: 60_000,
      logLevel: 'info',
    });
    const driverPid = driver.child?.process.pid;
    if (driverPid === undefined) throw new Error('the driver process has no pid');
    const { kubelet } = driver;

    const idPrefix = `spiffe://${TRUST_DOMAIN}/pod/`;
    const pods: Pod[] = Array.from({ length: count }, (_, i) => kubelet.createPod({ name: `pod-${i}`, uid: randomUUID() }));
    progress(`driver: registering ${count} entries (k8s:pod-uid) and waiting for the agent to sign them; driver idle meanwhile…`);
    const idleUntil = performance.now() + options.idleMs;
    await createEntriesInBatches(
      testbed,
      pods.map((pod) => ({ spiffeId: `${idPrefix}${pod.name}`, selectors: [`k8s:pod-uid:${pod.uid}`] })),
    );
    await waitForSignedSvids(testbed, idPrefix, count);
    await sleep(Math.max(0, idleUntil - performance.now()));
    const idle = await procStat(driverPid);
    const pid = agentPid(testbed);
    const agentBaseline = await procStat(pid);

    progress(`driver: ${count} NodePublishVolume calls at once…`);
    const started = performance.now();
    const outcomes = await Promise.allSettled(pods.map((pod) => kubelet.publish(pod)));
    const allPublishedMs = performance.now() - started;
    const agentPublished = await procStat(pid);
    const failures = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
    const peak = await procStat(driverPid);
    progress(
      `driver: ${count - failures.length} of ${count} published in ${(allPublishedMs / 1000).toFixed(2)} s; settling ${options.settleMs / 1000} s…`,
    );

    const window = await settle(options.settleMs, async () => ({ agent: await procStat(pid), driver: await procStat(driverPid) }));
    return {
      idleRssBytes: idle.rssBytes,
      allPublishedMs: failures.length === 0 ? allPublishedMs : NaN,
      failedPublishes: failures.length,
      firstFailure: failures[0] === undefined ? undefined : String((failures[0].reason as Error).message ?? failures[0].reason),
      peakRssBytes: peak.peakRssBytes,
      rssBytes: window.after.driver.rssBytes,
      anonRssBytes: window.after.driver.anonRssBytes,
      driverCpuPercent: cpuPercent(window.before.driver, window.after.driver, window.windowMs),
      agentBaselineRssBytes: agentBaseline.rssBytes,
      agentRssBytes: window.after.agent.rssBytes,
      agentCpuPercent: cpuPercent(window.before.agent, window.after.agent, window.windowMs),
      agentBurstCpuSeconds: cpuSeconds(agentBaseline, agentPublished),
    };
  } finally {
    await driver?.close();
    await testbed.close();
  }
}
