/**
 * `npm run soak`: many short jobs for a long while on a farm of real processes (nats-server,
 * s3rver, a coordinator with a short --retain-jobs, three CPU nodes on the tiny bundle), with
 * random cancels, a node SIGKILLed and started again every few minutes and some jobs' webhooks,
 * sampling the farm's footprint every 10 s (test/soak/sampler.ts). Writes samples.csv, RESULTS.md
 * (machine named) and soak.png into --out and prints whether each series stayed flat
 * (test/soak/flatness.ts). Exits 0 only if every series is flat, no job failed or was lost, and
 * every job past its retention answered NOT_FOUND.
 *
 *   npm run soak [-- --jobs 1000 --minutes 30 --retain 3m --restart-every 3m --cancel-fraction 0.1
 *                   --webhook-fraction 0.2 --max-unfinished 6 --seed 1 --out test/soak]
 *
 * Jobs are submitted at jobs/minutes per minute while fewer than --max-unfinished are unfinished:
 * a farm slower than that rate runs longer, never fewer jobs.
 */
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { promisify, parseArgs } from "node:util";
import { randomBytes } from "node:crypto";
import { Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { Client as MinioClient } from "minio";
import { JobState, type Job, type SubmitJobRequest } from "../../proto/gen/framefarm/v1/jobs.js";
import { FarmProcesses } from "../support/farm-processes.js";
import { repoRoot } from "../support/paths.js";
import { natsServers } from "../../shared/bus/nats-bus.js";
import { LOOPBACK, S3_ACCESS_KEY, S3_SECRET_KEY } from "../../coordinator/cli/local-servers.js";
import { formatDuration, parseDuration } from "../../shared/duration.js";
import { takeSample } from "./sampler.js";
import { judge } from "./flatness.js";
import { writePlot } from "./plot.js";
import { resultsMarkdown, samplesCsv, verdictTable, type SampleRow } from "./report.js";

const run = promisify(execFile);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const args = process.argv.slice(2);
const { values } = parseArgs({
  args,
  options: {
    jobs: { type: "string" },
    minutes: { type: "string" },
    retain: { type: "string" },
    "restart-every": { type: "string" },
    "cancel-fraction": { type: "string" },
    "webhook-fraction": { type: "string" },
    "max-unfinished": { type: "string" },
    warmup: { type: "string" },
    seed: { type: "string" },
    out: { type: "string" },
  },
});
const JOBS = Number(values.jobs ?? 1000);
const MINUTES = Number(values.minutes ?? 30);
const RETAIN = values.retain ?? "3m";
const RETAIN_MS = parseDuration("--retain", RETAIN);
const RESTART_EVERY_MS = parseDuration("--restart-every", values["restart-every"] ?? "3m");
const CANCEL_FRACTION = Number(values["cancel-fraction"] ?? 0.1);
const WEBHOOK_FRACTION = Number(values["webhook-fraction"] ?? 0.2);
const MAX_UNFINISHED = Number(values["max-unfinished"] ?? 6);
const SAMPLE_MS = 10_000;
// The retention window fills up first: objects and records of jobs ended within RETAIN stay.
const WARMUP_S =
  values.warmup !== undefined ? parseDuration("--warmup", values.warmup) / 1000 : Math.max(300, RETAIN_MS / 1000 + 120);
/** The coordinator's sweep interval for this retention (coordinator/dispatch/job-sweeper.ts). */
const SWEEP_EVERY_MS = Math.min(60_000, Math.max(1000, Math.round(RETAIN_MS / 10)));
const OUT = path.resolve(values.out ?? path.join(repoRoot(), "test", "soak"));
const NODES: Record<string, string> = {
  "vae-0": "text,image,vae",
  "vae-1": "text,image,vae",
  "denoise-0": "denoise",
};
const NODE_CACHE_MB = 64;
/**
 * Disk use is plotted and tabled, not judged: JetStream's file store appends each write to its
 * stream's last block and frees space only when a block fills (4 MiB for KV buckets and work
 * queues) and is compacted or emptied, so a slowly written stream (node heartbeats, the lease)
 * takes hours to reach its block and saw; the streams' own sizes are judged instead.
 */
const REPORTED_ONLY = /^disk_mib\./;
const ENDED = new Set([JobState.JOB_STATE_SUCCEEDED, JobState.JOB_STATE_FAILED, JobState.JOB_STATE_CANCELLED]);

/** mulberry32: the run's random choices (sections, cancels, restarts) repeat with --seed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const random = rng(Number(values.seed ?? 1));

interface Tracked {
  id: string;
  sections: number;
  webhook: boolean;
  endedAt?: number;
  state?: JobState;
  /** After its retention: whether GetJob answered NOT_FOUND. */
  expired?: boolean;
}

function unaryCall<T>(
  fn: (md: Metadata, opts: { deadline: number }, cb: (e: ServiceError | null, r?: T) => void) => void,
) {
  return new Promise<T>((resolve, reject) =>
    fn(new Metadata(), { deadline: Date.now() + 10_000 }, (e, r) => (e ? reject(e) : resolve(r as T))),
  );
}

async function machine(): Promise<string> {
  const cpu = os.cpus();
  const nice = os.getPriority();
  return `${cpu[0]?.model ?? "unknown CPU"}, ${cpu.length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, ${os.type()} ${os.release()}; all processes on this machine${nice !== 0 ? `, at niceness ${nice}` : ""}`;
}

async function commit(): Promise<string> {
  const head = (await run("git", ["rev-parse", "--short", "HEAD"], { cwd: repoRoot() })).stdout.trim();
  const dirty = (await run("git", ["status", "--porcelain", "--untracked-files=no"], { cwd: repoRoot() })).stdout;
  return dirty.trim() === "" ? head : `${head} (with uncommitted changes)`;
}

async function main(): Promise<number> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-soak-"));
  await mkdir(OUT, { recursive: true });
  const image = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));
  let deliveries = 0;
  const receiver = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      deliveries++;
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => receiver.listen(0, LOOPBACK, r));
  const hookPort = (receiver.address() as { port: number }).port;
  const farm = await FarmProcesses.start(
    dir,
    {
      ackWaitMs: 10_000,
      s3RetryMs: 30_000,
      // The decoded-object cache (512 MiB by default on CPU) fills within the warm-up, not over half
      // an hour: a node's memory past it is what the soak looks at.
      nodeArgs: ["--cache-mb", String(NODE_CACHE_MB)],
      coordinatorArgs: [
        "--retain-jobs",
        RETAIN,
        "--webhook-secret",
        randomBytes(32).toString("hex"),
        "--webhook-allow",
        `${LOOPBACK}:${hookPort}`,
      ],
    },
    NODES,
  );
  // NATS admits only the farm's users: the soak watches the streams as the coordinator's user.
  const nc = await connect({
    servers: natsServers(farm.natsUrl),
    user: farm.natsAdmin.user,
    pass: farm.natsAdmin.password,
  });
  const jsm = await jetstreamManager(nc);
  const s3 = new MinioClient({
    endPoint: LOOPBACK,
    port: farm.s3.port,
    useSSL: false,
    accessKey: S3_ACCESS_KEY,
    secretKey: S3_SECRET_KEY,
  });
  const probe = {
    pids: (): Record<string, number | undefined> => ({
      coordinator: farm.coordinatorPid,
      ...Object.fromEntries(farm.runningNodes().map((n) => [`node ${n.id}`, n.pid])),
      "nats-server": farm.nats.process.pid,
      s3rver: farm.s3.process.pid,
    }),
    jsm,
    s3,
    bucket: "framefarm",
    dirs: { "nats-server": path.join(dir, "nats"), s3rver: path.join(dir, "s3") },
  };

  const runId = randomBytes(4).toString("hex");
  const jobs: Tracked[] = [];
  const samples: SampleRow[] = [];
  const restarts: number[] = [];
  const counts = { submitErrors: 0, cancelsAsked: 0, lost: 0 };
  const t0 = Date.now();
  const since = (): number => (Date.now() - t0) / 1000;
  let finished = false;
  const unfinished = (): Tracked[] => jobs.filter((j) => j.endedAt === undefined);
  const request = (i: number, sections: number, webhook: boolean): SubmitJobRequest => ({
    image: { source: { $case: "data", value: image } },
    settings: {
      prompt: `soak ${i}`,
      // 33 frames a section at window 9: 20 frames are one section, 40 two.
      length: { $case: "numFrames", value: sections === 1 ? 20 : 40 },
      mode: 0,
      steps: 2,
      height: 64,
      width: 64,
      seed: BigInt(i),
    },
    bundle: "",
    priority: 0,
    idempotencyKey: `soak-${runId}-${i}`,
    keyframes: [],
    loras: [],
    ...(webhook ? { webhookUrl: `http://${LOOPBACK}:${hookPort}/hook/${i}` } : {}),
  });
  const getJob = (id: string): Promise<Job> =>
    unaryCall<{ job?: Job }>((md, o, cb) => farm.client.getJob({ id }, md, o, cb)).then((r) => r.job!);

  /**
   * What the retention should keep depends on the farm's pace (jobs ended within it), and the pace
   * on the machine's other work: these series divide it out. Kept jobs: unfinished, or ended within
   * the retention and one sweep. excess_records: keys beyond one per kept job (a webhook cursor per
   * kept job with a webhook); per_kept_job: the object store and the jobs bucket per kept job.
   */
  const perKeptJob = (v: Record<string, number>): Record<string, number> => {
    const kept = jobs.filter((j) => j.endedAt === undefined || Date.now() - j.endedAt < RETAIN_MS + SWEEP_EVERY_MS);
    const out: Record<string, number> = {
      "excess_records.KV_jobs": (v["stream_msgs.KV_jobs"] ?? 0) - kept.length,
      "excess_records.KV_idempotency": (v["stream_msgs.KV_idempotency"] ?? 0) - kept.length,
      "excess_records.KV_webhook_cursors":
        (v["stream_msgs.KV_webhook_cursors"] ?? 0) - kept.filter((j) => j.webhook).length,
    };
    // Too few kept jobs make a ratio of noise (the first seconds).
    if (kept.length >= 10) {
      out["per_kept_job.objects"] = (v["objects_count.store"] ?? 0) / kept.length;
      out["per_kept_job.object_kib"] = ((v["objects_mib.store"] ?? 0) * 1024) / kept.length;
      out["per_kept_job.kv_jobs_kib"] = ((v["stream_mib.KV_jobs"] ?? 0) * 1024) / kept.length;
    }
    return out;
  };

  const submitter = (async () => {
    const interval = (MINUTES * 60_000) / JOBS;
    let next = t0;
    for (let i = 0; i < JOBS;) {
      if (Date.now() < next || unfinished().length >= MAX_UNFINISHED) {
        await sleep(50);
        continue;
      }
      const sections = random() < 0.5 ? 1 : 2;
      const cancel = random() < CANCEL_FRACTION;
      const cancelAfterMs = random() * 8000;
      const webhook = random() < WEBHOOK_FRACTION;
      try {
        const job = await unaryCall<{ job?: Job }>((md, o, cb) =>
          farm.client.submitJob(request(i, sections, webhook), md, o, cb),
        ).then((r) => r.job!);
        const tracked: Tracked = { id: job.id, sections, webhook };
        jobs.push(tracked);
        if (cancel)
          setTimeout(() => {
            if (tracked.endedAt !== undefined) return;
            counts.cancelsAsked++;
            void unaryCall((md, o, cb) => farm.client.cancelJob({ id: job.id }, md, o, cb)).catch(() => undefined);
          }, cancelAfterMs);
        i++;
        next += interval;
      } catch {
        counts.submitErrors++; // the same idempotency key again: a job that did get in is answered as itself
        await sleep(1000);
      }
    }
  })();

  const tracker = (async () => {
    while (!finished) {
      for (const j of unfinished()) {
        try {
          const job = await getJob(j.id);
          if (ENDED.has(job.state)) {
            j.endedAt = Date.now();
            j.state = job.state;
          }
        } catch (err) {
          // NOT_FOUND before it ended: lost. Anything else (a restart's moment): asked again.
          if ((err as ServiceError).code === status.NOT_FOUND) {
            counts.lost++;
            j.endedAt = Date.now();
          }
        }
      }
      // Jobs past their retention (and two sweeps) must be gone.
      const due = Date.now() - RETAIN_MS - 2 * SWEEP_EVERY_MS - 30_000;
      for (const j of jobs.filter((x) => x.expired === undefined && x.endedAt !== undefined && x.endedAt < due)) {
        j.expired = await getJob(j.id).then(
          () => false,
          (err: ServiceError) => (err.code === status.NOT_FOUND ? true : undefined),
        );
      }
      if (jobs.length === JOBS && unfinished().length === 0 && since() >= MINUTES * 60) finished = true;
      await sleep(1000);
    }
  })();

  const restarter = (async () => {
    let next = t0 + RESTART_EVERY_MS;
    while (!finished) {
      if (Date.now() < next) {
        await sleep(200);
        continue;
      }
      next += RESTART_EVERY_MS;
      const nodes = farm.runningNodes();
      const victim = nodes[Math.floor(random() * nodes.length)];
      if (victim === undefined) continue;
      restarts.push(since());
      await farm.killNode(victim.id);
      // A start that fails (the machine too busy to start it in time) is tried again: the farm must not lose a node.
      for (let attempt = 1; ; attempt++) {
        try {
          await farm.startNode(victim.id, victim.stages, { readyTimeoutMs: 120_000 });
          break;
        } catch (err) {
          process.stdout.write(`node ${victim.id} did not start (attempt ${attempt}): ${(err as Error).message}\n`);
          if (attempt === 5) throw err;
          await sleep(5000);
        }
      }
    }
  })();

  const sampler = (async () => {
    for (let k = 0; !finished; k++) {
      const at = t0 + k * SAMPLE_MS;
      if (Date.now() < at) await sleep(at - Date.now());
      try {
        const values = await takeSample(probe);
        const ended = jobs.filter((j) => j.endedAt !== undefined).length;
        Object.assign(values, perKeptJob(values));
        samples.push({ t: since(), jobsEnded: ended, load1: os.loadavg()[0]!, values });
        // Written as it goes: a long run stopped early still leaves its samples.
        await writeFile(path.join(OUT, "samples.csv"), samplesCsv(samples));
        if (k % 6 === 0)
          process.stdout.write(
            `${(since() / 60).toFixed(1)} min: ${jobs.length} submitted, ${ended} ended, coordinator ${values["rss_mib.coordinator"]?.toFixed(0)} MiB, ` +
              `KV_jobs ${values["stream_msgs.KV_jobs"] ?? 0} records, ${values["objects_count.store"]} objects (${values["objects_mib.store"]?.toFixed(1)} MiB)\n`,
          );
      } catch (err) {
        process.stdout.write(`sample at ${since().toFixed(0)} s failed: ${(err as Error).message}\n`);
      }
    }
  })();

  try {
    await Promise.all([submitter, tracker, restarter, sampler]);
  } finally {
    finished = true;
    await nc.close().catch(() => undefined);
    await farm.stop();
    receiver.close();
    await rm(dir, { recursive: true, force: true });
  }

  const wallS = since();
  const by = (s: JobState): number => jobs.filter((j) => j.state === s).length;
  const expiredChecked = jobs.filter((j) => j.expired !== undefined);
  const notExpired = expiredChecked.filter((j) => j.expired === false);
  const verdicts = judge(samples, WARMUP_S).filter((v) => !REPORTED_ONLY.test(v.series));
  const reported = judge(samples, WARMUP_S).filter((v) => REPORTED_ONLY.test(v.series));
  const meanLoad = samples.reduce((a, s) => a + s.load1, 0) / Math.max(1, samples.length);
  const figures: [string, string][] = [
    [
      "jobs submitted (1 or 2 sections of 2 steps at 64x64; " +
        `${jobs.filter((j) => j.sections === 2).length} of two)`,
      String(jobs.length),
    ],
    ["succeeded", String(by(JobState.JOB_STATE_SUCCEEDED))],
    [`cancelled (cancel asked of ${counts.cancelsAsked} while unfinished)`, String(by(JobState.JOB_STATE_CANCELLED))],
    ["failed", String(by(JobState.JOB_STATE_FAILED))],
    ["lost (NOT_FOUND before ending)", String(counts.lost)],
    ["submissions refused or timed out (retried under the same idempotency key)", String(counts.submitErrors)],
    ["node restarts (SIGKILL, then started again under its id)", String(restarts.length)],
    ["webhook deliveries received", String(deliveries)],
    [
      `jobs checked ${formatDuration(RETAIN_MS)} + 2 sweeps + 30 s after ending: NOT_FOUND / still there`,
      `${expiredChecked.length - notExpired.length} / ${notExpired.length}`,
    ],
    ["wall time (min)", (wallS / 60).toFixed(1)],
    ["throughput (jobs/min)", ((jobs.length / wallS) * 60).toFixed(1)],
    ["samples (every 10 s)", String(samples.length)],
    ["mean 1-minute load average of the machine", meanLoad.toFixed(2)],
  ];
  const allFlat = verdicts.every((v) => v.flat);
  await writeFile(path.join(OUT, "samples.csv"), samplesCsv(samples));
  const nice = os.getPriority();
  await writeFile(
    path.join(OUT, "RESULTS.md"),
    resultsMarkdown({
      date: new Date().toISOString().slice(0, 10),
      commit: await commit(),
      command: `${nice !== 0 ? `nice -n ${nice} ` : ""}npm run soak${args.length > 0 ? ` -- ${args.join(" ")}` : ""}`,
      machine: await machine(),
      farm: `coordinator (--retain-jobs ${RETAIN}, webhooks to a receiver on loopback) + ${Object.keys(NODES).length} CPU nodes (${Object.entries(
        NODES,
      )
        .map(([id, s]) => `${id}: ${s}`)
        .join(
          ", ",
        )}; --ack-wait-ms 10000 --cache-mb ${NODE_CACHE_MB}), nats-server ${(await run("nats-server", ["--version"]).catch(() => ({ stdout: "" }))).stdout.trim().replace(/^nats-server: /, "")}, s3rver; tiny bundle`,
      figures,
      warmupS: WARMUP_S,
      verdicts,
      reported,
      notes: [],
    }),
  );
  await writePlot(path.join(OUT, "soak.png"), {
    samples,
    warmupS: WARMUP_S,
    restarts,
    title: `framefarm soak: ${jobs.length} jobs in ${(wallS / 60).toFixed(0)} min, --retain-jobs ${RETAIN}, a node restarted every ${formatDuration(RESTART_EVERY_MS)}`,
  });
  process.stdout.write(
    `\n${figures.map(([k, v]) => `${k}: ${v}`).join("\n")}\n\n${verdictTable(verdicts)}\n\nReported, not judged:\n\n${verdictTable(reported, false)}\n\n`,
  );
  const ok =
    allFlat &&
    by(JobState.JOB_STATE_FAILED) === 0 &&
    counts.lost === 0 &&
    notExpired.length === 0 &&
    jobs.length === JOBS;
  process.stdout.write(
    `verdict: ${
      allFlat
        ? "flat"
        : `GROWS: ${verdicts
            .filter((v) => !v.flat)
            .map((v) => v.series)
            .join(", ")}`
    }; ${ok ? "PASS" : "FAIL"} (results in ${path.relative(process.cwd(), OUT) || "."})\n`,
  );
  return ok ? 0 : 1;
}

process.exitCode = await main();
