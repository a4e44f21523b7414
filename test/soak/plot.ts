/**
 * The soak's plot: one panel per kind of series (memory, stream messages and bytes, objects, disk,
 * jobs ended) against minutes, drawn by Vega-Lite to SVG and rendered to PNG by sharp (librsvg): no
 * browser, no native canvas. Dashed rules mark the end of the warm-up; red rules the node restarts.
 */
import sharp from "sharp";
import { View, parse } from "vega";
import { compile, type TopLevelSpec } from "vega-lite";
import type { Sample } from "./flatness.js";

const PANELS: Record<string, string> = {
  rss_mib: "Resident memory (MiB)",
  stream_msgs: "NATS stream messages (stage queues FF_Q_*, KV buckets KV_*)",
  stream_mib: "NATS stream data (MiB)",
  excess_records: "Keys beyond one per job the retention keeps (unfinished, or ended within --retain-jobs + a sweep)",
  per_kept_job: "Per job the retention keeps: objects, object KiB, jobs bucket KiB",
  objects_count: "Objects in the store",
  objects_mib: "Object store data (MiB)",
  disk_mib: "Disk used by the servers (MiB)",
  jobs: "Jobs ended (succeeded, failed, cancelled)",
};

export interface PlotInput {
  samples: readonly Sample[];
  warmupS: number;
  /** Seconds since the start at which a node was SIGKILLed and started again. */
  restarts: readonly number[];
  title: string;
}

export async function writePlot(file: string, input: PlotInput): Promise<void> {
  const rows: { minutes: number; panel: string; series: string; value: number }[] = [];
  for (const s of input.samples) {
    const minutes = s.t / 60;
    rows.push({ minutes, panel: "jobs", series: "jobs ended", value: s.jobsEnded });
    for (const [name, value] of Object.entries(s.values)) {
      const dot = name.indexOf(".");
      rows.push({ minutes, panel: name.slice(0, dot), series: name.slice(dot + 1), value });
    }
  }
  const marks = [
    ...input.restarts.map((t) => ({ minutes: t / 60, kind: "node restart" })),
    { minutes: input.warmupS / 60, kind: "end of warm-up" },
  ];
  const panel = (key: string): NonNullable<Extract<TopLevelSpec, { vconcat: unknown }>["vconcat"]>[number] => ({
    title: { text: PANELS[key] ?? key, anchor: "start", fontSize: 13 },
    width: 900,
    height: 150,
    layer: [
      {
        data: { values: rows.filter((r) => r.panel === key) },
        mark: { type: "line", strokeWidth: 1.5 },
        encoding: {
          x: { field: "minutes", type: "quantitative", title: "minutes since start" },
          y: { field: "value", type: "quantitative", title: null },
          color: {
            field: "series",
            type: "nominal",
            title: null,
            scale: { scheme: "category20" },
            legend: { labelLimit: 260, symbolType: "stroke" },
          },
        },
      },
      {
        data: { values: marks },
        mark: { type: "rule", strokeWidth: 1 },
        encoding: {
          x: { field: "minutes", type: "quantitative" },
          strokeDash: { condition: { test: "datum.kind === 'end of warm-up'", value: [6, 4] }, value: [1, 0] },
          stroke: { condition: { test: "datum.kind === 'node restart'", value: "#d62728" }, value: "#555" },
          opacity: { value: 0.5 },
        },
      },
    ],
    resolve: { scale: { color: "independent" } },
  });
  const spec: TopLevelSpec = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: { text: input.title, anchor: "start", fontSize: 15 },
    background: "white",
    padding: 12,
    vconcat: Object.keys(PANELS)
      .filter((k) => rows.some((r) => r.panel === k))
      .map(panel),
    resolve: { scale: { color: "independent" } },
  };
  const view = new View(parse(compile(spec).spec), { renderer: "none" });
  const svg = await view.toSVG();
  view.finalize();
  await sharp(Buffer.from(svg), { density: 144 }).png().toFile(file);
}
