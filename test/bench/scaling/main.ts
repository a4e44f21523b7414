/**
 * Scaling: how a farm's throughput grows with its nodes on one host. For each N, a fresh farm of
 * real processes (nats-server, s3rver, coordinator, N nodes serving every stage, one per GPU)
 * renders the same batch of jobs; reported per N: sections per minute, scaling efficiency
 * throughput(N) / (N x throughput(1)), node idle time, and where a denoise task's time goes.
 *
 *   npm run bench:scaling -- [--nodes 1,2,4,8|none] [--jobs 16] [--sections 4] [--steps 8]
 *       [--bundle DIR] [--ep cpu|webgpu|cuda] [--gpu-env CUDA_VISIBLE_DEVICES] [--resolution 64]
 *       [--warmup WxH|off] [--ready-timeout-s 600] [--single-job-sections K] [--timeline-out FILE.svg] [--image PNG]
 *
 * --gpu-env VAR gives node i the environment VAR=i, pinning one node process per GPU. With --ep cuda
 * or webgpu every node warms up (`framefarm node --warmup`) at the job's frame size before it says
 * it serves, so a GPU's first-run cost is paid before the batch clock starts.
 *
 * --single-job-sections K adds a phase: ONE job of K sections at the same settings, (a) on one node
 * serving every stage and (b) on two nodes, node-0 serving denoise and node-1 every other stage;
 * reported: wall time, how much decode hides behind denoise, what grows with the job's length
 * (per-section times and object sizes, the job record's size, the coordinator's memory), and with
 * --timeline-out a timeline of both runs as SVG.
 *
 * On this project's 2-core build machine it runs with CPU nodes and the tiny model; the multi-GPU
 * runs need a host with that many GPUs (test/bench/scaling/RESULTS.md says which were made).
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import type { SubmitJobRequest } from "../../../proto/gen/framefarm/v1/jobs.js";
import { readJob, type JobRecord } from "../../../coordinator/dispatch/job-record.js";
import { FarmProcesses } from "../../support/farm-processes.js";
import { repoRoot } from "../../support/paths.js";
import { JOBS_BUCKET } from "../../../shared/farm/protocol.js";
import { jobKeys } from "../../../shared/farm/keys.js";
import { findNearestBucket } from "../../../shared/framepack/buckets.js";
import { parseTaskId, timelineSvg, type TimelinePanel } from "./timeline-svg.js";

const { values } = parseArgs({
  options: {
    nodes: { type: "string" },
    jobs: { type: "string" },
    sections: { type: "string" },
    steps: { type: "string" },
    bundle: { type: "string" },
    ep: { type: "string" },
    "gpu-env": { type: "string" },
    resolution: { type: "string" },
    warmup: { type: "string" },
    "ready-timeout-s": { type: "string" },
    "single-job-sections": { type: "string" },
    "timeline-out": { type: "string" },
    image: { type: "string" },
  },
});
const COUNTS = values.nodes === "none" ? [] : (values.nodes ?? "1,2").split(",").map(Number);
const JOBS = Number(values.jobs ?? 16);
const SECTIONS = Number(values.sections ?? 4);
const STEPS = Number(values.steps ?? 8);
const RESOLUTION = Number(values.resolution ?? 64);
const EP = values.ep ?? "cpu";
const READY_TIMEOUT_MS = Number(values["ready-timeout-s"] ?? 600) * 1000;
const SINGLE = values["single-job-sections"] === undefined ? 0 : Number(values["single-job-sections"]);
if (COUNTS.length > 0 && (COUNTS.some((n) => !Number.isInteger(n) || n < 1) || !COUNTS.includes(1)))
  throw new Error("--nodes must list whole numbers including 1 (efficiency is relative to one node), or be none");
if (!Number.isInteger(SINGLE) || SINGLE < 0) throw new Error("--single-job-sections must be a whole number");
if (COUNTS.length === 0 && SINGLE === 0) throw new Error("--nodes none needs --single-job-sections K");
if (!(READY_TIMEOUT_MS > 0)) throw new Error("--ready-timeout-s must be a positive number");

/** The start image (a PNG: its size is read from the header): the demo image unless --image names one. */
const IMAGE_PATH = values.image ?? path.join(repoRoot(), "test", "fixtures", "images", "demo.png");

/** The frame size a job of this image gets (its resolution bucket), from the PNG header. */
function frameSize(png: Buffer): { width: number; height: number } {
  return findNearestBucket(png.readUInt32BE(20), png.readUInt32BE(16), RESOLUTION);
}

/** --warmup WxH passes through; by default a GPU node warms up at the job's frame size, a CPU node not. */
function warmupArg(png: Buffer): string | undefined {
  if (values.warmup === "off") return undefined;
  if (values.warmup !== undefined) return values.warmup;
  if (EP !== "cuda" && EP !== "webgpu") return undefined;
  const { width, height } = frameSize(png);
  return `${width}x${height}`;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? 0 : s[Math.floor(s.length / 2)]!;
};
const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const durMs = (e: { startedAt: string; finishedAt: string }): number =>
  Date.parse(e.finishedAt) - Date.parse(e.startedAt);
type LogEntry = NonNullable<JobRecord["taskLog"]>[number];

interface NodeSpec {
  id: string;
  stages: string;
  gpu: number;
}

/** A fresh farm of real processes in its own folder; nodes started in parallel, each timed. */
async function withFarm<T>(
  specs: NodeSpec[],
  image: Buffer,
  body: (farm: FarmProcesses, startS: Map<string, number>) => Promise<T>,
): Promise<T> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-scaling-"));
  const farm = await FarmProcesses.start(
    dir,
    {
      ackWaitMs: 60_000,
      s3RetryMs: 30_000,
      ...(values.bundle !== undefined ? { bundleDir: path.resolve(values.bundle) } : {}),
    },
    {},
  );
  try {
    const warmup = warmupArg(image);
    const startS = new Map<string, number>();
    await Promise.all(
      specs.map(async (n) => {
        const t = Date.now();
        await farm.startNode(n.id, n.stages, {
          args: ["--ep", EP, ...(warmup !== undefined ? ["--warmup", warmup] : [])],
          ...(values["gpu-env"] !== undefined ? { env: { [values["gpu-env"]]: String(n.gpu) } } : {}),
          readyTimeoutMs: READY_TIMEOUT_MS,
        });
        startS.set(n.id, (Date.now() - t) / 1000);
        process.stderr.write(`  ${n.id} (${n.stages}) serving after ${startS.get(n.id)!.toFixed(1)} s\n`);
      }),
    );
    return await body(farm, startS);
  } finally {
    await farm.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

const startText = (startS: Map<string, number>): string =>
  [...startS].map(([id, s]) => `${id} ${s.toFixed(1)}`).join(", ");

function request(image: Buffer, j: number, sections: number): SubmitJobRequest {
  return {
    image: { source: { $case: "data", value: image } },
    // Inverted sampling at window 9: 33 frames per section.
    settings: {
      prompt: `scaling ${j}`,
      length: { $case: "numFrames", value: sections * 33 },
      mode: 1,
      steps: STEPS,
      resolution: RESOLUTION,
      seed: BigInt(j),
    },
    bundle: "",
    priority: 0,
    idempotencyKey: "",
    keyframes: [],
    loras: [],
  };
}

/** Polls the jobs' records (and calls onPoll in between) until none is queued or running. */
async function waitJobs(
  farm: FarmProcesses,
  ids: string[],
  pollMs: number,
  onPoll?: () => Promise<void>,
): Promise<JobRecord[]> {
  const kv = await farm.bus.kv(JOBS_BUCKET);
  for (;;) {
    const records = (await Promise.all(ids.map((id) => readJob(kv, id)))).map((r) => r!.record);
    if (records.every((r) => r.state !== "QUEUED" && r.state !== "RUNNING")) {
      const failed = records.filter((r) => r.state !== "SUCCEEDED");
      if (failed.length > 0) throw new Error(`${failed.length} jobs did not succeed: ${failed[0]!.error}`);
      return records;
    }
    // A node that died leaves its stage without a server: the job would wait forever.
    const dead = farm.exitedNodes();
    if (dead.length > 0)
      throw new Error(
        dead.map((d) => `node ${d.id} exited (${d.code ?? d.signal}); its last output:\n${d.tail}`).join("\n"),
      );
    await onPoll?.();
    await sleep(pollMs);
  }
}

interface Measured {
  n: number;
  wallS: number;
  sectionsPerMin: number;
  idlePct: number;
  modelMs: number;
  outsideModelMs: number;
  waitMs: number;
  startS: Map<string, number>;
}

async function run(n: number, image: Buffer): Promise<Measured> {
  const specs = Array.from({ length: n }, (_, i) => ({ id: `node-${i}`, stages: "all", gpu: i }));
  return withFarm(specs, image, async (farm, startS) => {
    const t0 = Date.now();
    const ids = await Promise.all(
      Array.from({ length: JOBS }, (_, j) => farm.submit(request(image, j, SECTIONS)).then((job) => job.id)),
    );
    const records = await waitJobs(farm, ids, 500);
    const end = Math.max(...records.map((r) => Date.parse(r.updatedAt)));
    const wallS = (end - t0) / 1000;
    const log = records.flatMap((r) => r.taskLog ?? []);
    const busyMs = new Map<string, number>();
    for (const e of log) busyMs.set(e.node, (busyMs.get(e.node) ?? 0) + durMs(e));
    const idlePct =
      (100 * [...Array(n).keys()].reduce((s, i) => s + Math.max(0, wallS * 1000 - (busyMs.get(`node-${i}`) ?? 0)), 0)) /
      (n * wallS * 1000);
    const denoise = log.filter((e) => e.taskId.includes(".denoise."));
    // Wait: from the previous section's denoise finishing (its dependency) to this one starting.
    const waits: number[] = [];
    for (const r of records) {
      const byId = new Map((r.taskLog ?? []).map((e) => [e.taskId, e]));
      for (let k = 1; k < SECTIONS; k++) {
        const prev = byId.get(`${r.spec.jobId}.denoise.${k - 1}`);
        const cur = byId.get(`${r.spec.jobId}.denoise.${k}`);
        if (prev !== undefined && cur !== undefined)
          waits.push(Date.parse(cur.startedAt) - Date.parse(prev.finishedAt));
      }
    }
    return {
      n,
      wallS,
      sectionsPerMin: ((JOBS * SECTIONS) / wallS) * 60,
      idlePct,
      modelMs: median(denoise.map((e) => e.modelMs)),
      outsideModelMs: median(denoise.map((e) => durMs(e) - e.modelMs)),
      waitMs: median(waits),
      startS,
    };
  });
}

interface SingleJob {
  name: string;
  nodes: string;
  startS: Map<string, number>;
  wallMs: number;
  log: LogEntry[];
  /** Object sizes seen while the job ran (its intermediates are deleted once it succeeds). */
  objectBytes: Map<string, number>;
  recordBytes: number;
  rssKiB: number[];
  jobId: string;
}

async function rssKiB(pid: number | undefined): Promise<number | undefined> {
  if (pid === undefined) return undefined;
  const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => "");
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  return m === null ? undefined : Number(m[1]);
}

async function singleJob(name: string, specs: NodeSpec[], image: Buffer): Promise<SingleJob> {
  return withFarm(specs, image, async (farm, startS) => {
    const kv = await farm.bus.kv(JOBS_BUCKET);
    const rss: number[] = [];
    const sample = async (): Promise<void> => {
      const r = await rssKiB(farm.coordinatorPid);
      if (r !== undefined) rss.push(r);
    };
    await sample();
    const t0 = Date.now();
    const jobId = (await farm.submit(request(image, 0, SINGLE))).id;
    const objectBytes = new Map<string, number>();
    const sections = `${jobKeys(jobId).history(0).split("/sections/")[0]}/sections/`;
    const watch = async (): Promise<void> => {
      await sample();
      for (const key of await farm.store.list(sections).catch(() => [] as string[])) {
        if (objectBytes.has(key)) continue;
        const h = await farm.store.head(key).catch(() => null);
        if (h !== null) objectBytes.set(key, h.size);
      }
    };
    const [record] = await waitJobs(farm, [jobId], 100, watch);
    await sample();
    const entry = await kv.get(jobId);
    return {
      name,
      nodes: specs.map((s) => `${s.id}: ${s.stages}`).join("; "),
      startS,
      wallMs: Date.parse(record!.updatedAt) - t0,
      log: (record!.taskLog ?? [])
        .filter((e) => e.ok)
        .map((e) => ({
          ...e,
          startedAt: new Date(Date.parse(e.startedAt) - t0).toISOString(),
          finishedAt: new Date(Date.parse(e.finishedAt) - t0).toISOString(),
        })),
      objectBytes,
      recordBytes: entry?.value.length ?? 0,
      rssKiB: rss,
      jobId,
    };
  });
}

/** Task times relative to submit: startedAt/finishedAt hold ms since t0 as epoch dates. */
const span = (e: LogEntry): [number, number] => [Date.parse(e.startedAt), Date.parse(e.finishedAt)];
const ofStage = (log: LogEntry[], stage: string): LogEntry[] =>
  log.filter((e) => parseTaskId(e.taskId).stage === stage);

/** How much of the decode tasks' time overlaps a denoise task (ms). */
function decodeHiddenMs(log: LogEntry[]): number {
  const denoise = ofStage(log, "denoise").map(span);
  let hidden = 0;
  for (const [s, e] of ofStage(log, "decode").map(span))
    for (const [ds, de] of denoise) hidden += Math.max(0, Math.min(e, de) - Math.max(s, ds));
  return hidden;
}

const phasesText = (p: Record<string, number> | undefined): string =>
  p === undefined
    ? ""
    : Object.entries(p)
        .map(([k, v]) => `${k} ${v.toFixed(0)}`)
        .join(" / ");
const mib = (kib: number | undefined): string => (kib === undefined ? "?" : (kib / 1024).toFixed(0));

function printSingle(runs: SingleJob[]): void {
  const out = (s: string): boolean => process.stdout.write(s);
  const a = runs.find((r) => r.name.startsWith("(a)"));
  out(
    `\nSingle job: ${SINGLE} sections x ${STEPS} steps at resolution ${RESOLUTION}; (a) one node serving every stage, (b) node-0 denoise, node-1 text,image,vae (encode_text, encode_image, vae_encode, decode, mux)\n\n`,
  );
  out(
    "| config | node start (s) | job wall (s) | vs (a) | denoise sum (s) | decode sum (s) | decode hidden behind denoise | mux ms (phases) | encode tasks ms (txt/img/enc) | job record (bytes) | coordinator RSS MiB start / end / max |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
  );
  for (const r of runs) {
    const decodeMs = sum(ofStage(r.log, "decode").map(durMs));
    const mux = ofStage(r.log, "mux")[0];
    const enc = ["encode_text", "encode_image", "vae_encode"].map((s) => sum(ofStage(r.log, s).map(durMs)).toFixed(0));
    out(
      `| ${r.name} | ${startText(r.startS)} | ${(r.wallMs / 1000).toFixed(2)} | ${a === undefined ? "?" : (r.wallMs / a.wallMs).toFixed(2)} | ${(sum(ofStage(r.log, "denoise").map(durMs)) / 1000).toFixed(2)} | ${(decodeMs / 1000).toFixed(2)} | ${decodeMs > 0 ? ((100 * decodeHiddenMs(r.log)) / decodeMs).toFixed(0) : "0"}% | ${mux === undefined ? "?" : `${durMs(mux)} (${phasesText(mux.phases)})`} | ${enc.join(" / ")} | ${r.recordBytes} | ${mib(r.rssKiB[0])} / ${mib(r.rssKiB.at(-1))} / ${mib(Math.max(...r.rssKiB))} |\n`,
    );
  }
  if (runs.length === 2) out(`\nsingle_job_ratio_b_over_a: ${(runs[1]!.wallMs / runs[0]!.wallMs).toFixed(2)}\n`);
  for (const r of runs) {
    out(
      `\nPer section, ${r.name} (objects as seen in the store while the job ran; "?": deleted before seen):\n\n| k | denoise wall ms | denoise model ms | denoise phases ms | wait before denoise ms | decode ms | decode phases ms | history object (bytes) | section video object (bytes) |\n|---|---|---|---|---|---|---|---|---|\n`,
    );
    const keys = jobKeys(r.jobId);
    const byId = new Map(r.log.map((e) => [e.taskId, e]));
    for (let k = 0; k < SINGLE; k++) {
      const d = byId.get(`${r.jobId}.denoise.${k}`);
      const prev = byId.get(`${r.jobId}.denoise.${k - 1}`);
      const v = byId.get(`${r.jobId}.decode.${k}`);
      out(
        `| ${k} | ${d === undefined ? "?" : durMs(d)} | ${d?.modelMs.toFixed(0) ?? "?"} | ${phasesText(d?.phases)} | ${d !== undefined && prev !== undefined ? span(d)[0] - span(prev)[1] : ""} | ${v === undefined ? "?" : durMs(v)} | ${phasesText(v?.phases)} | ${r.objectBytes.get(keys.history(k)) ?? "?"} | ${r.objectBytes.get(keys.sectionVideo(k)) ?? "?"} |\n`,
      );
    }
    // At most 30 samples, evenly spaced, the last one included.
    const every = Math.max(1, Math.ceil(r.rssKiB.length / 30));
    const shown = r.rssKiB.filter((_, i) => i % every === 0 || i === r.rssKiB.length - 1);
    out(
      `\nCoordinator RSS (MiB) over the job, ${shown.length} of ${r.rssKiB.length} samples taken every ~100 ms: ${shown.map((x) => mib(x)).join(" ")}\n`,
    );
  }
}

function timelinePanels(runs: SingleJob[]): TimelinePanel[] {
  return runs.map((r) => ({
    title: `${r.name}: ${r.nodes}; job ${(r.wallMs / 1000).toFixed(2)} s`,
    tasks: r.log.map((e) => {
      const { stage, section } = parseTaskId(e.taskId);
      const [startMs, endMs] = span(e);
      return { node: e.node, stage, ...(section !== undefined ? { section } : {}), startMs, endMs };
    }),
  }));
}

/** Runs one phase; a failure is reported and the run goes on, so one bad phase loses no other figures. */
async function attempt<T>(what: string, body: () => Promise<T>): Promise<T | undefined> {
  try {
    return await body();
  } catch (err) {
    const text = err instanceof Error ? (err.stack ?? err.message) : String(err);
    process.stderr.write(`${what} FAILED: ${text}\n`);
    process.stdout.write(`\n${what} FAILED: ${err instanceof Error ? err.message : String(err)}\n`);
    return undefined;
  }
}

async function main(): Promise<void> {
  const image = await readFile(IMAGE_PATH);
  const frame = frameSize(image);
  const warmup = warmupArg(image);
  const cpu = os.cpus();
  process.stdout.write(
    `\nMachine: ${cpu[0]?.model ?? "unknown CPU"}, ${cpu.length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}; execution provider ${EP}${values["gpu-env"] !== undefined ? `, node i gets ${values["gpu-env"]}=i` : ""}\n`,
  );
  process.stdout.write(
    `Frame ${frame.width}x${frame.height} (resolution ${RESOLUTION}, ${IMAGE_PATH.split("/").at(-1)}); node warm-up: ${warmup ?? "none"}; bundle ${values.bundle ?? "tiny (test/fixtures/tiny-bundle)"}\n`,
  );
  const rows: Measured[] = [];
  for (const n of [...COUNTS].sort((a, b) => a - b)) {
    process.stderr.write(`N = ${n} ...\n`);
    const r = await attempt(`Batch on ${n} node(s)`, () => run(n, image));
    if (r !== undefined) rows.push(r);
  }
  // The batch table is printed before the single-job phase starts.
  if (rows.length > 0) {
    const one = rows.find((r) => r.n === 1);
    const eff = (r: Measured): string =>
      one === undefined ? "?" : (r.sectionsPerMin / (r.n * one.sectionsPerMin)).toFixed(2);
    process.stdout.write(
      `\nBatch: ${JOBS} jobs x ${SECTIONS} sections x ${STEPS} steps; every node serves every stage\n\n`,
    );
    process.stdout.write(
      "| N nodes | node start (s) | wall (s) | sections/min | efficiency | node idle | denoise: model ms (median) | denoise: outside model ms | wait between sections ms |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (const r of rows)
      process.stdout.write(
        `| ${r.n} | ${startText(r.startS)} | ${r.wallS.toFixed(1)} | ${r.sectionsPerMin.toFixed(1)} | ${eff(r)} | ${r.idlePct.toFixed(0)}% | ${r.modelMs.toFixed(0)} | ${r.outsideModelMs.toFixed(0)} | ${r.waitMs.toFixed(0)} |\n`,
      );
    const last = rows.at(-1)!;
    process.stdout.write(`\nefficiency_at_${last.n}: ${eff(last)}\n`);
  }
  if (SINGLE === 0) return;
  const singles: SingleJob[] = [];
  process.stderr.write(`Single job of ${SINGLE} sections, (a) one node ...\n`);
  const a = await attempt("Single job (a)", () =>
    singleJob("(a) 1 node, all stages", [{ id: "node-0", stages: "all", gpu: 0 }], image),
  );
  if (a !== undefined) singles.push(a);
  process.stderr.write(`Single job of ${SINGLE} sections, (b) two nodes ...\n`);
  const b = await attempt("Single job (b)", () =>
    singleJob(
      "(b) 2 nodes, denoise + rest",
      [
        { id: "node-0", stages: "denoise", gpu: 0 },
        { id: "node-1", stages: "text,image,vae", gpu: 1 },
      ],
      image,
    ),
  );
  if (b !== undefined) singles.push(b);
  if (singles.length === 0) return;
  printSingle(singles);
  if (values["timeline-out"] !== undefined) {
    await writeFile(values["timeline-out"], timelineSvg(timelinePanels(singles)));
    process.stdout.write(`\nTimeline: ${values["timeline-out"]}\n`);
  }
}

await main();
