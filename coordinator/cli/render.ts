/**
 * `framefarm render`: one video in embedded mode: this process is a whole farm (in-process bus,
 * local object store, dispatcher and one node for every stage), the same code a cluster runs.
 */
import { mkdir, mkdtemp, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { monitorEventLoopDelay, type IntervalHistogram } from "node:perf_hooks";
import { FarmError, type StatusName } from "../../shared/errors.js";
import { validateMp4Options } from "../../shared/video/mp4.js";
import { openNodeModels } from "../../gpu-node/main.js";
import { decodeConcurrencyFor } from "../../gpu-node/worker/node-loop.js";
import { decodedTileCacheBytes } from "../../gpu-node/stages/decode-latents.js";
import { defaultCacheMb } from "../../gpu-node/worker/tensor-cache.js";
import { warmUp, warmUpJobOf, type WarmUpResult } from "../../gpu-node/stages/warm-up.js";
import { startEmbeddedFarm, type EmbeddedFarm } from "./embedded/embedded-farm.js";
import { createProgress } from "./progress.js";
import { defaultBundleDir } from "./defaults.js";
import { RENDER_OPTIONS, SAMPLING_HELP, VIDEO_HELP, submitRequestFrom } from "./job-request.js";
import { writeFileAtomically } from "./output-file.js";
import type { JobRecord } from "../dispatch/job-record.js";
import type { JobSpec } from "../../shared/job/job-spec.js";
import { jobOutputKeys } from "../planner/job-outputs.js";
import { OUTPUT_HELP, OUTPUT_OPTIONS, applyOutputOptions, saveJobOutputs } from "./output-options.js";
import { TRACING_HELP, TRACING_OPTIONS, startProcessTracing } from "./farm-options.js";
import { createLogger } from "../../shared/log/logger.js";
import { VAE_TILING_ENV, vaeTilingFromEnv } from "../../shared/job/vae-tiling-env.js";

const HELP = `framefarm render — render one video in this process

  --image FILE            start image (any format sharp reads)   [this or --video required]
${VIDEO_HELP}
  --end-image FILE        end image (inverted mode only)
  --keyframe TIME:FILE    an image the video passes through at TIME seconds (repeat, in time
                          order, one per section; inverted mode only): FramePack-eichi's
                          section keyframes
  --lora FILE[:WEIGHT]    a LoRA (.safetensors: diffusers/PEFT or musubi-tuner/kohya keys) fused
                          into the transformer with this weight (1); repeat for several
  --prompt TEXT                                                            [required]
  --negative-prompt TEXT  used with --cfg > 1 (true CFG)
  --seconds S | --frames N  video length                                   [one required]
  --mode inverted|vanilla  sampling type (default: the bundle's)
  --steps N               denoising steps per section (25)
  --guidance G            distilled guidance scale (10)
  --cfg C                 true CFG scale (1 = off)
  --seed N                torch-compatible seed (31337)
  --window N              latent window size (bundle default, 9)
  --resolution R          bucket resolution, multiple of 16 (640)
  --height H --width W    exact size instead of a bucket
  --fps F                 output frame rate (30; with --video, the video's)
  --crf C                 x264 quality, 0..51 (16)
  --lossless              exact RGB frames (libx264rgb, qp 0) instead of --crf
${SAMPLING_HELP}
                          (render only: ${VAE_TILING_ENV}=1 makes it the default)
  --bundle DIR            model bundle (default: the tiny test bundle)
  --ep cpu|webgpu|cuda    execution provider (cpu)
  --warmup auto|on|off    run every model once at the job's shapes before the job starts
                          (auto: on for cuda and webgpu, whose first run at a new shape is
                          slow: cuDNN's algorithm search, lazy kernel loading; off for cpu)
  --timings FILE          load every model first, then write the job's wall time and each task's
                          time (JSON) with its phases (denoise: steps, transformer_run; decode:
                          vae, vae_run, write, preview; mux: blend, encode; *_run is the
                          model's own time): what the GPU benchmark compares with diffusers
${OUTPUT_HELP}
${TRACING_HELP}
  -o, --output FILE       output video (its recipe goes to FILE's name .recipe.json) [required]`;

/** Each task's wall time and time inside onnxruntime, from the job's task log. */
async function writeTimings(
  file: string,
  record: JobRecord,
  loadMs: number,
  warmed: WarmUpResult | undefined,
  jobMs: number,
  loopDelay: IntervalHistogram,
): Promise<void> {
  // Start times relative to the job's creation show the gaps between tasks (queueing, dispatch).
  const created = Date.parse(record.createdAt);
  const tasks = (record.taskLog ?? []).map((e) => ({
    task: e.taskId,
    startMs: Date.parse(e.startedAt) - created,
    ms: Date.parse(e.finishedAt) - Date.parse(e.startedAt),
    modelMs: Math.round(e.modelMs * 10) / 10,
    ...(e.phases !== undefined ? { phases: e.phases } : {}),
  }));
  const round = (ms: number): number => Math.round(ms * 10) / 10;
  const result = {
    side: "framefarm",
    loadMs: Math.round(loadMs),
    ...(warmed !== undefined
      ? {
          warmupMs: Math.round(warmed.ms),
          warmup: Object.fromEntries(Object.entries(warmed.components).map(([k, v]) => [k, round(v)])),
        }
      : {}),
    jobMs: Math.round(jobMs),
    // How long work waited for the event loop during the job (the loop also feeds the GPU its steps).
    eventLoopDelayMs: {
      mean: round(loopDelay.mean / 1e6),
      p99: round(loopDelay.percentile(99) / 1e6),
      max: round(loopDelay.max / 1e6),
    },
    tasks,
  };
  await writeFileAtomically(path.resolve(file), Buffer.from(`${JSON.stringify(result, null, 1)}\n`));
}

/**
 * --vae-tiling, or when absent FRAMEFARM_VAE_TILING=1: the one place the old environment switch
 * still counts, since this process is the whole farm and the job (so its recipe) carries the
 * choice. With --recipe the recipe decides (undefined: the flag is not given).
 */
export function renderVaeTiling(
  values: { "vae-tiling"?: boolean | undefined; recipe?: string | undefined },
  env: NodeJS.ProcessEnv = process.env,
): boolean | undefined {
  if (values["vae-tiling"] !== undefined || values.recipe !== undefined) return values["vae-tiling"];
  return vaeTilingFromEnv(env) ? true : undefined;
}

export async function renderCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: {
      ...RENDER_OPTIONS,
      ...OUTPUT_OPTIONS,
      bundle: { type: "string" },
      ep: { type: "string" },
      timings: { type: "string" },
      warmup: { type: "string" },
      output: { type: "string", short: "o" },
      help: { type: "boolean", short: "h" },
      ...TRACING_OPTIONS,
    },
  });
  if (values.help === true) {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  if (values.image === undefined && values.video === undefined)
    throw new FarmError("INVALID_ARGUMENT", "--image (or --video, to extend a video) is required");
  if (values.output === undefined) throw new FarmError("INVALID_ARGUMENT", "-o/--output is required");
  const output = path.resolve(values.output);
  const outStat = await stat(output).catch(() => null);
  if (outStat?.isDirectory() === true)
    throw new FarmError("INVALID_ARGUMENT", `output ${output} is a directory; give a file name`);

  values["vae-tiling"] = renderVaeTiling(values);
  const ep = values.ep ?? "cpu";
  const warmup = values.warmup ?? "auto";
  if (warmup !== "auto" && warmup !== "on" && warmup !== "off")
    throw new FarmError("INVALID_ARGUMENT", `--warmup must be auto, on or off, got ${JSON.stringify(warmup)}`);
  // cuda and webgpu pay over a second per model and new shape on a first run (cuDNN's algorithm
  // search, lazy kernel loading); the CPU provider pays nothing worth a run.
  const warm = warmup === "on" || (warmup === "auto" && ep !== "cpu");
  // The same spans as a farm's, from one process.
  const tracing = await startProcessTracing(
    "framefarm-render",
    values["otlp-endpoint"],
    `${os.hostname()}:${process.pid}`,
    createLogger("render"),
  );
  const embedded = await openNodeModels(values.bundle ?? defaultBundleDir(), ep);
  const data = await mkdtemp(path.join(os.tmpdir(), "framefarm-render-"));
  let farm: EmbeddedFarm | undefined;
  try {
    const req = await applyOutputOptions(await submitRequestFrom(values), values, output);
    // Checked before any work, so a bad fps or crf does not fail only at the very end.
    validateMp4Options({ fps: req.settings?.fps ?? 30, crf: req.settings?.crf ?? 16 });
    let loadMs = 0;
    if (values.timings !== undefined || warm) {
      // Sessions are created before the clock starts, as a farm node warms its models at start.
      const started = performance.now();
      await embedded.runtime.warm();
      loadMs = performance.now() - started;
    }
    let warmed: WarmUpResult | undefined;
    // The job clock starts once the models are warm: warm-up runs inside submit, once the job's
    // size is known (the image's bucket, a recipe's settings) and before it is dispatched.
    let submitted = 0;
    const beforeDispatch = async (spec: JobSpec): Promise<void> => {
      warmed = await warmUp(embedded.runtime, embedded.tokenizers, warmUpJobOf(spec));
      process.stderr.write(`warmed up for ${spec.width}x${spec.height} in ${(warmed.ms / 1000).toFixed(1)} s\n`);
      submitted = performance.now();
    };
    decodedTileCacheBytes(); // refused before the job, not at its first decode
    farm = await startEmbeddedFarm(embedded, data, {
      ...(warm ? { beforeDispatch } : {}),
      decodeConcurrency: decodeConcurrencyFor(values.ep ?? "cpu"),
      cacheBytes: defaultCacheMb(values.ep ?? "cpu") * 2 ** 20,
    });
    submitted = performance.now();
    const loopDelay = monitorEventLoopDelay({ resolution: 10 });
    loopDelay.enable();
    const { job } = await farm.service.submit(req);
    const progress = createProgress();
    progress.stage(`rendering ${job.numFrames} frames at ${job.width}x${job.height}`);
    const record = await farm.waitFor(job.id, progress).finally(() => {
      progress.stop();
      loopDelay.disable();
    });
    if (record.state !== "SUCCEEDED")
      throw new FarmError(
        (record.errorStatus ?? "INTERNAL") as StatusName,
        record.error ?? `the render ended ${record.state}`,
      );
    await mkdir(path.dirname(output), { recursive: true });
    const keys = jobOutputKeys(job.id, record.tasks);
    const store = farm.store;
    const get = (key: string | undefined) => (key === undefined ? null : () => store.get(key));
    const written = await saveJobOutputs(
      { video: () => store.get(keys.video), recipe: get(keys.recipe), frames: get(keys.frames) },
      output,
      values["save-frames"],
    );
    if (values.timings !== undefined)
      await writeTimings(values.timings, record, loadMs, warmed, performance.now() - submitted, loopDelay);
    process.stderr.write(
      `wrote ${written.join(", ")}: ${job.numFrames} frames requested, ${job.width}x${job.height}, ${record.spec.params.fps} fps\n`,
    );
    return 0;
  } finally {
    await farm?.stop();
    await embedded.close();
    await rm(data, { recursive: true, force: true });
    await tracing.shutdown();
  }
}
