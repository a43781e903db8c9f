/**
 * How bench/side-by-side.ts prints: one block per run, then every figure's
 * median and min–max over the runs as a Markdown table ready for the README.
 */
import { quantile } from '../measure.js';
import type { DriverPhaseResult, HelperPhaseResult } from './phases.js';
import { MiB } from './sampling.js';

export interface RunResult {
  helpers: HelperPhaseResult;
  driver: DriverPhaseResult;
}

/** N spiffe-helpers' RSS sum over the driver's settled RSS. */
export function rssRatio(run: RunResult): number {
  return run.helpers.rssSumBytes / run.driver.rssBytes;
}

/**
 * The helpers' PSS sum (their shared binary pages counted once) over the
 * driver's full RSS: the conservative ratio, of the physical memory the
 * helpers take to all the driver holds.
 */
export function pssRatio(run: RunResult): number {
  return run.helpers.pssSumBytes / run.driver.rssBytes;
}

const mib = (bytes: number): string => `${(bytes / MiB).toFixed(1)} MiB`;
const gib = (bytes: number): string => `${(bytes / 1024 / MiB).toFixed(2)} GiB`;
const seconds = (ms: number): string => (Number.isFinite(ms) ? `${(ms / 1000).toFixed(2)} s` : 'n/a');
const percent = (value: number): string => `${value.toFixed(1)} %`;
const times = (value: number): string => `${value.toFixed(0)}×`;

export function printRun(index: number, count: number, run: RunResult, print: (line: string) => void): void {
  const { helpers: h, driver: d } = run;
  print(`run ${index + 1}:`);
  print(`  (a) ${count} spiffe-helper sidecars`);
  print(`      all wrote their files in ${seconds(h.allWrittenMs)}; agent CPU for that: ${h.agentStartupCpuSeconds.toFixed(2)} s`);
  print(
    `      settled: RSS sum ${gib(h.rssSumBytes)}, median per helper ${mib(h.medianRssBytes)}; helpers' CPU ${percent(h.helpersCpuPercent)} of a core`,
  );
  print(
    `               anonymous RSS sum ${gib(h.anonRssSumBytes)}, median per helper ${mib(h.medianAnonRssBytes)}; PSS sum ${gib(h.pssSumBytes)} (shared binary pages counted once)`,
  );
  print(`      agent: RSS ${mib(h.agentRssBytes)} (${mib(h.agentBaselineRssBytes)} before the helpers), CPU ${percent(h.agentCpuPercent)} of a core`);
  print(`  (b) the driver with ${count} volumes`);
  print(`      idle, no volume: RSS ${mib(d.idleRssBytes)}`);
  if (d.failedPublishes > 0) print(`      ${d.failedPublishes} of ${count} publishes FAILED; the first: ${d.firstFailure ?? '?'}`);
  else
    print(
      `      ${count} publishes at once: all succeeded in ${seconds(d.allPublishedMs)}; agent CPU for that: ${d.agentBurstCpuSeconds.toFixed(2)} s`,
    );
  print(
    `      peak RSS (VmHWM) ${mib(d.peakRssBytes)}; settled: RSS ${mib(d.rssBytes)} (anonymous ${mib(d.anonRssBytes)}), CPU ${percent(d.driverCpuPercent)} of a core`,
  );
  print(
    `      agent: RSS ${mib(d.agentRssBytes)} (${mib(d.agentBaselineRssBytes)} before the publishes), CPU ${percent(d.agentCpuPercent)} of a core`,
  );
  print(`  (c) helpers' RSS sum / driver RSS: ${times(rssRatio(run))}; helpers' PSS sum / driver RSS: ${times(pssRatio(run))}`);
}

/** "median (min–max) unit" of the finite values, each scaled by `scale` and shown with `digits`; "n/a" if there are none. */
function spread(values: number[], unit: string, scale = 1, digits = 1): string {
  const sorted = values
    .filter((v) => Number.isFinite(v))
    .map((v) => v / scale)
    .sort((a, b) => a - b);
  if (sorted.length === 0) return 'n/a';
  const show = (v: number): string => v.toFixed(digits);
  const median = show(quantile(sorted, 0.5));
  const range = sorted.length === 1 ? '' : ` (${show(sorted[0] as number)}–${show(sorted.at(-1) as number)})`;
  return `${median}${range}${unit === '×' ? '' : ' '}${unit}`;
}

const inMiB = (values: number[]): string => spread(values, 'MiB', MiB);
const inGiB = (values: number[]): string => spread(values, 'GiB', 1024 * MiB, 2);
const inSeconds = (values: number[]): string => spread(values, 's', 1000, 2);
const inPercent = (values: number[]): string => spread(values, '%');
const inTimes = (values: number[]): string => spread(values, '×', 1, 0);

/** The Markdown table: medians with min–max over the runs, helpers and driver side by side, and the targets. */
export function summaryTable(count: number, runs: RunResult[]): string[] {
  const of = <T>(pick: (r: RunResult) => T): T[] => runs.map(pick);
  const failed = runs.reduce((n, r) => n + r.driver.failedPublishes, 0);
  const rows: [string, string, string, string][] = [
    [
      'RSS, settled',
      `${inGiB(of((r) => r.helpers.rssSumBytes))} in all; ${inMiB(of((r) => r.helpers.medianRssBytes))} each`,
      inMiB(of((r) => r.driver.rssBytes)),
      'driver ≤ 60 MiB',
    ],
    [
      'of which anonymous (heap, stacks)',
      `${inGiB(of((r) => r.helpers.anonRssSumBytes))} in all; ${inMiB(of((r) => r.helpers.medianAnonRssBytes))} each`,
      inMiB(of((r) => r.driver.anonRssBytes)),
      '',
    ],
    ['PSS sum (shared binary pages counted once)', inGiB(of((r) => r.helpers.pssSumBytes)), '', ''],
    [`helpers' RSS sum / driver RSS`, '', inTimes(of(rssRatio)), '≥ 140×'],
    [`helpers' PSS sum / driver RSS`, '', inTimes(of(pssRatio)), ''],
    ['peak RSS during the publishes (VmHWM)', '', inMiB(of((r) => r.driver.peakRssBytes)), ''],
    ['driver with no volume: RSS', '', inMiB(of((r) => r.driver.idleRssBytes)), ''],
    [
      `time until all ${count} have their files`,
      inSeconds(of((r) => r.helpers.allWrittenMs)),
      `${inSeconds(of((r) => r.driver.allPublishedMs))}${failed > 0 ? ` (${failed} publishes failed)` : ''}`,
      `${count} publishes at once ≤ 3 s`,
    ],
    ['CPU, settled (% of a core)', inPercent(of((r) => r.helpers.helpersCpuPercent)), inPercent(of((r) => r.driver.driverCpuPercent)), ''],
    ['agent RSS, settled', inMiB(of((r) => r.helpers.agentRssBytes)), inMiB(of((r) => r.driver.agentRssBytes)), ''],
    ['agent RSS before the N start', inMiB(of((r) => r.helpers.agentBaselineRssBytes)), inMiB(of((r) => r.driver.agentBaselineRssBytes)), ''],
    ['agent CPU, settled (% of a core)', inPercent(of((r) => r.helpers.agentCpuPercent)), inPercent(of((r) => r.driver.agentCpuPercent)), ''],
    [
      'agent CPU time while the N start',
      inSeconds(of((r) => r.helpers.agentStartupCpuSeconds * 1000)),
      inSeconds(of((r) => r.driver.agentBurstCpuSeconds * 1000)),
      '',
    ],
  ];
  return [
    `| ${count} pods, median (min–max) of ${runs.length} run${runs.length === 1 ? '' : 's'} | ${count} × spiffe-helper | driver, ${count} volumes | target |`,
    '|---|---|---|---|',
    ...rows.map((cells) => `| ${cells.join(' | ')} |`),
  ];
}
