// The dashboard's charts, drawn with Chart.js (its UMD build, served by the coordinator from the
// installed npm package as /static/vendor/chart.umd.min.js, is the global Chart):
// - the farm's last hour from /api/history: sections per minute, tasks waiting for a node by
//   stage, and each node GPU's utilisation and memory (only nodes that report a GPU have any);
// - a job's timeline from /api/jobs/ID/timeline: a lane per node with a floating bar per task
//   attempt coloured by stage, failed attempts in red, and under each bar its wait from ready to start.

/* global Chart */

export const STAGE_COLORS = {
  encode_text: "#8e6bd8",
  encode_image: "#b48be8",
  vae_encode: "#3aa6b9",
  denoise: "#2f74c9",
  decode: "#2e9d5b",
  mux: "#a9702f",
};
const STAGE_LABELS = {
  encode_text: "encode text",
  encode_image: "encode image",
  vae_encode: "VAE encode",
  denoise: "denoise",
  decode: "decode",
  mux: "mux",
};
const FAILED = "#d0413b";
const WAIT = "#9aa3ae";
const GPU_COLORS = ["#2f74c9", "#e0761a", "#2e9d5b", "#b03a8c", "#6b7a89", "#c9a21a", "#3aa6b9", "#8e6bd8"];
const INK = "#1d232b";
const MUTED = "#68717d";
const GRID = "#eceef1";

Chart.defaults.font.family = 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
Chart.defaults.font.size = 11;
Chart.defaults.color = MUTED;
Chart.defaults.animation = false;
Chart.defaults.maintainAspectRatio = false;
Chart.defaults.plugins.legend.labels.boxWidth = 10;
Chart.defaults.plugins.legend.labels.boxHeight = 10;

const alpha = (hex, a) =>
  `${hex}${Math.round(a * 255)
    .toString(16)
    .padStart(2, "0")}`;
const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
const clockSeconds = (ms) =>
  new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const seconds = (ms) => (ms < 10_000 ? `${(ms / 1000).toFixed(2)} s` : `${(ms / 1000).toFixed(1)} s`);

// ---- the farm's last hour ----

/** A time axis from the oldest sample (at most the window back) to now, in local clock time. */
function timeAxis(h) {
  const now = Date.parse(h.at);
  const first = h.farm.t[0] ?? now;
  const min = Math.max(now - h.windowMs, Math.min(first, now - 60_000));
  // Minutes say nothing apart on a span of a few minutes (a coordinator just started).
  const label = now - min <= 15 * 60_000 ? clockSeconds : clock;
  return {
    type: "linear",
    min,
    max: now,
    grid: { color: GRID },
    ticks: { maxTicksLimit: 6, callback: (v) => label(v), maxRotation: 0 },
  };
}

const timeTooltip = { callbacks: { title: (items) => (items[0] ? clockSeconds(items[0].parsed.x) : "") } };

function lineChart(canvas, yTitle, yOptions = {}) {
  return new Chart(canvas, {
    type: "line",
    data: { datasets: [] },
    options: {
      parsing: false,
      normalized: true,
      interaction: { mode: "nearest", axis: "x", intersect: false },
      elements: { point: { radius: 0, hitRadius: 6 }, line: { borderWidth: 1.5, tension: 0.2 } },
      scales: {
        x: { type: "linear" },
        y: { beginAtZero: true, grid: { color: GRID }, title: { display: true, text: yTitle }, ...yOptions },
      },
      plugins: { legend: { position: "bottom" }, tooltip: timeTooltip },
    },
  });
}

const points = (t, values) => t.map((x, i) => ({ x, y: values[i] }));

/** The four charts of the farm panel, fed from /api/history by update(history). */
export function farmCharts(root) {
  const charts = {
    throughput: lineChart(root.querySelector("#chart-throughput"), "sections / min", {
      ticks: { precision: 0 },
    }),
    waiting: lineChart(root.querySelector("#chart-waiting"), "tasks waiting", {
      stacked: true,
      ticks: { precision: 0 },
    }),
    gpuUtil: lineChart(root.querySelector("#chart-gpu-util"), "GPU utilisation %", { max: 100 }),
    gpuMem: lineChart(root.querySelector("#chart-gpu-mem"), "GPU memory used (GiB)"),
  };
  // Stages that waited at some point in the window only: six flat zero lines say nothing.
  charts.waiting.options.plugins.legend.labels.filter = (item, data) =>
    data.datasets[item.datasetIndex].data.some((p) => p.y > 0);

  function update(h) {
    const axis = timeAxis(h);
    for (const c of Object.values(charts)) c.options.scales.x = { ...axis };
    charts.throughput.data.datasets = [
      {
        label: "sections finished in the trailing minute",
        data: points(h.farm.t, h.farm.sectionsPerMinute),
        borderColor: STAGE_COLORS.denoise,
        backgroundColor: alpha(STAGE_COLORS.denoise, 0.15),
        fill: true,
        stepped: false,
      },
    ];
    charts.waiting.data.datasets = Object.entries(h.farm.waitingTasks).map(([stage, values]) => ({
      label: STAGE_LABELS[stage] ?? stage,
      data: points(h.farm.t, values),
      borderColor: STAGE_COLORS[stage],
      backgroundColor: alpha(STAGE_COLORS[stage] ?? WAIT, 0.35),
      fill: true,
      stepped: true,
    }));
    const named = (g) => (h.gpus.filter((x) => x.node === g.node).length > 1 ? `${g.node} GPU ${g.index}` : g.node);
    charts.gpuUtil.data.datasets = h.gpus.map((g, i) => ({
      label: named(g),
      data: points(g.t, g.utilizationPercent),
      borderColor: GPU_COLORS[i % GPU_COLORS.length],
      spanGaps: false,
    }));
    charts.gpuMem.data.datasets = h.gpus.map((g, i) => ({
      label: `${named(g)} (of ${(g.memoryTotalMib.at(-1) / 1024).toFixed(0)} GiB)`,
      data: points(
        g.t,
        g.memoryUsedMib.map((m) => m / 1024),
      ),
      borderColor: GPU_COLORS[i % GPU_COLORS.length],
    }));
    const total = Math.max(0, ...h.gpus.map((g) => g.memoryTotalMib.at(-1) / 1024));
    charts.gpuMem.options.scales.y.max = total > 0 ? Math.ceil(total) : undefined;
    // A farm without GPU nodes says so instead of drawing empty axes.
    for (const id of ["gpu-util", "gpu-mem"])
      root.querySelector(`#card-${id}`).dataset.empty = String(h.gpus.length === 0);
    root.dataset.samples = String(h.farm.t.length);
    root.dataset.gpus = String(h.gpus.length);
    for (const c of Object.values(charts)) c.update("none");
  }
  return { update, charts };
}

// ---- a job's timeline ----

const SHORT = { encode_text: "text", encode_image: "image", vae_encode: "vae", mux: "mux" };
const barLabel = (b) => (b.section !== undefined ? `${b.stage === "denoise" ? "s" : "d"}${b.section}` : SHORT[b.stage]);

/** Writes each task bar's short name inside it where it fits. */
const barLabels = {
  id: "framefarmBarLabels",
  afterDatasetsDraw(chart) {
    const { ctx } = chart;
    ctx.save();
    ctx.font = `600 10px ${Chart.defaults.font.family}`;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    chart.data.datasets.forEach((ds, i) => {
      if (ds.stack !== "task" || !chart.isDatasetVisible(i)) return;
      chart.getDatasetMeta(i).data.forEach((el, j) => {
        const text = barLabel(ds.data[j].bar);
        const width = Math.abs(el.x - el.base);
        if (ctx.measureText(text).width + 4 > width) return;
        ctx.fillStyle = "#fff";
        ctx.fillText(text, (el.x + el.base) / 2, el.y);
      });
    });
    ctx.restore();
  },
};

function taskTooltip(b) {
  const lines = [
    `${b.taskId.split(".").slice(1).join(".")} · attempt ${b.attempt} · ${b.outcome}`,
    b.node ? `node ${b.node}` : "waiting for a node",
  ];
  if (b.readyMs !== undefined) lines.push(`waited ${seconds((b.startMs ?? b.endMs) - b.readyMs)} from ready`);
  if (b.startMs !== undefined)
    lines.push(`ran ${seconds(b.endMs - b.startMs)} (${seconds(b.startMs)} → ${seconds(b.endMs)})`);
  if (b.modelMs) lines.push(`in onnxruntime ${seconds(b.modelMs)}`);
  for (const [k, v] of Object.entries(b.phases ?? {})) lines.push(`  ${k} ${seconds(v)}`);
  return lines;
}

/** The datasets of a timeline: a bar dataset per stage, failed attempts, and the waits under them. */
function timelineDatasets(t) {
  const bar = (b, from, to) => ({ x: [from / 1000, to / 1000], y: b.lane, bar: b });
  const ran = t.bars.filter((b) => b.startMs !== undefined);
  // A task of a few milliseconds (a failpoint's failure, a cached read) still shows.
  const common = {
    borderSkipped: false,
    borderRadius: 2,
    barPercentage: 0.92,
    categoryPercentage: 0.9,
    minBarLength: 3,
  };
  const stages = Object.keys(STAGE_COLORS).filter((s) => ran.some((b) => b.stage === s && b.outcome !== "failed"));
  return [
    ...stages.map((stage) => ({
      ...common,
      label: STAGE_LABELS[stage],
      stack: "task",
      data: ran.filter((b) => b.stage === stage && b.outcome !== "failed").map((b) => bar(b, b.startMs, b.endMs)),
      // A task still running is drawn lighter, with a dashed edge.
      backgroundColor: (c) =>
        c.raw?.bar.outcome === "running" ? alpha(STAGE_COLORS[stage], 0.45) : STAGE_COLORS[stage],
      borderColor: STAGE_COLORS[stage],
      borderWidth: (c) => (c.raw?.bar.outcome === "running" ? 1.5 : 0),
    })),
    {
      ...common,
      label: "failed attempt",
      stack: "task",
      data: ran.filter((b) => b.outcome === "failed").map((b) => bar(b, b.startMs, b.endMs)),
      backgroundColor: FAILED,
      borderColor: "#7d1d19",
      borderWidth: 1,
      minBarLength: 8,
    },
    {
      ...common,
      label: "waiting for a node (ready → start)",
      stack: "wait",
      barPercentage: 0.55,
      data: t.bars
        .filter((b) => b.readyMs !== undefined && (b.startMs ?? b.endMs) > b.readyMs)
        .map((b) => bar(b, b.readyMs, b.startMs ?? b.endMs)),
      backgroundColor: alpha(WAIT, 0.55),
      borderColor: WAIT,
      borderWidth: 1,
    },
  ];
}

/** Pixels per lane: room for a task bar and its wait under it. */
export const LANE_PX = 34;

/** Draws (or redraws) a job's timeline into canvas; returns the chart. */
export function drawTimeline(canvas, t, existing) {
  const datasets = timelineDatasets(t);
  const end = Math.max(t.nowMs, ...t.bars.map((b) => b.endMs)) / 1000;
  const options = {
    indexAxis: "y",
    parsing: { xAxisKey: "x", yAxisKey: "y" },
    scales: {
      x: {
        type: "linear",
        min: 0,
        max: t.state === "QUEUED" || t.state === "RUNNING" ? t.nowMs / 1000 : end,
        stacked: false,
        grid: { color: GRID },
        title: { display: true, text: "seconds since the job was submitted" },
      },
      y: { type: "category", labels: t.lanes, grid: { color: GRID }, ticks: { color: INK, autoSkip: false } },
    },
    plugins: {
      legend: { position: "bottom" },
      tooltip: {
        callbacks: { title: () => "", label: (c) => taskTooltip(c.raw.bar) },
      },
    },
  };
  if (existing !== undefined) {
    existing.data.datasets = datasets;
    existing.options.scales = options.scales;
    existing.update("none");
    return existing;
  }
  return new Chart(canvas, { type: "bar", data: { datasets }, options, plugins: [barLabels] });
}
