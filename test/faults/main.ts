/**
 * `npm run test:faults`: real faults injected into a farm of real processes (nats-server, s3rver,
 * coordinator, nodes) while jobs render: SIGKILLed nodes, coordinator (alone, or the leader of
 * two) and NATS server (alone, or one of a 3-server JetStream cluster: the one a client is on, or a
 * queue stream's leader), the leader of two coordinators partitioned away (its network namespace's
 * link cut, then restored; where this runs as root), an object
 * store outage shorter and longer than the retry limit, the object store's disk full (a tmpfs, where
 * this runs as root), duplicate task delivery, cancellation, bytes of stored tensors flipped on disk,
 * stored intermediate objects deleted.
 * A job that should complete must end SUCCEEDED with frames bit-identical to an undisturbed run
 * (lossless video, fixed seed); otherwise it counts as lost (did not end as it should) or
 * corrupted (other frames). Prints a table and ends with
 * `faults: <N> injected, <S> survived, <L> lost`; exits non-zero unless every fault was survived.
 * FAULT_RUNS (default 10) sets the runs of the repeated faults; FAULT_ONLY=REGEX runs only the
 * faults whose names match (the baseline always runs); FAULT_LOGS=DIR keeps the whole log of every
 * coordinator and node there (test/support/farm-processes.ts).
 */
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { promisify } from "node:util";
import os from "node:os";
import path from "node:path";
import { JobState, jobStateToJSON, type Job, type SubmitJobRequest } from "../../proto/gen/framefarm/v1/jobs.js";
import { storedVideoFrames } from "../support/video.js";
import { repoRoot } from "../support/paths.js";
import { FarmProcesses, type FarmSettings, type TaskLine } from "../support/farm-processes.js";
import { NetPartition, netnsUnavailable } from "../support/net-partition.js";
import {
  JOBS_BUCKET,
  STAGE_KINDS,
  isStepEvent,
  jobEventSubject,
  jobEvents,
  taskMessages,
} from "../../shared/farm/protocol.js";
import { taskMessage } from "../../coordinator/dispatch/dispatcher.js";
import { readJob } from "../../coordinator/dispatch/job-record.js";
import { jobKeys } from "../../shared/farm/keys.js";
import { streamOf } from "../../shared/bus/nats-bus.js";

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const run = promisify(execFile);
const RUNS = Number(process.env["FAULT_RUNS"] ?? 10);
const ONLY = new RegExp(process.env["FAULT_ONLY"] ?? "");
const ENDED = new Set([JobState.JOB_STATE_SUCCEEDED, JobState.JOB_STATE_FAILED, JobState.JOB_STATE_CANCELLED]);

interface Outcome {
  survived: boolean;
  corrupted?: boolean;
  detail: string;
}

interface Row {
  fault: string;
  runs: number;
  survived: number;
  lost: number;
  corrupted: number;
  seconds: number;
  notes: string[];
}

async function jobRequest(): Promise<SubmitJobRequest> {
  const image = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));
  // 3 sections of 25 steps on the tiny model: long enough to hit a section in the middle.
  return {
    image: { source: { $case: "data", value: image } },
    settings: {
      prompt: "a lighthouse, waves, seagulls",
      length: { $case: "numFrames", value: 90 },
      mode: 0,
      steps: 25,
      resolution: 64,
      seed: 42n,
      lossless: true,
    },
    bundle: "",
    priority: 0,
    idempotencyKey: "",
    keyframes: [],
    loras: [],
  };
}

/** Resolves at the first step event of the job at or past (section, step). */
function atStep(farm: FarmProcesses, jobId: string, section: number, step: number, timeoutMs = 60_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => (off(), reject(new Error(`no step ${section}/${step} of ${jobId} within ${timeoutMs} ms`))),
      timeoutMs,
    );
    const off = farm.bus.events.subscribe(jobEventSubject(jobId), (_s, data) => {
      const e = jobEvents.decode(data);
      if (isStepEvent(e) && e.section >= section && e.step >= step) {
        clearTimeout(timer);
        off();
        resolve();
      }
    });
  });
}

async function untilEnded(farm: FarmProcesses, id: string, timeoutMs = 90_000): Promise<Job> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const job = await farm.get(id, Math.max(1000, end - Date.now()));
    if (ENDED.has(job.state) || Date.now() > end) return job;
    await sleep(100);
  }
}

async function framesOf(farm: FarmProcesses, job: Job): Promise<Buffer> {
  return Buffer.from((await storedVideoFrames(farm.store, job.videoKey, job.width, job.height)).data);
}

/**
 * What the farm was doing when a job did not end as it should: its tasks not done, the queues, and
 * the last lines of every coordinator and node (whole logs: FAULT_LOGS).
 */
async function farmState(farm: FarmProcesses, jobId: string): Promise<string> {
  try {
    const record = (await readJob(await farm.bus.kv(JOBS_BUCKET), jobId))?.record;
    const states = Object.entries(record?.taskStates ?? {})
      .filter(([, st]) => st !== "done")
      .map(([t, st]) => `${t.slice(t.indexOf(".") + 1)}=${st}`);
    const queues = await Promise.all(
      [...STAGE_KINDS, "results"].map(async (q) => `${q}:${JSON.stringify(await farm.bus.queues.stats(q))}`),
    );
    const tail = (t: string): string => t.trim().split("\n").slice(-6).join(" | ");
    const processes = [
      ...Array.from(
        { length: farm.settings.coordinators ?? 1 },
        (_, i) => `coordinator ${i}: ${tail(farm.coordinatorTail(i))}`,
      ),
      ...farm.nodeIds.map((n) => `${n}: ${tail(farm.nodeTail(n))}`),
    ];
    return `; tasks not done: ${states.join(" ")}; queues: ${queues.join(" ")}; ${processes.join("; ")}`;
  } catch (err) {
    return `; the farm's state could not be read: ${(err as Error).message}`;
  }
}

/** A job that must complete: SUCCEEDED with the baseline's frames. */
async function expectComplete(farm: FarmProcesses, id: string, baseline: Buffer, dir: string): Promise<Outcome> {
  const job = await untilEnded(farm, id);
  if (job.state !== JobState.JOB_STATE_SUCCEEDED)
    return { survived: false, detail: `ended ${jobStateToJSON(job.state)} ${job.error}${await farmState(farm, id)}` };
  const frames = await framesOf(farm, job);
  return frames.equals(baseline)
    ? { survived: true, detail: "identical frames" }
    : { survived: false, corrupted: true, detail: "frames differ from the undisturbed run" };
}

type Scenario = (farm: FarmProcesses, baseline: Buffer, dir: string) => Promise<Outcome>;

const NODES = { general: "text,image,vae", "denoise-0": "denoise" };

/** The undisturbed run: its video must survive every fault untouched. */
let baselineJob: Job | undefined;

const scenarios: { fault: string; runs: number; scenario: Scenario; needs?: "tmpfs" }[] = [
  {
    fault: "GPU node SIGKILLed mid-denoise, replaced",
    runs: RUNS,
    scenario: async (farm, baseline, dir) => {
      const job = await farm.submit(await jobRequest());
      await atStep(farm, job.id, 1, 3);
      await farm.replaceNodes("denoise");
      return expectComplete(farm, job.id, baseline, dir);
    },
  },
  {
    fault: "coordinator SIGKILLed mid-job, restarted",
    runs: RUNS,
    scenario: async (farm, baseline, dir) => {
      const job = await farm.submit(await jobRequest());
      await atStep(farm, job.id, 1, 3);
      await farm.killCoordinator();
      await sleep(300);
      await farm.startCoordinator();
      return expectComplete(farm, job.id, baseline, dir);
    },
  },
  {
    fault: "NATS server SIGKILLed mid-job, restarted",
    runs: RUNS,
    scenario: async (farm, baseline, dir) => {
      const job = await farm.submit(await jobRequest());
      await atStep(farm, job.id, 1, 3);
      await farm.restartNats(500);
      return expectComplete(farm, job.id, baseline, dir);
    },
  },
  {
    fault: "duplicate delivery of a running denoise task",
    runs: RUNS,
    scenario: async (farm, baseline, dir) => {
      const job = await farm.submit(await jobRequest());
      await atStep(farm, job.id, 1, 3);
      const taskId = `${job.id}.denoise.1`;
      const record = (await readJob(await farm.bus.kv(JOBS_BUCKET), job.id))!.record;
      await farm.bus.queues.enqueue("denoise", taskMessages.encode(taskMessage(record, taskId)));
      const outcome = await expectComplete(farm, job.id, baseline, dir);
      return outcome;
    },
  },
  {
    fault: "cancel mid-job",
    runs: RUNS,
    scenario: async (farm) => {
      const job = await farm.submit(await jobRequest());
      await atStep(farm, job.id, 1, 3);
      let lastStepAt = 0;
      const off = farm.bus.events.subscribe(jobEventSubject(job.id), (_s, data) => {
        if (isStepEvent(jobEvents.decode(data))) lastStepAt = Date.now();
      });
      const cancelledAt = Date.now();
      const res = await farm.cancel(job.id);
      if (res.state !== JobState.JOB_STATE_CANCELLED)
        return (off(), { survived: false, detail: `cancel answered ${jobStateToJSON(res.state)}` });
      let left = await farm.store.list(`jobs/${job.id}/`);
      for (
        const end = Date.now() + 10_000;
        left.length > 0 && Date.now() < end;
        left = await farm.store.list(`jobs/${job.id}/`)
      )
        await sleep(200);
      await sleep(1000);
      off();
      const final = await farm.get(job.id);
      if (final.state !== JobState.JOB_STATE_CANCELLED)
        return { survived: false, detail: `ended ${jobStateToJSON(final.state)}` };
      if (left.length > 0) return { survived: false, detail: `${left.length} objects left: ${left[0]}` };
      if (lastStepAt - cancelledAt > 3000)
        return { survived: false, detail: `steps ran ${lastStepAt - cancelledAt} ms after the cancel` };
      return { survived: true, detail: "cancelled, objects removed, denoise stopped" };
    },
  },
  {
    fault: "object store's disk full for 5 s mid-job (a server that dies of it is restarted)",
    runs: 3,
    needs: "tmpfs",
    scenario: async (farm, baseline, dir) => {
      const job = await farm.submit(await jobRequest());
      await atStep(farm, job.id, 1, 3);
      await farm.fillS3Disk();
      await sleep(5000);
      await farm.freeS3Disk();
      // s3rver exits on ENOSPC (MinIO answers 507 instead): restart it as a supervisor would.
      const crashed = !farm.s3Running();
      if (crashed) await farm.startS3();
      const outcome = await expectComplete(farm, job.id, baseline, dir);
      if (crashed) outcome.detail += "; the S3 server died on the full disk and was restarted";
      if (!outcome.survived) return outcome;
      // What was stored before the disk filled is still there and whole.
      const before = await framesOf(farm, baselineJob!);
      return before.equals(baseline)
        ? outcome
        : { survived: false, corrupted: true, detail: "the earlier job's video changed" };
    },
  },
  {
    fault: "object store down 10 s mid-job (retry limit 30 s)",
    runs: 3,
    scenario: async (farm, baseline, dir) => {
      const job = await farm.submit(await jobRequest());
      await atStep(farm, job.id, 1, 3);
      await farm.stopS3();
      await sleep(10_000);
      await farm.startS3();
      return expectComplete(farm, job.id, baseline, dir);
    },
  },
];

/** An outage longer than the retry limit: the job fails with a reason, and nothing stays leased. */
async function longOutage(dir: string): Promise<Outcome> {
  const farm = await FarmProcesses.start(path.join(dir, "short-retry"), { ackWaitMs: 2000, s3RetryMs: 1000 }, NODES);
  try {
    const job = await farm.submit(await jobRequest());
    await atStep(farm, job.id, 1, 3);
    await farm.stopS3();
    const ended = await untilEnded(farm, job.id, 60_000);
    await farm.startS3();
    if (ended.state !== JobState.JOB_STATE_FAILED)
      return { survived: false, detail: `ended ${jobStateToJSON(ended.state)}` };
    if (ended.errorStatus !== "UNAVAILABLE" || !/object store .* unreachable/.test(ended.error))
      return { survived: false, detail: `unclear reason: ${ended.errorStatus} ${ended.error}` };
    await sleep(1000);
    for (const q of ["denoise", "decode", "mux"]) {
      const s = await farm.bus.queues.stats(q);
      if (s.inFlight + s.waiting > 0)
        return { survived: false, detail: `queue ${q} still holds ${s.inFlight + s.waiting} tasks` };
    }
    return { survived: true, detail: `FAILED ${ended.errorStatus}: ${ended.error.slice(0, 80)}` };
  } finally {
    await farm.stop();
  }
}

const FLIP_FAULT =
  "a byte flipped on disk in section 0's stored history and decoded video mid-job: both recomputed (nodes without a cache)";

/**
 * A disk that corrupts stored bytes: mid-job, once section 0 is decoded, one byte of its history
 * and one of its decoded video are flipped in the S3 server's files. The mux finds the video
 * corrupt (its checksum), the decode recomputing it finds the history corrupt, and the denoise
 * recomputes that: the job must complete with the baseline's frames, and its record must show both
 * recomputations (else the corruption went unseen). Its own farm, whose nodes keep no cache of
 * decoded objects: a cache would answer from memory the objects its node wrote.
 */
async function flippedBytes(farm: FarmProcesses, baseline: Buffer, dir: string): Promise<Outcome> {
  const job = await farm.submit(await jobRequest());
  await atStep(farm, job.id, 1, 3);
  const keys = jobKeys(job.id);
  for (const end = Date.now() + 60_000; (await farm.store.head(keys.sectionVideo(0))) === null; await sleep(50))
    if (Date.now() > end) return { survived: false, detail: "section 0 was not decoded within 60 s" };
  await farm.flipStoredByte(keys.history(0));
  await farm.flipStoredByte(keys.sectionVideo(0));
  const outcome = await expectComplete(farm, job.id, baseline, dir);
  if (!outcome.survived) return outcome;
  const r = (await readJob(await farm.bus.kv(JOBS_BUCKET), job.id))!.record;
  const want = [`${job.id}.decode.0`, `${job.id}.denoise.0`];
  const got = r.recomputes ?? {};
  if (Object.keys(got).length !== want.length || want.some((t) => got[t] !== 1))
    return { survived: false, detail: `recomputations ${JSON.stringify(got)}: the flipped bytes went unseen` };
  return { survived: true, detail: `${outcome.detail}; ${want.join(" and ")} recomputed once each` };
}

/**
 * `runs` runs of one fault on one farm: each run's outcome counted into the fault's row (a harness error
 * is a run not survived) and printed as it ends.
 */
async function runFault(
  fault: string,
  runs: number,
  farm: FarmProcesses,
  attempt: (i: number) => Promise<Outcome>,
): Promise<Row> {
  const row: Row = { fault, runs: 0, survived: 0, lost: 0, corrupted: 0, seconds: 0, notes: [] };
  const t0 = Date.now();
  for (let i = 0; i < runs; i++) {
    const outcome = await attempt(i).catch((err: Error): Outcome => ({
      survived: false,
      detail: `harness: ${err.message}`,
    }));
    // One failure must not spoil the runs after it.
    if (!outcome.survived) await farm.heal(NODES);
    row.runs++;
    if (outcome.survived) row.survived++;
    else if (outcome.corrupted === true) row.corrupted++;
    else row.lost++;
    if (!outcome.survived) row.notes.push(outcome.detail);
    process.stdout.write(
      `  ${fault} #${i + 1}: ${outcome.survived ? "survived" : "NOT survived"} (${outcome.detail})\n`,
    );
  }
  row.seconds = (Date.now() - t0) / 1000;
  return row;
}

/** The faults on stored objects, on a farm whose nodes keep no cache: flipped bytes, deleted objects. */
async function storeFaults(dir: string, baseline: Buffer): Promise<Row[]> {
  type Kind = { fault: string; runs: number; attempt: (farm: FarmProcesses) => Promise<Outcome> };
  const all: Kind[] = [
    { fault: FLIP_FAULT, runs: RUNS, attempt: (farm) => flippedBytes(farm, baseline, dir) },
    {
      fault: DELETE_FAULT,
      runs: Math.min(RUNS, 5),
      attempt: (farm) =>
        deletedObjects(
          farm,
          baseline,
          dir,
          "section 1, section 0 decoded",
          (k) => [k.history(0), k.sectionVideo(0)],
          (id) => [`${id}.decode.0`, `${id}.denoise.0`],
        ),
    },
    {
      fault: DELETE_PROMPT_FAULT,
      runs: Math.min(RUNS, 5),
      attempt: (farm) =>
        deletedObjects(
          farm,
          baseline,
          dir,
          "section 0",
          (k) => [k.promptEmbeds],
          (id) => [`${id}.encode_text`],
        ),
    },
  ];
  const kinds = all.filter((k) => ONLY.test(k.fault));
  if (kinds.length === 0) return [];
  const settings: FarmSettings = { ackWaitMs: 2000, s3RetryMs: 30_000, nodeArgs: ["--cache-mb", "0"] };
  const farm = await FarmProcesses.start(path.join(dir, "no-cache"), settings, NODES);
  const rows: Row[] = [];
  try {
    for (const k of kinds) rows.push(await runFault(k.fault, k.runs, farm, () => k.attempt(farm)));
  } finally {
    await farm.stop();
  }
  return rows;
}

const DELETE_FAULT =
  "section 0's stored history and decoded video deleted from the store mid-job: both recomputed (nodes without a cache)";
const DELETE_PROMPT_FAULT =
  "the prompt's stored text embeddings deleted from the store during section 0: the text encode recomputed, section 1 waits for it (nodes without a cache)";

/**
 * Objects gone from the store (a lost disk, a stray delete): mid-job, objects the job still needs
 * are removed from the S3 server's files, which then answers NoSuchKey for them. The task that
 * reads one reports it lost, as it does a corrupt one, and its producer runs again: the job must
 * complete with the baseline's frames, and its record must show exactly the recomputations `want`
 * names, once each (else the loss went unseen, or was made good twice). `at`: the usual point
 * (step 3 of section 1) once section 0 is decoded, or step 3 of section 0 (for an object every
 * section reads: the next one must be the first to miss it, and on the tiny model a section takes
 * 0.1-0.3 s, too little to be sure of that from inside section 1).
 */
async function deletedObjects(
  farm: FarmProcesses,
  baseline: Buffer,
  dir: string,
  at: "section 1, section 0 decoded" | "section 0",
  remove: (keys: ReturnType<typeof jobKeys>) => string[],
  want: (jobId: string) => string[],
): Promise<Outcome> {
  const job = await farm.submit(await jobRequest());
  const keys = jobKeys(job.id);
  if (at === "section 0") await atStep(farm, job.id, 0, 3);
  else {
    await atStep(farm, job.id, 1, 3);
    for (const end = Date.now() + 60_000; (await farm.store.head(keys.sectionVideo(0))) === null; await sleep(50))
      if (Date.now() > end) return { survived: false, detail: "section 0 was not decoded within 60 s" };
  }
  for (const key of remove(keys)) await farm.deleteStoredObject(key);
  for (const key of remove(keys))
    if ((await farm.store.head(key)) !== null) return { survived: false, detail: `harness: ${key} still stored` };
  const outcome = await expectComplete(farm, job.id, baseline, dir);
  if (!outcome.survived) return outcome;
  const r = (await readJob(await farm.bus.kv(JOBS_BUCKET), job.id))!.record;
  const expected = want(job.id);
  const got = r.recomputes ?? {};
  if (Object.keys(got).length !== expected.length || expected.some((t) => got[t] !== 1))
    return {
      survived: false,
      detail: `recomputations ${JSON.stringify(got)}, not ${expected.map(short).join(" and ")}`,
    };
  const each = expected.length > 1 ? " each" : "";
  return { survived: true, detail: `${outcome.detail}; ${expected.map(short).join(" and ")} recomputed once${each}` };
}

const LEADER_FAULT = "leader of 2 coordinators SIGKILLed mid-job, the other takes over (lease 2 s)";
const LEASE_TTL_MS = 2000;

/**
 * Two coordinators on one farm: the job goes to the follower's API, the leader is SIGKILLed mid-job
 * (then started again, as the new follower). The job must complete with the baseline's frames, the
 * follower must hold the lease within a few seconds, and every task must reach its queue once: as
 * many messages stored as the job has tasks (two leaders queueing one attempt would store more).
 */
async function leaderKilled(farm: FarmProcesses, baseline: Buffer, dir: string): Promise<Outcome> {
  let leader = await farm.leaderIndex();
  for (const end = Date.now() + 3 * LEASE_TTL_MS + 2000; leader === undefined && Date.now() < end;)
    (await sleep(100), (leader = await farm.leaderIndex()));
  if (leader === undefined) return { survived: false, detail: "no coordinator holds the lease" };
  const follower = 1 - leader;
  farm.useCoordinator(follower);
  const storedBefore = await farm.storedTaskMessages();
  const job = await farm.submit(await jobRequest());
  await atStep(farm, job.id, 1, 3);
  await farm.killCoordinator(leader);
  const killedAt = Date.now();
  let now = await farm.leaderIndex();
  for (const end = killedAt + 4 * LEASE_TTL_MS; now !== follower && Date.now() < end;)
    (await sleep(50), (now = await farm.leaderIndex()));
  const takeoverMs = Date.now() - killedAt;
  if (now !== follower) return { survived: false, detail: `the follower did not take over within ${takeoverMs} ms` };
  await farm.startCoordinator(leader);
  const outcome = await expectComplete(farm, job.id, baseline, dir);
  if (!outcome.survived) return outcome;
  const tasks = (await readJob(await farm.bus.kv(JOBS_BUCKET), job.id))!.record.tasks.length;
  const stored = (await farm.storedTaskMessages()) - storedBefore;
  if (stored !== tasks) return { survived: false, detail: `${stored} task messages queued for ${tasks} tasks` };
  return { survived: true, detail: `${outcome.detail}; taken over in ${takeoverMs} ms; ${tasks} tasks queued once` };
}

async function leaderKills(dir: string, baseline: Buffer): Promise<Row> {
  const settings: FarmSettings = { ackWaitMs: 2000, s3RetryMs: 30_000, coordinators: 2, leaseTtlMs: LEASE_TTL_MS };
  const farm = await FarmProcesses.start(path.join(dir, "two-coordinators"), settings, NODES);
  try {
    return await runFault(LEADER_FAULT, RUNS, farm, () => leaderKilled(farm, baseline, dir));
  } finally {
    await farm.stop();
  }
}

const PARTITION_FAULT =
  "leader of 2 coordinators partitioned away mid-job (its network namespace's link cut), the other takes over (lease 2 s); link restored, the old leader rejoins as follower";

/** Waits (up to 3 TTLs and 2 s) for a coordinator to hold the lease; its index, or undefined. */
async function currentLeader(farm: FarmProcesses): Promise<number | undefined> {
  let leader = await farm.leaderIndex();
  for (const end = Date.now() + 3 * LEASE_TTL_MS + 2000; leader === undefined && Date.now() < end;)
    (await sleep(100), (leader = await farm.leaderIndex()));
  return leader;
}

/**
 * Two coordinators, each in a network namespace of its own (NetPartition): the job goes to the
 * follower's API and, at the usual point, the leader's link is cut: the process lives on, its
 * connections stall unanswered. Its lease lapses on its own clock; the follower must hold the lease
 * within 4 TTLs, the old leader must have said it stopped dispatching by then. The link is then
 * restored, so the old leader's stalled connections carry on (whatever it had sent into them
 * arrives late) while the new leader runs the job. Checked, besides the frames: every task queued
 * once (stage stream sequences, as for the SIGKILLed leader) and run once by the nodes, no result
 * recorded twice; the old leader rejoins (its API answers from the farm's state again, the job
 * SUCCEEDED) as a follower: it did not take the lease back, 2 TTLs after the job ended.
 */
async function leaderPartitioned(
  farm: FarmProcesses,
  net: NetPartition,
  baseline: Buffer,
  dir: string,
): Promise<Outcome> {
  const leader = await currentLeader(farm);
  if (leader === undefined) return { survived: false, detail: "no coordinator holds the lease" };
  const follower = 1 - leader;
  farm.useCoordinator(follower);
  const storedBefore = await farm.storedTaskMessages();
  const LOST = "leader lease lost: dispatching stopped";
  const ACQUIRED = "leader lease acquired: dispatching";
  const [lostBefore, acquiredBefore] = [farm.leaseLines(leader, LOST), farm.leaseLines(leader, ACQUIRED)];
  const job = await farm.submit(await jobRequest());
  await atStep(farm, job.id, 1, 3);
  await net.cut(leader);
  const cutAt = Date.now();
  let takeoverMs: number;
  let stepDownMs: number;
  try {
    let now = await farm.leaderIndex();
    for (const end = cutAt + 4 * LEASE_TTL_MS; now !== follower && Date.now() < end;)
      (await sleep(50), (now = await farm.leaderIndex()));
    if (now !== follower)
      return {
        survived: false,
        detail: `the follower did not take over within ${Date.now() - cutAt} ms${await farmState(farm, job.id)}`,
      };
    // The cut-off leader cannot be asked: its log says when it stopped (it was alive throughout).
    for (const end = cutAt + 4 * LEASE_TTL_MS; farm.leaseLines(leader, LOST) === lostBefore && Date.now() < end;)
      await sleep(50);
    if (farm.leaseLines(leader, LOST) === lostBefore)
      return {
        survived: false,
        detail: `the cut-off leader did not say it stopped dispatching within ${Date.now() - cutAt} ms`,
      };
    // When each said so (their log lines' times: one machine, one clock).
    stepDownMs = farm.leaseLineAt(leader, LOST)! - cutAt;
    takeoverMs = farm.leaseLineAt(follower, ACQUIRED)! - cutAt;
  } finally {
    await net.restore(leader);
  }
  const restoredAt = Date.now();
  const outcome = await expectComplete(farm, job.id, baseline, dir);
  if (!outcome.survived) return outcome;
  // Back: the old leader's API reads the job from the farm again.
  let rejoinMs: number | undefined;
  for (const end = restoredAt + 60_000; rejoinMs === undefined && Date.now() < end;) {
    const seen = await farm.get(job.id, 2000, leader).catch(() => undefined);
    if (seen?.state === JobState.JOB_STATE_SUCCEEDED) rejoinMs = Date.now() - restoredAt;
    else await sleep(200);
  }
  if (rejoinMs === undefined)
    return { survived: false, detail: `the old leader's API did not see the job SUCCEEDED within 60 s of the restore` };
  // As a follower: the lease stays with the new leader.
  await sleep(2 * LEASE_TTL_MS);
  const holder = await farm.leaderIndex();
  const retaken = farm.leaseLines(leader, ACQUIRED) - acquiredBefore;
  if (holder !== follower || retaken !== 0)
    return {
      survived: false,
      detail: `the lease is with ${holder === undefined ? "nobody" : `coordinator ${holder}`}; the old leader acquired it ${retaken} times since the cut`,
    };
  // Nothing dispatched by two leaders, nothing run or recorded twice.
  const record = (await readJob(await farm.bus.kv(JOBS_BUCKET), job.id))!.record;
  const tasks = record.tasks.length;
  const stored = (await farm.storedTaskMessages()) - storedBefore;
  const problems: string[] = [];
  if (stored !== tasks) problems.push(`${stored} task messages queued for ${tasks} tasks`);
  const log = farm.taskLog(job.id);
  for (const t of record.tasks) {
    const runs = log.get(t.id)?.get("task started") ?? 0;
    if (runs !== 1) problems.push(`${short(t.id)} run ${runs} times`);
    const ok = (record.taskLog ?? []).filter((e) => e.taskId === t.id && e.ok).length;
    if (ok !== 1) problems.push(`${short(t.id)}: ${ok} results recorded`);
  }
  if (problems.length > 0) return { survived: false, detail: `${outcome.detail}; ${problems.join(", ")}` };
  return {
    survived: true,
    detail:
      `${outcome.detail}; the cut-off leader stepped down ${stepDownMs} ms, the follower took over ${takeoverMs} ms ` +
      `after the cut; the old leader back ${rejoinMs} ms after the restore, as follower; ${tasks} tasks queued and run once`,
  };
}

/** The partition fault's farm: NATS and S3 on a service address, each coordinator in a namespace. */
async function leaderPartitions(dir: string, baseline: Buffer): Promise<Row[]> {
  const why = await netnsUnavailable();
  if (why !== undefined) {
    process.stdout.write(`note: cannot make network namespaces here (${why}): the partition fault is not run\n`);
    return [];
  }
  const net = await NetPartition.create(2);
  try {
    const settings: FarmSettings = {
      ackWaitMs: 2000,
      s3RetryMs: 30_000,
      coordinators: 2,
      leaseTtlMs: LEASE_TTL_MS,
      network: net,
    };
    const farm = await FarmProcesses.start(path.join(dir, "partitioned"), settings, NODES);
    try {
      return [await runFault(PARTITION_FAULT, RUNS, farm, () => leaderPartitioned(farm, net, baseline, dir))];
    } finally {
      await farm.stop();
    }
  } finally {
    await net.destroy();
  }
}

const CLUSTER_SERVER_FAULT =
  "clustered NATS (3 servers, R3): the server the denoise node or the coordinator (alternately) is connected to SIGKILLed mid-job, restarted";
const CLUSTER_LEADER_FAULT =
  "clustered NATS (3 servers, R3): the denoise queue stream's leader SIGKILLed mid-job, restarted";

/**
 * On a farm of its own whose NATS is a JetStream cluster of three servers, streams and KV with 3
 * replicas: one server is SIGKILLed at the usual point and started again 500 ms later (on its
 * ports and store folder). pick names the server and says why. Besides the frames: one job record
 * for the submission, each task's result recorded once and none failed, each task run once by the
 * nodes (their logs say; a second copy of a task done already is dropped, not run), and the
 * cluster whole again after.
 */
async function clusterServerKilled(
  farm: FarmProcesses,
  baseline: Buffer,
  dir: string,
  pick: () => Promise<{ index: number | undefined; why: string }>,
): Promise<Outcome> {
  const cluster = farm.natsCluster!;
  for (const stream of [streamOf("denoise"), `KV_${JOBS_BUCKET}`]) {
    const { replicas } = await farm.streamCluster(stream);
    if (replicas !== cluster.members.length)
      return { survived: false, detail: `harness: ${stream} has ${replicas} replicas, not ${cluster.members.length}` };
  }
  const requeued = async (): Promise<number> =>
    Number(
      /^framefarm_stranded_tasks_requeued_total\{queue="tasks"\} (\S+)$/m.exec(await farm.coordinatorMetrics(0))?.[1] ??
        0,
    );
  const storedBefore = await farm.storedTaskMessages();
  const requeuedBefore = await requeued();
  const jobs = await farm.bus.kv(JOBS_BUCKET);
  const jobsBefore = (await jobs.keys()).length;
  const job = await farm.submit(await jobRequest());
  await atStep(farm, job.id, 1, 3);
  const { index, why } = await pick();
  if (index === undefined) return { survived: false, detail: `harness: cannot find ${why}` };
  await cluster.kill(index);
  await sleep(500);
  await cluster.restart(index);
  const outcome = await expectComplete(farm, job.id, baseline, dir);
  await cluster.waitReady();
  if (!outcome.survived) {
    // What the farm was doing is in the detail already (expectComplete); which server was killed too.
    outcome.detail += `; killed ${cluster.members[index]!.name} (${why})`;
    return outcome;
  }
  const record = (await readJob(jobs, job.id))!.record;
  const what = `killed ${cluster.members[index]!.name} (${why})`;
  const problems: string[] = [];
  // No job lost or made twice: one submission, one record.
  const jobsAfter = (await jobs.keys()).length;
  if (jobsAfter !== jobsBefore + 1) problems.push(`${jobsAfter - jobsBefore} job records for one submission`);
  // Work committed once: one successful result recorded per task, and no attempt failed (a failover
  // is no reason for a task to fail, and a failed attempt is run again).
  for (const t of record.tasks) {
    const results = (record.taskLog ?? []).filter((e) => e.taskId === t.id);
    const ok = results.filter((e) => e.ok).length;
    if (ok !== 1) problems.push(`${short(t.id)}: ${ok} results recorded`);
    for (const e of results.filter((x) => !x.ok)) problems.push(`${short(t.id)} failed on ${e.node}`);
  }
  // What ran, from the processes' own logs. A task run twice whose first result the coordinator
  // took as done already is work done twice: a duplicate. A task run again after its message or
  // its recorded result was lost by the servers (the coordinator finds it in no queue and queues it
  // again; nats-server 2.9.10 can lose an acknowledged write when a server is killed) is the
  // recovery, and said so. A second copy of a task done already must be dropped, not run.
  const log = farm.taskLog(job.id);
  const said = (t: string, m: TaskLine): number => log.get(t)?.get(m) ?? 0;
  const rerun: string[] = [];
  for (const t of record.tasks) {
    const runs = said(t.id, "task started");
    if (runs === 0) problems.push(`${short(t.id)} not run by any node`);
    else if (runs > 1 && said(t.id, "result for a task done already: ignored") > 0)
      problems.push(`${short(t.id)} run ${runs} times, a result ignored as done already`);
    else if (runs > 1) rerun.push(`${short(t.id)} (${runs} runs; ${requeueWhy(log.get(t.id))})`);
  }
  const dropped = [...log.values()].reduce((n, m) => n + (m.get("task dropped: done already") ?? 0), 0);
  // For the record only: stream sequence numbers are no count of messages across a clustered
  // stream's leader change (runs have read one fewer than the tasks as well as one more).
  const again = (await requeued()) - requeuedBefore;
  const seqs = (await farm.storedTaskMessages()) - storedBefore;
  const info =
    (rerun.length === 0 ? `${record.tasks.length} tasks run once each` : `run again: ${rerun.join(", ")}`) +
    (dropped > 0 ? `; ${dropped} second ${dropped === 1 ? "copy" : "copies"} dropped as done` : "") +
    (again > 0 ? `; ${again} stranded or lost by the servers and queued again` : "") +
    `; stream sequences +${seqs}`;
  if (problems.length > 0) return { survived: false, detail: `${what}; ${outcome.detail}; ${problems.join(", ")}` };
  return { survived: true, detail: `${what}; ${outcome.detail}; ${info}` };
}

/** Why the coordinator queued a task again, from its log lines about it. */
function requeueWhy(lines: Map<TaskLine, number> | undefined): string {
  const why = [
    ["task queued but in no queue, twice: queued again", "found in no queue and queued again"],
    ["stranded task message queued again", "stranded by the server and queued again"],
    ["taking over: task queued again", "queued again on taking over"],
  ] as const;
  const found = why.filter(([m]) => (lines?.get(m) ?? 0) > 0).map(([, w]) => w);
  return found.length > 0 ? found.join(", ") : "handed out again by the queue";
}

/** A task id without its job id, for notes. */
const short = (taskId: string): string => taskId.slice(taskId.indexOf(".") + 1);

async function clusterFaults(dir: string, baseline: Buffer): Promise<Row[]> {
  type Pick = (farm: FarmProcesses, i: number) => Promise<{ index: number | undefined; why: string }>;
  const all: { fault: string; pick: Pick }[] = [
    {
      fault: CLUSTER_SERVER_FAULT,
      pick: async (farm, i) => {
        const client = i % 2 === 0 ? "node denoise-0" : "coordinator";
        return { index: await farm.natsCluster!.serverOf(client), why: `the server of "${client}"` };
      },
    },
    {
      fault: CLUSTER_LEADER_FAULT,
      pick: async (farm) => {
        const { leader } = await farm.streamCluster(streamOf("denoise"));
        return {
          index: leader === undefined ? undefined : farm.natsCluster!.indexOf(leader),
          why: "FF_Q_denoise's leader",
        };
      },
    },
  ];
  const kinds = all.filter((k) => ONLY.test(k.fault));
  if (kinds.length === 0) return [];
  const rows: Row[] = [];
  const settings: FarmSettings = { ackWaitMs: 2000, s3RetryMs: 30_000, natsCluster: 3 };
  const farm = await FarmProcesses.start(path.join(dir, "nats-cluster"), settings, NODES);
  try {
    for (const k of kinds)
      rows.push(
        await runFault(k.fault, RUNS, farm, (i) => clusterServerKilled(farm, baseline, dir, () => k.pick(farm, i))),
      );
  } finally {
    await farm.stop();
  }
  return rows;
}

/** A full disk is made with a small tmpfs under the S3 server: root and mount(8) are needed. */
async function canMountTmpfs(dir: string): Promise<boolean> {
  const probe = path.join(dir, "tmpfs-probe");
  await mkdir(probe, { recursive: true });
  try {
    await run("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", probe]);
    await run("umount", [probe]);
    return true;
  } catch {
    return false;
  }
}

async function main(): Promise<number> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-faults-"));
  const tmpfs = await canMountTmpfs(dir);
  if (!tmpfs) process.stdout.write("note: cannot mount a tmpfs here (not root?): the full-disk fault is not run\n");
  const settings: FarmSettings = { ackWaitMs: 2000, s3RetryMs: 30_000, ...(tmpfs ? { s3DiskMiB: 2048 } : {}) };
  const rows: Row[] = [];
  const farm = await FarmProcesses.start(path.join(dir, "farm"), settings, NODES);
  let baseline: Buffer | undefined;
  try {
    const first = await farm.submit(await jobRequest());
    const done = await untilEnded(farm, first.id);
    if (done.state !== JobState.JOB_STATE_SUCCEEDED)
      throw new Error(`the undisturbed run ended ${jobStateToJSON(done.state)}: ${done.error}`);
    baseline = await framesOf(farm, done);
    baselineJob = done;
    process.stdout.write(
      `baseline: job ${done.id}, ${done.width}x${done.height}, ${baseline.length} bytes of frames\n`,
    );
    for (const s of scenarios.filter((x) => (x.needs !== "tmpfs" || tmpfs) && ONLY.test(x.fault)))
      rows.push(await runFault(s.fault, s.runs, farm, () => s.scenario(farm, baseline!, dir)));
  } finally {
    await farm.stop();
  }
  // Its own farm: two coordinators; the undisturbed run's frames are the reference still.
  if (ONLY.test(LEADER_FAULT)) rows.push(await leaderKills(dir, baseline));
  // Its own farm too: two coordinators, each in a network namespace.
  if (ONLY.test(PARTITION_FAULT)) rows.push(...(await leaderPartitions(dir, baseline)));
  // Its own farm too: nodes without a cache.
  rows.push(...(await storeFaults(dir, baseline)));
  // Its own farm too: NATS as a 3-server JetStream cluster.
  rows.push(...(await clusterFaults(dir, baseline)));
  const longFault = "object store down past the retry limit (1 s): job FAILED with the reason";
  if (ONLY.test(longFault)) {
    const t0 = Date.now();
    const outcome = await longOutage(dir).catch((err: Error): Outcome => ({
      survived: false,
      detail: `harness: ${err.message}`,
    }));
    process.stdout.write(
      `  object store down past the retry limit #1: ${outcome.survived ? "survived" : "NOT survived"} (${outcome.detail})\n`,
    );
    rows.push({
      fault: longFault,
      runs: 1,
      survived: outcome.survived ? 1 : 0,
      lost: outcome.survived ? 0 : 1,
      corrupted: 0,
      seconds: (Date.now() - t0) / 1000,
      notes: outcome.survived ? [] : [outcome.detail],
    });
  }
  await rm(dir, { recursive: true, force: true });

  const total = rows.reduce((n, r) => n + r.runs, 0);
  const survived = rows.reduce((n, r) => n + r.survived, 0);
  const lost = rows.reduce((n, r) => n + r.lost, 0);
  const corrupted = rows.reduce((n, r) => n + r.corrupted, 0);
  process.stdout.write(
    `\nMachine: ${os.cpus()[0]?.model ?? "unknown CPU"}, ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}\n\n`,
  );
  process.stdout.write("| fault | runs | survived | lost | corrupted | seconds |\n|---|---|---|---|---|---|\n");
  for (const r of rows)
    process.stdout.write(
      `| ${r.fault} | ${r.runs} | ${r.survived} | ${r.lost} | ${r.corrupted} | ${r.seconds.toFixed(1)} |\n`,
    );
  for (const r of rows) for (const n of r.notes) process.stdout.write(`- ${r.fault}: ${n}\n`);
  process.stdout.write(`\nfaults: ${total} injected, ${survived} survived, ${lost + corrupted} lost\n`);
  return survived === total ? 0 : 1;
}

process.exitCode = await main();
