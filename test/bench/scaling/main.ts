/**
 * Scaling: how a farm's throughput grows with its nodes on one host. For each N, a fresh farm of
 * real processes (nats-server, s3rver, coordinator, N nodes serving every stage, one per GPU)
 * renders the same batch of jobs; reported per N: sections per minute, scaling efficiency
 * throughput(N) / (N x throughput(1)), node idle time, and where a denoise task's time goes.
 *
 *   npm run bench:scaling -- [--nodes 1,2,4,8] [--jobs 16] [--sections 4] [--steps 8]
 *       [--bundle DIR] [--ep cpu|webgpu|cuda] [--gpu-env CUDA_VISIBLE_DEVICES]
 *
 * --gpu-env VAR gives node i the environment VAR=i, pinning one node process per GPU. On this
 * project's 2-core build machine it runs with CPU nodes and the tiny model; the multi-GPU runs
 * need a host with that many GPUs (test/bench/scaling/RESULTS.md says which were made).
 */
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import type { SubmitJobRequest } from "../../../proto/gen/framefarm/v1/jobs.js";
import { readJob, type JobRecord } from "../../../coordinator/dispatch/job-record.js";
import { FarmProcesses } from "../../support/farm-processes.js";
import { repoRoot } from "../../support/paths.js";
import { JOBS_BUCKET } from "../../../shared/farm/protocol.js";

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
  },
});
const COUNTS = (values.nodes ?? "1,2").split(",").map(Number);
const JOBS = Number(values.jobs ?? 16);
const SECTIONS = Number(values.sections ?? 4);
const STEPS = Number(values.steps ?? 8);
const RESOLUTION = Number(values.resolution ?? 64);
if (COUNTS.some((n) => !Number.isInteger(n) || n < 1) || !COUNTS.includes(1))
  throw new Error("--nodes must list whole numbers including 1 (efficiency is relative to one node)");

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? 0 : s[Math.floor(s.length / 2)]!;
};

interface Measured {
  n: number;
  wallS: number;
  sectionsPerMin: number;
  idlePct: number;
  modelMs: number;
  outsideModelMs: number;
  waitMs: number;
}

async function run(n: number, image: Buffer): Promise<Measured> {
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
    await Promise.all(
      Array.from({ length: n }, (_, i) =>
        farm.startNode(`node-${i}`, "all", {
          args: ["--ep", values.ep ?? "cpu"],
          ...(values["gpu-env"] !== undefined ? { env: { [values["gpu-env"]]: String(i) } } : {}),
        }),
      ),
    );
    const request = (j: number): SubmitJobRequest => ({
      image: { source: { $case: "data", value: image } },
      // Inverted sampling at window 9: 33 frames per section.
      settings: {
        prompt: `scaling ${j}`,
        length: { $case: "numFrames", value: SECTIONS * 33 },
        mode: 1,
        steps: STEPS,
        resolution: RESOLUTION,
        seed: BigInt(j),
      },
      bundle: "",
      priority: 0,
      idempotencyKey: "",
    });
    const t0 = Date.now();
    const ids = await Promise.all(
      Array.from({ length: JOBS }, (_, j) => farm.submit(request(j)).then((job) => job.id)),
    );
    const kv = await farm.bus.kv(JOBS_BUCKET);
    let records: JobRecord[];
    for (;;) {
      records = (await Promise.all(ids.map((id) => readJob(kv, id)))).map((r) => r!.record);
      if (records.every((r) => r.state !== "QUEUED" && r.state !== "RUNNING")) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    const failed = records.filter((r) => r.state !== "SUCCEEDED");
    if (failed.length > 0) throw new Error(`${failed.length} jobs did not succeed: ${failed[0]!.error}`);
    const end = Math.max(...records.map((r) => Date.parse(r.updatedAt)));
    const wallS = (end - t0) / 1000;
    const log = records.flatMap((r) => r.taskLog ?? []);
    const busyMs = new Map<string, number>();
    for (const e of log)
      busyMs.set(e.node, (busyMs.get(e.node) ?? 0) + Date.parse(e.finishedAt) - Date.parse(e.startedAt));
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
      outsideModelMs: median(denoise.map((e) => Date.parse(e.finishedAt) - Date.parse(e.startedAt) - e.modelMs)),
      waitMs: median(waits),
    };
  } finally {
    await farm.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const image = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));
  const rows: Measured[] = [];
  for (const n of [...COUNTS].sort((a, b) => a - b)) {
    process.stderr.write(`N = ${n} ...\n`);
    rows.push(await run(n, image));
  }
  const one = rows.find((r) => r.n === 1)!;
  const cpu = os.cpus();
  process.stdout.write(
    `\nMachine: ${cpu[0]?.model ?? "unknown CPU"}, ${cpu.length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}; execution provider ${values.ep ?? "cpu"}\n`,
  );
  process.stdout.write(
    `Batch: ${JOBS} jobs x ${SECTIONS} sections x ${STEPS} steps at resolution ${RESOLUTION}, bundle ${values.bundle ?? "tiny (test/fixtures/tiny-bundle)"}; every node serves every stage\n\n`,
  );
  process.stdout.write(
    "| N nodes | wall (s) | sections/min | efficiency | node idle | denoise: model ms (median) | denoise: outside model ms | wait between sections ms |\n|---|---|---|---|---|---|---|---|\n",
  );
  for (const r of rows) {
    const eff = r.sectionsPerMin / (r.n * one.sectionsPerMin);
    process.stdout.write(
      `| ${r.n} | ${r.wallS.toFixed(1)} | ${r.sectionsPerMin.toFixed(1)} | ${eff.toFixed(2)} | ${r.idlePct.toFixed(0)}% | ${r.modelMs.toFixed(0)} | ${r.outsideModelMs.toFixed(0)} | ${r.waitMs.toFixed(0)} |\n`,
    );
  }
  const last = rows.at(-1)!;
  process.stdout.write(
    `\nefficiency_at_${last.n}: ${(last.sectionsPerMin / (last.n * one.sectionsPerMin)).toFixed(2)}\n`,
  );
}

await main();
