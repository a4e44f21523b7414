/**
 * Client commands against a farm's gRPC API: `submit` (optionally waiting with a progress bar and
 * downloading the video, its recipe and, when asked, its frames), `jobs` and `cancel`.
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import type { ServiceError } from "@grpc/grpc-js";
import { FarmError, type StatusName } from "../../shared/errors.js";
import { JobState, jobStateToJSON, type Job, type WatchJobResponse } from "../../proto/gen/framefarm/v1/jobs.js";
import { createProgress } from "./progress.js";
import { RENDER_OPTIONS, submitRequestFrom } from "./job-request.js";
import { CLIENT_OPTIONS, connectJobService as client, fromGrpc } from "./client.js";
import { OUTPUT_OPTIONS, applyOutputOptions, saveJobOutputs } from "./output-options.js";

const call = <T>(fn: (cb: (err: ServiceError | null, res: T) => void) => void): Promise<T> =>
  new Promise((resolve, reject) => fn((err, res) => (err ? reject(fromGrpc(err)) : resolve(res))));

/** A finished job's video by its URL: presigned HTTP(S) on S3, file: on a local store. */
export async function fetchVideo(url: string): Promise<Uint8Array> {
  try {
    if (url.startsWith("file:")) return new Uint8Array(await readFile(fileURLToPath(url)));
    const res = await fetch(url);
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    return new Uint8Array(await res.arrayBuffer());
  } catch (err) {
    throw new FarmError("UNAVAILABLE", `cannot download the video from ${url}: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

export async function submitCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      ...RENDER_OPTIONS,
      ...CLIENT_OPTIONS,
      ...OUTPUT_OPTIONS,
      wait: { type: "boolean" },
      output: { type: "string", short: "o" },
      "idempotency-key": { type: "string" },
      priority: { type: "string" },
    },
  });
  if (values.output !== undefined && values.wait !== true) throw new FarmError("INVALID_ARGUMENT", "-o needs --wait");
  if (values["save-frames"] !== undefined && values.output === undefined)
    throw new FarmError("INVALID_ARGUMENT", "--save-frames needs --wait and -o");
  const c = client(values);
  try {
    const req = await applyOutputOptions(
      await submitRequestFrom(values, { priority: values.priority, idempotencyKey: values["idempotency-key"] }),
      values,
      values.output,
    );
    const { job, deduplicated } = await call<{ job?: Job; deduplicated: boolean }>((cb) => c.submitJob(req, cb));
    process.stdout.write(`${job!.id}${deduplicated ? " (already submitted)" : ""}\n`);
    if (values.wait !== true) return 0;

    const progress = createProgress();
    const final = await new Promise<Job>((resolve, reject) => {
      let last: Job | undefined;
      let started = false;
      const stream = c.watchJob({ id: job!.id });
      stream.on("data", (e: WatchJobResponse) => {
        last = e.job;
        const p = e.job?.progress;
        if (p === undefined) return;
        if (!started) {
          progress.start(p.sectionsTotal, p.stepsPerSection);
          started = true;
        }
        progress.step(p.currentSection, p.currentSection < p.sectionsDone ? p.stepsPerSection : p.currentStep);
      });
      stream.on("end", () =>
        last === undefined ? reject(new FarmError("UNAVAILABLE", "watch ended without news")) : resolve(last),
      );
      stream.on("error", (err) => reject(fromGrpc(err)));
    }).finally(() => progress.stop());
    if (final.state !== JobState.JOB_STATE_SUCCEEDED) {
      throw new FarmError(
        (final.errorStatus || "INTERNAL") as StatusName,
        `job ${final.id} ended ${jobStateToJSON(final.state)}${final.error ? `: ${final.error}` : ""}`,
      );
    }
    const done = (await call<{ job?: Job }>((cb) => c.getJob({ id: final.id }, cb))).job!;
    if (values.output !== undefined) {
      const url = (u: string) => (u === "" ? null : () => fetchVideo(u));
      const written = await saveJobOutputs(
        { video: () => fetchVideo(done.videoUrl), recipe: url(done.recipeUrl), frames: url(done.framesUrl) },
        path.resolve(values.output),
        values["save-frames"],
      );
      process.stderr.write(
        `wrote ${written.join(", ")}: ${done.numFrames} frames requested, ${done.width}x${done.height}\n`,
      );
    } else process.stdout.write(`${done.videoUrl}\n`);
    return 0;
  } finally {
    c.close();
  }
}

export async function jobsCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, strict: true, options: CLIENT_OPTIONS });
  const c = client(values);
  try {
    const { jobs } = await call<{ jobs: Job[] }>((cb) => c.listJobs({ states: [], pageSize: 500, pageToken: "" }, cb));
    for (const j of jobs) {
      const p = j.progress;
      process.stdout.write(
        `${j.id}  ${jobStateToJSON(j.state).replace("JOB_STATE_", "").padEnd(9)}  sections ${p?.sectionsDone ?? 0}/${p?.sectionsTotal ?? 0}  ${j.width}x${j.height}  ${j.error}\n`,
      );
    }
    return 0;
  } finally {
    c.close();
  }
}

export async function cancelCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, strict: true, allowPositionals: true, options: CLIENT_OPTIONS });
  if (positionals.length !== 1) throw new FarmError("INVALID_ARGUMENT", "give one job id: framefarm cancel ID");
  const c = client(values);
  try {
    const { job } = await call<{ job?: Job }>((cb) => c.cancelJob({ id: positionals[0]! }, cb));
    process.stdout.write(`${job!.id} ${jobStateToJSON(job!.state).replace("JOB_STATE_", "")}\n`);
    return 0;
  } finally {
    c.close();
  }
}
