/** The soak's outputs in text: the samples as CSV and the results as Markdown (RESULTS.md). */
import type { Sample, Verdict } from "./flatness.js";

export interface SampleRow extends Sample {
  /** 1-minute load average of the machine (other work on it shows here). */
  load1: number;
}

/** One row per sample: t, jobs ended, load, then every series (empty where not sampled). */
export function samplesCsv(samples: readonly SampleRow[]): string {
  const names = [...new Set(samples.flatMap((s) => Object.keys(s.values)))].sort();
  const lines = [["t_s", "jobs_ended", "load1", ...names].join(",")];
  for (const s of samples)
    lines.push(
      [s.t.toFixed(1), s.jobsEnded, s.load1.toFixed(2), ...names.map((n) => s.values[n]?.toFixed(3) ?? "")].join(","),
    );
  return `${lines.join("\n")}\n`;
}

const fmt = (x: number): string => (Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 1 ? x.toFixed(1) : x.toFixed(3));

/** The flatness table, one row per series. */
export function verdictTable(verdicts: readonly Verdict[], judged = true): string {
  const verdict = (v: Verdict): string => (!judged ? "not judged" : v.flat ? "flat" : "**GROWS**");
  const rows = verdicts.map(
    (v) =>
      `| ${v.series} | ${v.samples} | ${fmt(v.firstMean)} | ${fmt(v.lastMean)} | ${v.growth >= 0 ? "+" : ""}${fmt(v.growth)} | ${fmt(v.allowed)} | ${v.per1000Jobs >= 0 ? "+" : ""}${fmt(v.per1000Jobs)} | ${verdict(v)} |`,
  );
  return [
    "| series | samples | first third mean | last third mean | growth | allowed | slope per 1000 jobs | verdict |",
    "|---|---|---|---|---|---|---|---|",
    ...rows,
  ].join("\n");
}

export interface RunFacts {
  date: string;
  commit: string;
  command: string;
  machine: string;
  farm: string;
  figures: [string, string][];
  warmupS: number;
  verdicts: readonly Verdict[];
  /** Series shown but not judged (the servers' disk use). */
  reported: readonly Verdict[];
  notes: string[];
}

export function resultsMarkdown(f: RunFacts): string {
  const flat = f.verdicts.filter((v) => v.flat).length;
  return `# Soak: short jobs for half an hour with cancels, node restarts and job retention

\`npm run soak\` runs a farm of real processes (nats-server, s3rver, a coordinator with a short
\`--retain-jobs\`, nodes) and submits short jobs at a steady rate (at most a few unfinished at a
time) for at least the given minutes and until every job has ended; it cancels some jobs at a
random moment, SIGKILLs a random node every few minutes and starts it again under its id, and
sends some jobs' webhooks to a receiver in the soak process. Every 10 s it samples each process's
resident memory, every JetStream stream's messages and bytes (the stage queues \`FF_Q_*\` and the
KV buckets \`KV_*\`), the object store's objects and bytes, and the servers' disk use. What the
retention keeps is the jobs ended within it, so those sizes follow the farm's pace, which moves with
the machine's other work; two kinds of series divide the pace out: \`excess_records\` (keys of the
jobs, idempotency and webhook-cursor buckets beyond one per job the retention should keep: jobs
unfinished or ended within the retention and one sweep) and \`per_kept_job\` (objects, object
bytes and jobs-bucket bytes per such job). After a
warm-up (the retention window filling up) each series must be flat: the mean of the last third
of the samples at most 25 % (or a floor: 16 MiB of memory, 1 MiB of data, 25 messages, objects or
keys; none for ratios) above the first third's. Samples: [samples.csv](samples.csv); plot: [soak.png](soak.png).

Run of ${f.date} at commit ${f.commit}:

    ${f.command}

Machine: ${f.machine}
Farm: ${f.farm}

| figure | value |
|---|---|
${f.figures.map(([k, v]) => `| ${k} | ${v} |`).join("\n")}

Flatness after the warm-up (${(f.warmupS / 60).toFixed(1)} min): ${flat} of ${f.verdicts.length} series flat.

${verdictTable(f.verdicts)}

Reported, not judged: the servers' disk use. JetStream's file store appends each write to its
stream's last block and frees space only when that block fills (4 MiB for KV buckets and work
queues) and is compacted or emptied, so a slowly written stream (node heartbeats every 2 s, the
leader lease every 1.7 s) takes hours to reach its block size and saw; its bound is a block per
stream plus the live data, which the streams' sizes above measure. s3rver's disk follows the
objects.

${verdictTable(f.reported, false)}

![soak plot](soak.png)
${f.notes.length > 0 ? `\n${f.notes.map((n) => `- ${n}`).join("\n")}\n` : ""}`;
}
