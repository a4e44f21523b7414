/**
 * The soak's verdict on each sampled series: after a warm-up (the retention window filling up),
 * the samples are split in thirds and the mean of the last third is compared with the first
 * third's. A series is flat when it grew by at most `relative` of the first mean or by its unit's
 * floor, whichever is larger (small series, a queue holding 0 to 2 messages say, move by more than
 * a fraction of themselves without growing; ratios have none). The slope against jobs done, per 1000 jobs, is given
 * too: a leak grows with jobs, noise does not.
 */

export interface Sample {
  /** Seconds since the soak started. */
  t: number;
  /** Jobs ended (succeeded, failed or cancelled) so far. */
  jobsEnded: number;
  values: Record<string, number>;
}

export interface Verdict {
  series: string;
  samples: number;
  firstMean: number;
  lastMean: number;
  /** lastMean - firstMean. */
  growth: number;
  /** The growth allowed: max(relative * firstMean, floor). */
  allowed: number;
  /** Least-squares slope of the series against jobs ended, times 1000. */
  per1000Jobs: number;
  flat: boolean;
}

export const RELATIVE_GROWTH_ALLOWED = 0.25;

/** The floor of a series by its kind (the name's first part): MiB of memory, MiB of data, counts. */
export function floorOf(series: string): number {
  const kind = series.split(".")[0]!;
  if (kind === "rss_mib") return 16;
  // Ratios (per kept job) are judged on their relative change alone.
  if (kind === "per_kept_job") return 0;
  if (kind.endsWith("_mib")) return 1;
  return 25;
}

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

function slope(xs: number[], ys: number[]): number {
  const mx = mean(xs);
  const my = mean(ys);
  let num = 0;
  let den = 0;
  for (let i = 0; i < xs.length; i++) {
    num += (xs[i]! - mx) * (ys[i]! - my);
    den += (xs[i]! - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

/** One verdict per series seen after the warm-up (samples where a series is absent are skipped). */
export function judge(samples: readonly Sample[], warmupS: number, relative = RELATIVE_GROWTH_ALLOWED): Verdict[] {
  const judged = samples.filter((s) => s.t >= warmupS);
  const names = [...new Set(judged.flatMap((s) => Object.keys(s.values)))].sort();
  const out: Verdict[] = [];
  for (const series of names) {
    const points = judged.filter((s) => s.values[series] !== undefined);
    if (points.length < 3) continue;
    const third = Math.floor(points.length / 3);
    const firstMean = mean(points.slice(0, third).map((s) => s.values[series]!));
    const lastMean = mean(points.slice(points.length - third).map((s) => s.values[series]!));
    const growth = lastMean - firstMean;
    const allowed = Math.max(relative * Math.abs(firstMean), floorOf(series));
    out.push({
      series,
      samples: points.length,
      firstMean,
      lastMean,
      growth,
      allowed,
      per1000Jobs:
        1000 *
        slope(
          points.map((s) => s.jobsEnded),
          points.map((s) => s.values[series]!),
        ),
      flat: growth <= allowed,
    });
  }
  return out;
}
