/**
 * `npm run bench:side-by-side`: the driver against the sidecar it replaces,
 * on the same real SPIRE agent, in one run (issue #11). A script, not a test:
 * it prints what it measured on this machine.
 *
 * Per run, each half on a fresh real SPIRE v1.15.3 server + agent (the e2e
 * testbed, `bash e2e/setup`):
 *
 *  (a) N spiffe-helper processes (pinned release, built into the tool cache on
 *      first use) against the agent's Workload API, each writing SVID, key and
 *      bundle into its own directory; once all have written and settled: the
 *      sum of their RSS (and PSS), the median per helper, the agent's RSS and
 *      CPU. Each helper has its own gid, its own entry (unix:gid) and so its
 *      own SVID, as N pods would.
 *  (b) the driver (the real binary, with the image's V8 flags, tmpfs per
 *      volume as root) with no volume, then N NodePublishVolume calls at once
 *      through the kubelet simulator, one k8s:pod-uid entry each: time until
 *      all succeed, peak RSS (VmHWM), settled RSS, the agent's RSS and CPU.
 *  (c) the ratio of (a)'s RSS sum to (b)'s settled RSS.
 *
 * Then the medians and min–max over the runs as a Markdown table.
 *
 * Environment: BENCH_PODS (N, default 500), BENCH_RUNS (default 3),
 * BENCH_SETTLE_MS (quiet time before reading settled figures, default 20000;
 * CPU is read over its second half), BENCH_IDLE_MS (the driver's idle time
 * with no volume, default 10000), SPIFFE_HELPER_BIN (a spiffe-helper binary
 * instead of the pinned build). Quick check:
 * BENCH_PODS=20 BENCH_RUNS=1 BENCH_SETTLE_MS=6000 BENCH_IDLE_MS=3000.
 */
import os from 'node:os';
import path from 'node:path';
import { locateTools, SPIFFE_HELPER_VERSION, spiffeHelperBinary } from '../e2e/testbed/tools.js';
import { runningAsRoot } from '../test/support/driver-harness.js';
import { driverPhase, helperPhase } from './side-by-side/phases.js';
import { printRun, summaryTable, type RunResult } from './side-by-side/report.js';

function intFromEnv(name: string, fallback: number, min: number): number {
  const text = process.env[name];
  const value = text === undefined || text === '' ? fallback : Number(text);
  if (!Number.isSafeInteger(value) || value < min) {
    process.stderr.write(`side-by-side: ${name} must be a whole number >= ${min}, got ${String(text)}\n`);
    process.exit(2);
  }
  return value;
}

const PODS = intFromEnv('BENCH_PODS', 500, 1);
const RUNS = intFromEnv('BENCH_RUNS', 3, 1);
const SETTLE_MS = intFromEnv('BENCH_SETTLE_MS', 20_000, 1000);
const IDLE_MS = intFromEnv('BENCH_IDLE_MS', 10_000, 0);

const print = (line: string): void => void process.stdout.write(`${line}\n`);
const progress = (line: string): void => void process.stderr.write(`side-by-side: ${line}\n`);

if (!runningAsRoot()) {
  // The driver mounts a tmpfs per volume (as on a node) and the helpers run with their own gids.
  process.stderr.write('side-by-side: must run as root (per-volume tmpfs for the driver, a gid per spiffe-helper)\n');
  process.exit(1);
}

const tools = locateTools();
const helperBinary = await spiffeHelperBinary(progress);
const spireVersion = path.basename(path.dirname(path.dirname(tools.spireAgent)));

print(`spire-csi-driver side by side with spiffe-helper: ${PODS} pods, ${RUNS} run${RUNS === 1 ? '' : 's'}`);
print(`  ${os.cpus().length} CPUs, ${(os.totalmem() / 1024 ** 3).toFixed(0)} GiB, load ${os.loadavg()[0]?.toFixed(2)}; node ${process.version}`);
print(`  agent: ${spireVersion} (${tools.spireAgent}); spiffe-helper ${SPIFFE_HELPER_VERSION} (${helperBinary})`);
print(`  settle ${SETTLE_MS / 1000} s (CPU over its second half), driver idle ${IDLE_MS / 1000} s`);
print('  the helpers run as the same uid, each with its own gid, entry (unix:gid) and so its own SVID;');
print('  RSS sums count the pages of the spiffe-helper binary once per helper; PSS sums count them once in all');

const runs: RunResult[] = [];
for (let run = 0; run < RUNS; run++) {
  progress(`run ${run + 1} of ${RUNS}`);
  const helpers = await helperPhase(helperBinary, { count: PODS, settleMs: SETTLE_MS, progress });
  const driver = await driverPhase({ count: PODS, settleMs: SETTLE_MS, idleMs: IDLE_MS, progress });
  runs.push({ helpers, driver });
  printRun(run, PODS, { helpers, driver }, print);
  // The machine may be shared: the load says how much else was running.
  print(
    `  load average after the run: ${os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(', ')}`,
  );
}

print('');
for (const line of summaryTable(PODS, runs)) print(line);
