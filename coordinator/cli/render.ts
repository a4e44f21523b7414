/**
 * `framefarm render`: one video in embedded mode (this process runs every stage).
 */
import { mkdir, stat } from "node:fs/promises";
import path from "node:path";
import { parseArgs } from "node:util";
import { FarmError } from "../../shared/errors.js";
import { validateRenderParams } from "../../shared/job/render-params.js";
import { validateMp4Options, writeMp4 } from "../../shared/video/mp4.js";
import { openEmbedded } from "../embedded/open.js";
import { pixelsFor, readImageFile, renderSize } from "../embedded/inputs.js";
import { renderJob } from "../embedded/render-job.js";
import { createProgress } from "./progress.js";
import { defaultBundleDir } from "./defaults.js";

const HELP = `framefarm render — render one video in this process

  --image FILE            start image (any format sharp reads)             [required]
  --end-image FILE        end image (inverted mode only)
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
  --fps F                 output frame rate (30)
  --crf C                 x264 quality, 0..51 (16)
  --lossless              exact RGB frames (libx264rgb, qp 0) instead of --crf
  --bundle DIR            model bundle (default: the tiny test bundle)
  --ep cpu|webgpu|cuda    execution provider (cpu)
  -o, --output FILE       output MP4                                        [required]`;

/** The video settings, shared with `framefarm submit`. */
export const RENDER_OPTIONS = {
  image: { type: "string" },
  "end-image": { type: "string" },
  prompt: { type: "string" },
  "negative-prompt": { type: "string" },
  seconds: { type: "string" },
  frames: { type: "string" },
  mode: { type: "string" },
  steps: { type: "string" },
  guidance: { type: "string" },
  cfg: { type: "string" },
  seed: { type: "string" },
  window: { type: "string" },
  resolution: { type: "string" },
  height: { type: "string" },
  width: { type: "string" },
  fps: { type: "string" },
  crf: { type: "string" },
  lossless: { type: "boolean" },
} as const;

export async function renderCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: { ...RENDER_OPTIONS, bundle: { type: "string" }, ep: { type: "string" }, output: { type: "string", short: "o" }, help: { type: "boolean", short: "h" } },
  });
  if (values.help === true) {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  if (values.image === undefined) throw new FarmError("INVALID_ARGUMENT", "--image is required");
  if (values.output === undefined) throw new FarmError("INVALID_ARGUMENT", "-o/--output is required");
  const output = path.resolve(values.output);
  const outStat = await stat(output).catch(() => null);
  if (outStat?.isDirectory() === true) throw new FarmError("INVALID_ARGUMENT", `output ${output} is a directory; give a file name`);

  const embedded = await openEmbedded(values.bundle ?? defaultBundleDir(), values.ep ?? "cpu");
  try {
    const manifest = embedded.runtime.bundle.manifest;
    const params = validateRenderParams(
      {
        prompt: values.prompt,
        negativePrompt: values["negative-prompt"],
        seconds: values.seconds,
        numFrames: values.frames,
        samplingType: values.mode,
        steps: values.steps,
        guidanceScale: values.guidance,
        trueCfgScale: values.cfg,
        seed: values.seed,
        latentWindowSize: values.window,
        resolution: values.resolution,
        height: values.height,
        width: values.width,
        fps: values.fps,
        crf: values.crf,
        lossless: values.lossless === true,
        hasEndImage: values["end-image"] !== undefined,
      },
      { samplingType: manifest.sampling_type, latentWindowSize: manifest.framepack.default_latent_window_size },
    );
    validateMp4Options(params);
    const first = await readImageFile(values.image, "image");
    const last = values["end-image"] !== undefined ? await readImageFile(values["end-image"], "end image") : null;
    const size = renderSize(params, first);

    const progress = createProgress();
    progress.stage(`rendering ${params.numFrames} frames at ${size.width}x${size.height} (${params.samplingType}, ${params.steps} steps)`);
    const frames = await renderJob(
      embedded,
      { params, firstPixels: await pixelsFor(first, size), lastPixels: last === null ? null : await pixelsFor(last, size) },
      {
        onPlan: (n, m) => progress.start(n, m),
        onStep: (section, step) => progress.step(section, step),
        onStage: (label) => progress.stage(label),
      },
    ).finally(() => progress.stop());

    await mkdir(path.dirname(output), { recursive: true });
    await writeMp4(frames, output, params);
    process.stderr.write(`wrote ${output}: ${frames.shape[0]} frames, ${size.width}x${size.height}, ${params.fps} fps\n`);
    return 0;
  } finally {
    await embedded.close();
  }
}
