/**
 * Load: many short jobs at once on a farm of real processes (nats-server, s3rver, coordinator,
 * 2 encode/VAE nodes and 2 denoise nodes, tiny model). Every job must succeed with every task run
 * exactly once (no loss, no duplicate). Reports throughput, job latency percentiles and the
 * queues over time, with the machine named.
 *
 *   npm run bench:load [-- --jobs 200]
 */
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { JobState, type Job, type SubmitJobRequest } from "../../../proto/gen/framefarm/v1/jobs.js";
import { readJob, type JobRecord } from "../../../coordinator/dispatch/job-record.js";
import { FarmProcesses } from "../../support/farm-processes.js";
import { repoRoot } from "../../support/paths.js";
import { JOBS_BUCKET, STAGE_KINDS } from "../../../shared/farm/protocol.js";

const { values } = parseArgs({ options: { jobs: { type: "string" }, concurrency: { type: "string" } } });
const JOBS = Number(values.jobs ?? 200);

const quantile = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
};

async function main(): Promise<number> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-load-"));
  const nodes = {
    "encode-0": "text,image,vae",
    "encode-1": "text,image,vae",
    "denoise-0": "denoise",
    "denoise-1": "denoise",
  };
  const farm = await FarmProcesses.start(dir, { ackWaitMs: 30_000, s3RetryMs: 30_000 }, nodes);
  const image = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));
  // A short job: one section of 2 steps at 64x64.
  const request = (i: number): SubmitJobRequest => ({
    image: { source: { $case: "data", value: image } },
    settings: {
      prompt: `load ${i}`,
      length: { $case: "numFrames", value: 30 },
      mode: 0,
      steps: 2,
      height: 64,
      width: 64,
      seed: BigInt(i),
    },
    bundle: "",
    priority: 0,
    idempotencyKey: `load-${i}`,
    keyframes: [],
    loras: [],
  });
  const timeline: string[] = [];
  try {
    const t0 = Date.now();
    const ids = await Promise.all(
      Array.from({ length: JOBS }, (_, i) => farm.submit(request(i)).then((j: Job) => j.id)),
    );
    const submitted = Date.now();
    const kv = await farm.bus.kv(JOBS_BUCKET);
    let records: JobRecord[] = [];
    let peakHeld = 0;
    for (;;) {
      records = (await Promise.all(ids.map((id) => readJob(kv, id)))).map((r) => r!.record);
      const count = (s: JobRecord["state"]): number => records.filter((r) => r.state === s).length;
      const queues = await Promise.all(
        STAGE_KINDS.map(
          async (k) => `${k} ${(await farm.bus.queues.stats(k)).waiting}/${(await farm.bus.queues.stats(k)).inFlight}`,
        ),
      );
      const held = records.reduce((n, r) => n + Object.values(r.taskStates).filter((s) => s === "ready").length, 0);
      peakHeld = Math.max(peakHeld, held);
      timeline.push(
        `| ${((Date.now() - t0) / 1000).toFixed(0)} | ${count("QUEUED")} | ${count("RUNNING")} | ${count("SUCCEEDED")} | ${count("FAILED") + count("CANCELLED")} | ${held} | ${queues.join(", ")} |`,
      );
      if (records.every((r) => r.state !== "QUEUED" && r.state !== "RUNNING")) break;
      if (Date.now() - t0 > 30 * 60_000) throw new Error("jobs did not finish within 30 minutes");
      await new Promise((r) => setTimeout(r, 2000));
    }
    const ended = Math.max(...records.map((r) => Date.parse(r.updatedAt)));
    const failed = records.filter((r) => r.state !== "SUCCEEDED");
    // Every task of every job ran exactly once: one log entry, and it succeeded.
    const duplicated = records.filter((r) =>
      r.tasks.some((t) => (r.taskLog ?? []).filter((e) => e.taskId === t.id).length !== 1),
    );
    const videos = await Promise.all(
      records.map(async (r) => (await farm.store.head(`jobs/${r.spec.jobId}/output/video.mp4`)) !== null),
    );
    const latencies = records.map((r) => (Date.parse(r.updatedAt) - Date.parse(r.createdAt)) / 1000);
    const wall = (ended - t0) / 1000;
    const cpu = os.cpus();
    process.stdout.write(
      `\nMachine: ${cpu[0]?.model ?? "unknown CPU"}, ${cpu.length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}; all processes on this machine\n`,
    );
    process.stdout.write(
      `Farm: coordinator + ${Object.keys(nodes).length} nodes (${Object.values(nodes).join(" | ")}), nats-server, s3rver on loopback; tiny model, 1 section x 2 steps at 64x64 per job\n\n`,
    );
    process.stdout.write("| figure | value |\n|---|---|\n");
    process.stdout.write(
      `| jobs submitted (all at once, ${((submitted - t0) / 1000).toFixed(1)} s to submit) | ${JOBS} |\n`,
    );
    process.stdout.write(
      `| succeeded | ${JOBS - failed.length} |\n| failed or lost | ${failed.length} |\n| jobs with a task run twice or never | ${duplicated.length} |\n| videos in the store | ${videos.filter(Boolean).length} |\n`,
    );
    process.stdout.write(
      `| wall time, first submit to last job done (s) | ${wall.toFixed(1)} |\n| throughput (jobs/min) | ${((JOBS / wall) * 60).toFixed(1)} |\n`,
    );
    process.stdout.write(
      `| job latency p50 / p95 / max (s) | ${quantile(latencies, 0.5).toFixed(1)} / ${quantile(latencies, 0.95).toFixed(1)} / ${Math.max(...latencies).toFixed(1)} |\n`,
    );
    process.stdout.write(`| peak tasks held by the dispatcher | ${peakHeld} |\n`);
    process.stdout.write(
      `\nQueues over time (waiting/in flight per stage queue; held = ready tasks the dispatcher holds for idle nodes):\n\n| s | queued | running | done | failed | held | stage queues |\n|---|---|---|---|---|---|---|\n${timeline.join("\n")}\n`,
    );
    for (const r of failed.slice(0, 5)) process.stdout.write(`- ${r.spec.jobId} ${r.state}: ${r.error ?? ""}\n`);
    return failed.length === 0 && duplicated.length === 0 && videos.every(Boolean) ? 0 : 1;
  } finally {
    await farm.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

process.exitCode = await main();
