/** Run counts and seeds of the property-based tests: FUZZ_RUNS overrides every count, FUZZ_SEED replays a run. */
import type fc from 'fast-check';

/** `n`, unless FUZZ_RUNS asks for another number of runs. */
export function runs(n: number): number {
  const override = process.env['FUZZ_RUNS'];
  return override ? Number(override) : n;
}

/** fast-check parameters for `numRuns` runs, with FUZZ_SEED's seed when set. */
export function fcParameters<T>(numRuns: number): fc.Parameters<T> {
  const seed = process.env['FUZZ_SEED'];
  return { numRuns: runs(numRuns), ...(seed ? { seed: Number(seed) } : {}) };
}
