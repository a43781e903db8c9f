/**
 * What the driver records, as its modules see it: the Prometheus metrics of
 * metrics.ts when --metrics-address is set, otherwise `disabledMetrics()`,
 * which records nothing. Without a metrics address prom-client is never
 * loaded: ~1 MiB of JavaScript heap that nobody would scrape (the chart's
 * default is metrics.enabled: false).
 */

/** A counter with labels (prom-client's Counter<L>.inc(labels)). */
export interface LabelledCounter<L extends string> {
  inc(labels: Partial<Record<L, string | number>>): void;
}

export interface PlainCounter {
  inc(): void;
}

/** prom-client's Histogram.startTimer: the returned function observes the seconds since. */
export interface DurationHistogram {
  startTimer(): () => number;
}

export interface Metrics {
  readonly publishTotal: LabelledCounter<'result'>;
  readonly unpublishTotal: LabelledCounter<'result'>;
  readonly publishDuration: DurationHistogram;
  readonly svidUpdates: LabelledCounter<'outcome'>;
  readonly bundleRejected: PlainCounter;
  readonly agentStreamErrors: LabelledCounter<'stream' | 'code'>;
  readonly volumeWriteFailures: LabelledCounter<'reason'>;
  /** Counts `volume` in spire_csi_volumes_write_failing while `failing`; a volume must clear itself when it closes. */
  setWriteFailing(volume: object, failing: boolean): void;
  /** Read at scrape time, so the gauge can never drift from the truth. */
  countVolumesWith(count: () => number): void;
  /** Read at scrape time, like countVolumesWith. */
  watchVolumeHealthWith(summary: () => { earliestExpiryMs: number | undefined; abnormal: number }): void;
}

/** Metrics that record nothing, for a driver without --metrics-address. */
export function disabledMetrics(): Metrics {
  const counter = { inc: (): void => undefined };
  return {
    publishTotal: counter,
    unpublishTotal: counter,
    publishDuration: { startTimer: () => () => 0 },
    svidUpdates: counter,
    bundleRejected: counter,
    agentStreamErrors: counter,
    volumeWriteFailures: counter,
    setWriteFailing: () => undefined,
    countVolumesWith: () => undefined,
    watchVolumeHealthWith: () => undefined,
  };
}
