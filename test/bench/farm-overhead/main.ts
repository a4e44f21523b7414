/**
 * Farm overhead per section: wall time a section spends outside model execution (queue hops,
 * dispatcher, KV updates, object store reads/writes, (de)serialization), on loopback with the
 * tiny model, so almost everything measured is the farm itself. Target: <= 50 ms per section.
 *
 *   npm run bench:farm-overhead [-- --jobs 12 --sections 6 --vae-nice 19]
 *
 * Starts `framefarm cluster --nodes 1 --denoise-nodes 1`, renders the jobs one after another and
 * reads each job's task log: for section k >= 1, overhead = finish(denoise k) - finish(denoise k-1)
 * - model time inside denoise k. Also reports the node-side part alone (task wall - model time).
 */
import { execFile, spawn } from "node:child_process";
import { promisify } from "node:util";
import { readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { credentials } from "@grpc/grpc-js";
import {
  JobServiceClient,
  SamplingMode,
  type Job,
  type SubmitJobRequest,
} from "../../../proto/gen/framefarm/v1/jobs.js";
import { connectClusterNats, natsUsersFileIn } from "../../support/cluster-nats.js";
import { readJob, type JobRecord } from "../../../coordinator/dispatch/job-record.js";
import { cliPath, repoRoot } from "../../support/paths.js";
import { JOBS_BUCKET } from "../../../shared/farm/protocol.js";

const { values } = parseArgs({
  options: {
    jobs: { type: "string" },
    sections: { type: "string" },
    steps: { type: "string" },
    "vae-nice": { type: "string" },
  },
});
/**
 * --vae-nice N lowers the CPU priority of the text/image/VAE node (renice N): on a machine with
 * fewer cores than farm processes, its decodes would otherwise take CPU from the denoise node,
 * which a farm with the VAE stages on another machine never sees. Reported beside, never instead
 * of, the plain run.
 */
const VAE_NICE = values["vae-nice"];
// 12 jobs x 5 gaps = 60 samples: enough that the p95 is not simply the largest one.
const JOBS = Number(values.jobs ?? 12);
const SECTIONS = Number(values.sections ?? 6);
const STEPS = Number(values.steps ?? 4);

const run = promisify(execFile);
const quantile = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
};

async function main(): Promise<void> {
  const cluster = spawn(
    process.execPath,
    [cliPath(), "cluster", "--http-port", "0", "--nodes", "1", "--denoise-nodes", "1"],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  let out = "";
  const addr = await new Promise<{ grpc: string; nats: string }>((resolve, reject) => {
    cluster.stdout!.on("data", (b: Buffer) => {
      out += b.toString();
      const g = /gRPC listening on (\S+)/.exec(out);
      const n = /NATS on (\S+),/.exec(out);
      if (g && n) resolve({ grpc: g[1]!, nats: n[1]! });
    });
    cluster.once("exit", (c) => reject(new Error(`cluster exited ${c}`)));
  });
  const client = new JobServiceClient(addr.grpc, credentials.createInsecure());
  const bus = await connectClusterNats(addr.nats, natsUsersFileIn(out)!);
  const kv = await bus.kv(JOBS_BUCKET);
  const image = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));
  const sectionGaps: number[] = [];
  const nodeSide: number[] = [];
  const worst: { gap: number; dispatch: number; node: number; beside: string }[] = [];
  const modelTimes: number[] = [];
  try {
    if (VAE_NICE !== undefined) {
      const { stdout } = await run("pgrep", ["-P", String(cluster.pid), "-f", "--", "--id node-0"]);
      for (const pid of stdout.trim().split("\n").filter(Boolean)) await run("renice", ["-n", VAE_NICE, "-p", pid]);
    }
    for (let j = 0; j < JOBS + 1; j++) {
      const req: SubmitJobRequest = {
        image: { source: { $case: "data", value: image } },
        settings: {
          prompt: `benchmark ${j}`,
          length: { $case: "numFrames", value: SECTIONS * 33 },
          mode: SamplingMode.SAMPLING_MODE_INVERTED_ANTI_DRIFTING,
          steps: STEPS,
          seed: BigInt(j),
          height: 64,
          width: 64,
        },
        bundle: "",
        priority: 0,
        idempotencyKey: "",
        keyframes: [],
        loras: [],
      };
      const job = await new Promise<Job>((resolve, reject) =>
        client.submitJob(req, (e, r) => (e ? reject(e) : resolve(r.job!))),
      );
      let rec: JobRecord;
      for (;;) {
        rec = (await readJob(kv, job.id))!.record;
        if (rec.state === "SUCCEEDED" || rec.state === "FAILED") break;
        await new Promise((r) => setTimeout(r, 20));
      }
      if (rec.state !== "SUCCEEDED") throw new Error(`job ${job.id} failed: ${rec.error}`);
      if (j === 0) continue; // warm-up: sessions load on first use
      const denoise = (k: number) => rec.taskLog!.find((e) => e.ok && e.taskId === `${job.id}.denoise.${k}`)!;
      for (let k = 0; k < SECTIONS; k++) {
        const d = denoise(k);
        const wall = Date.parse(d.finishedAt) - Date.parse(d.startedAt);
        nodeSide.push(wall - d.modelMs);
        modelTimes.push(d.modelMs);
        if (k > 0) {
          const gap = Date.parse(d.finishedAt) - Date.parse(denoise(k - 1).finishedAt) - d.modelMs;
          sectionGaps.push(gap);
          // What else ran meanwhile (on a 2-core machine, CPU taken from the denoise node).
          const t0 = Date.parse(denoise(k - 1).finishedAt);
          const t1 = Date.parse(d.finishedAt);
          const beside = rec
            .taskLog!.filter(
              (e) => !e.taskId.includes(".denoise.") && Date.parse(e.startedAt) < t1 && Date.parse(e.finishedAt) > t0,
            )
            .map((e) => e.taskId.split(".").slice(1).join("."));
          worst.push({
            gap,
            dispatch: Date.parse(d.startedAt) - t0,
            node: wall - d.modelMs,
            beside: beside.join(" ") || "-",
          });
        }
      }
    }
  } finally {
    client.close();
    await bus.close();
    cluster.kill("SIGTERM");
    await new Promise((r) => cluster.once("exit", r));
  }
  const cpu = os.cpus()[0]?.model ?? "unknown CPU";
  const rows: [string, number[]][] = [
    ["section overhead (between denoise completions, minus model time)", sectionGaps],
    ["  of which inside the node (task wall minus model time)", nodeSide],
    ["model time per denoise task (for scale)", modelTimes],
  ];
  const median = quantile(sectionGaps, 0.5);
  const p95 = quantile(sectionGaps, 0.95);
  console.log(
    `\nfarm overhead, tiny model, loopback: ${JOBS} jobs x ${SECTIONS} sections x ${STEPS} steps${VAE_NICE !== undefined ? `, VAE node reniced to ${VAE_NICE}` : ""}`,
  );
  console.log(
    `machine: ${cpu}, ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.platform()} ${os.release()}, node ${process.version}`,
  );
  console.log(
    `${"metric".padEnd(66)}  ${"n".padStart(4)}  ${"median ms".padStart(9)}  ${"p95 ms".padStart(7)}  ${"max ms".padStart(7)}`,
  );
  for (const [name, xs] of rows) {
    console.log(
      `${name.padEnd(66)}  ${String(xs.length).padStart(4)}  ${quantile(xs, 0.5).toFixed(1).padStart(9)}  ${quantile(xs, 0.95).toFixed(1).padStart(7)}  ${Math.max(
        ...xs,
      )
        .toFixed(1)
        .padStart(7)}`,
    );
  }
  console.log(
    "\nslowest sections: overhead = result to next start (dispatch) + inside the node; tasks that ran beside it",
  );
  for (const w of worst.sort((a, b) => b.gap - a.gap).slice(0, 5))
    console.log(
      `  ${w.gap.toFixed(0).padStart(4)} ms = dispatch ${w.dispatch} + node ${w.node.toFixed(0)}; beside: ${w.beside}`,
    );
  console.log(
    `target <= 50 ms per section: median ${median.toFixed(1)} ms, p95 ${p95.toFixed(1)} ms -> ${p95 <= 50 ? "met" : "NOT met"}`,
  );
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
