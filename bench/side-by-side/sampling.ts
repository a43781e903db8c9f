/** Memory and CPU figures of one process or a fleet of them, from /proc (bench/measure.ts). */
import { CLOCK_TICKS_PER_SECOND, procStat, pssBytes, quantile, type ProcStat } from '../measure.js';

export const MiB = 1024 * 1024;

/** CPU used between two readings of one process, in % of one core. */
export function cpuPercent(before: ProcStat, after: ProcStat, elapsedMs: number): number {
  return ((after.cpuTicks - before.cpuTicks) / CLOCK_TICKS_PER_SECOND / (elapsedMs / 1000)) * 100;
}

/** CPU time used between two readings of one process, in seconds. */
export function cpuSeconds(before: ProcStat, after: ProcStat): number {
  return (after.cpuTicks - before.cpuTicks) / CLOCK_TICKS_PER_SECOND;
}

export interface FleetMemory {
  rssSumBytes: number;
  medianRssBytes: number;
  anonRssSumBytes: number;
  medianAnonRssBytes: number;
  pssSumBytes: number;
  cpuTicks: number;
}

/** RSS and its anonymous part (sums and medians), the PSS sum and the CPU ticks of all the processes. */
export async function fleetMemory(pids: number[]): Promise<FleetMemory> {
  const stats = await Promise.all(pids.map((pid) => procStat(pid)));
  const pss = await Promise.all(pids.map((pid) => pssBytes(pid)));
  const rss = stats.map((s) => s.rssBytes).sort((a, b) => a - b);
  const anon = stats.map((s) => s.anonRssBytes).sort((a, b) => a - b);
  const sum = (values: number[]): number => values.reduce((a, b) => a + b, 0);
  return {
    rssSumBytes: sum(rss),
    medianRssBytes: quantile(rss, 0.5),
    anonRssSumBytes: sum(anon),
    medianAnonRssBytes: quantile(anon, 0.5),
    pssSumBytes: sum(pss),
    cpuTicks: sum(stats.map((s) => s.cpuTicks)),
  };
}
