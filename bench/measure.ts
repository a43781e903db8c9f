/**
 * What the benchmark scripts read about a process and how they summarise runs:
 * /proc/<pid>/status and /proc/<pid>/stat figures, quantiles and
 * "median (min, max, n)" lines. Shared by bench/bench.ts and
 * bench/side-by-side.ts.
 */
import fs from 'node:fs/promises';

/** Clock ticks per second of /proc/<pid>/stat's utime and stime (USER_HZ, 100 on Linux). */
export const CLOCK_TICKS_PER_SECOND = 100;

/** The q-quantile of values already sorted ascending (nearest rank). */
export function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[index] as number;
}

export function summary(values: number[], unit: string, digits = 1): string {
  const sorted = [...values].sort((a, b) => a - b);
  const median = quantile(sorted, 0.5);
  return `median ${median.toFixed(digits)} ${unit} (min ${sorted[0]?.toFixed(digits)}, max ${sorted.at(-1)?.toFixed(digits)}, n=${values.length})`;
}

export interface ProcStat {
  /** VmRSS: resident now. */
  rssBytes: number;
  /** RssAnon: the part of VmRSS that is the process's own (heap, stacks), not pages of files it maps, such as its binary. */
  anonRssBytes: number;
  /** VmHWM: the largest RSS since the process started. */
  peakRssBytes: number;
  /** utime + stime, in clock ticks. */
  cpuTicks: number;
}

export async function procStat(pid: number): Promise<ProcStat> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string): number => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? NaN) * 1024;
  const stat = (await fs.readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]?.split(' ') ?? [];
  // Fields 14 and 15 (utime, stime) of /proc/pid/stat, counted after "pid (comm) ".
  const cpuTicks = Number(stat[11]) + Number(stat[12]);
  return { rssBytes: kib('VmRSS'), anonRssBytes: kib('RssAnon'), peakRssBytes: kib('VmHWM'), cpuTicks };
}

/**
 * Proportional set size (/proc/<pid>/smaps_rollup Pss): RSS with every page
 * shared by k processes counted 1/k in each, so that the sum over many
 * processes of one binary counts its shared text once.
 */
export async function pssBytes(pid: number): Promise<number> {
  const rollup = await fs.readFile(`/proc/${pid}/smaps_rollup`, 'utf8');
  return Number(/^Pss:\s+(\d+)/m.exec(rollup)?.[1] ?? NaN) * 1024;
}
