/**
 * Warm-up covers exactly what a job runs: every (model, input shapes and dtypes) pair a real
 * render of the tiny bundle feeds its sessions is one warm-up ran, and warm-up runs nothing else,
 * for both sampling types, the demo's sampler, true CFG and an end image; the decoder tile shapes
 * come from the tiling code itself, spatial tiling included: a job asking for VAE tiling is warmed
 * at its tiles, and a node's sizes at both decodes unless `WxH:tiled` or `:untiled` names one.
 * `render --warmup on` writes the same bytes as `--warmup off` and reports its warm-up time.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, readFile, rm } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { openNodeModels, parseWarmupSizes, warmUpNode, type NodeModels } from "../../gpu-node/main.js";
import type { OnnxModel } from "../../gpu-node/runtime/onnx-model.js";
import { renderJob } from "../../gpu-node/stages/render-job.js";
import { decodeVideo } from "../../gpu-node/stages/decode-latents.js";
import { decoderTileShapes, warmUp, warmUpJobsForSize, type WarmUpJob } from "../../gpu-node/stages/warm-up.js";
import { Tensor } from "../../shared/tensor/tensor.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { validateRenderParams, type RenderParamsInput } from "../../shared/job/render-params.js";
import { cliPath, repoRoot, testOutputDir, tinyBundleDir } from "../support/paths.js";

let models: NodeModels;
/** "component input:dtype[shape] ..." of every session run since the last reset. */
let calls: Set<string>;

before(async () => {
  models = await openNodeModels(tinyBundleDir(), "cpu");
  calls = new Set();
  const runtime = models.runtime;
  const load = runtime.model.bind(runtime);
  // Every session run goes through model() and runTimed() (run() calls it): record each run's
  // inputs, then run it.
  runtime.model = async (name) => {
    const m = await load(name);
    return Object.assign(Object.create(m) as OnnxModel, {
      runTimed: (...args: Parameters<OnnxModel["runTimed"]>) => {
        const feeds = args[0];
        const sig = Object.keys(feeds)
          .sort()
          .map((k) => {
            const f = feeds[k]!;
            return "dtype" in f ? `${k}:${f.dtype}[${f.shape.join(",")}]` : `${k}:${f.type}[${f.dims.join(",")}]`;
          })
          .join(" ");
        calls.add(`${name} ${sig}`);
        return m.runTimed(...args);
      },
    });
  };
});
after(() => models.close());

const sorted = (s: Set<string>): string[] => [...s].sort();

const [H, W] = [64, 96];
const CASES: Record<string, RenderParamsInput> = {
  // 3 sections of window 3: decodes of 3, 6 and 7 latent frames, tiled as 5+3 and 5+4+1.
  "inverted, end image, true CFG": {
    numFrames: 27,
    samplingType: "inverted",
    hasEndImage: true,
    negativePrompt: "blur",
    trueCfgScale: 2,
  },
  vanilla: { numFrames: 27, samplingType: "vanilla" },
  "unipc (the demo's section count)": { numFrames: 30, sampler: "unipc", trueCfgScale: 1.5 },
  "one inverted section": { numFrames: 5 },
};

for (const [name, input] of Object.entries(CASES)) {
  test(`warm-up runs exactly the models and shapes a render runs: ${name}`, async () => {
    const params = validateRenderParams(
      { prompt: "a cat", steps: 1, latentWindowSize: 3, height: H, width: W, ...input },
      { samplingType: "inverted_anti_drifting", latentWindowSize: 9 },
    );
    const pixels = Tensor.zeros([1, 3, H, W]);
    calls.clear();
    await renderJob(models, { params, firstPixels: pixels, lastPixels: params.hasEndImage ? pixels : null });
    const rendered = new Set(calls);
    calls.clear();
    const job: WarmUpJob = { height: H, width: W, ...params };
    const r = await warmUp(models.runtime, models.tokenizers, job, { spatialTiling: false });
    assert.deepEqual(sorted(calls), sorted(rendered));
    // Once per distinct shape set: as many runs as distinct pairs.
    const runs = Object.values(r.runs).reduce((a, b) => a + b, 0);
    assert.equal(runs, calls.size);
    assert.equal(r.runs.transformer, 1, "every section of a job packs the same transformer shapes");
    assert.ok(r.ms >= 0 && Object.keys(r.components).length === 6);
  });
}

test("warm-up of jobs extending a video runs the encoder tiles, contexts and decodes their renders run", async () => {
  const bytes = await readFile(
    path.join(repoRoot(), "test", "fixtures", "reference-cases", "video_extend_vanilla_video.mp4"),
  );
  const { inspectVideo } = await import("../../shared/video/video-input.js");
  const inputVideo = await inspectVideo(bytes);
  const modes: RenderParamsInput[] = [
    { samplingType: "vanilla", contextFrames: 3 },
    { samplingType: "inverted", hasEndImage: true, contextFrames: 4, numFrames: 40 },
  ];
  for (const mode of modes) {
    const params = validateRenderParams(
      { prompt: "a cat", steps: 1, latentWindowSize: 5, height: H, width: W, numFrames: 20, inputVideo, ...mode },
      { samplingType: "inverted_anti_drifting", latentWindowSize: 9 },
    );
    const pixels = Tensor.zeros([1, 3, H, W]);
    calls.clear();
    await renderJob(models, {
      params,
      firstPixels: null,
      lastPixels: params.hasEndImage ? pixels : null,
      video: bytes,
    });
    const rendered = new Set(calls);
    calls.clear();
    const job: WarmUpJob = { height: H, width: W, ...params };
    await warmUp(models.runtime, models.tokenizers, job, { spatialTiling: false });
    assert.deepEqual(sorted(calls), sorted(rendered), JSON.stringify(mode));
    assert.ok([...calls].some((c) => c.startsWith("vae_encoder sample:float32[1,3,17,")));
  }
});

test("warm-up of a TeaCache job runs the step caches' three graphs as its render does, not the single one", async () => {
  // Threshold 1: the middle calls of each section reuse the residual (skip), the first and last compute.
  const params = validateRenderParams(
    {
      prompt: "a cat",
      steps: 4,
      latentWindowSize: 3,
      height: H,
      width: W,
      numFrames: 30,
      sampler: "unipc",
      cache: "teacache",
      cacheThreshold: 1,
    },
    { samplingType: "inverted_anti_drifting", latentWindowSize: 9 },
  );
  const pixels = Tensor.zeros([1, 3, H, W]);
  calls.clear();
  await renderJob(models, { params, firstPixels: pixels, lastPixels: null });
  const rendered = new Set(calls);
  calls.clear();
  const job: WarmUpJob = { height: H, width: W, ...params };
  const r = await warmUp(models.runtime, models.tokenizers, job, { spatialTiling: false });
  assert.deepEqual(sorted(calls), sorted(rendered));
  assert.deepEqual(
    [r.runs.transformer, r.runs.transformer_residual, r.runs.transformer_skip, r.runs.transformer_change],
    [undefined, 1, 1, 1],
  );
});

test("warm-up of a job with VAE tiling above 256 px runs exactly the tiled shapes its render runs", async () => {
  // 272 px wide: 34 latents, two spatial tiles (32 and 10 latents wide) per decode call.
  const [h, w] = [64, 272];
  const input = { prompt: "a cat", steps: 1, latentWindowSize: 3, height: h, width: w, numFrames: 9 };
  const defaults = { samplingType: "inverted_anti_drifting" as const, latentWindowSize: 9 };
  const decoderCalls = (): string[] => sorted(calls).filter((c) => c.startsWith("vae_decoder "));
  const pixels = Tensor.zeros([1, 3, h, w]);
  const shapes: Record<string, string[]> = {};
  for (const vaeTiling of [false, true]) {
    const params = validateRenderParams({ ...input, vaeTiling }, defaults);
    calls.clear();
    await renderJob(models, { params, firstPixels: pixels, lastPixels: null });
    const rendered = new Set(calls);
    calls.clear();
    // No tiling override: the job's own setting decides the decoder's shapes.
    await warmUp(models.runtime, models.tokenizers, { height: h, width: w, ...params });
    assert.deepEqual(sorted(calls), sorted(rendered), `vaeTiling ${vaeTiling}`);
    shapes[String(vaeTiling)] = decoderCalls();
  }
  assert.ok(
    shapes["true"]!.every((c) => /,32\]$|,10\]$/.test(c)),
    `tiles of 32 and 10 latents: ${shapes["true"]!.join(" ")}`,
  );
  assert.ok(
    shapes["false"]!.every((c) => /,34\]$/.test(c)),
    `whole 34-latent rows: ${shapes["false"]!.join(" ")}`,
  );
});

test("warm-up of a job extending a video with VAE tiling runs its untiled encoder tiles and tiled decodes", async () => {
  // 272 px wide: the video's frames are encoded whole (tiling is the decode's), decoded in tiles of
  // 32 and 10 latents, the join's decode (the input's last window with the first section) too.
  const [h, w] = [64, 272];
  const bytes = await readFile(
    path.join(repoRoot(), "test", "fixtures", "reference-cases", "video_extend_vanilla_video.mp4"),
  );
  const { inspectVideo } = await import("../../shared/video/video-input.js");
  const params = validateRenderParams(
    {
      prompt: "a cat",
      steps: 1,
      latentWindowSize: 5,
      height: h,
      width: w,
      numFrames: 20,
      samplingType: "vanilla",
      contextFrames: 3,
      inputVideo: await inspectVideo(bytes),
      vaeTiling: true,
    },
    { samplingType: "inverted_anti_drifting", latentWindowSize: 9 },
  );
  calls.clear();
  await renderJob(models, { params, firstPixels: null, lastPixels: null, video: bytes });
  const rendered = new Set(calls);
  calls.clear();
  // No tiling override: the job's own setting decides the decoder's shapes.
  await warmUp(models.runtime, models.tokenizers, { height: h, width: w, ...params });
  assert.deepEqual(sorted(calls), sorted(rendered));
  const encoder = sorted(calls).filter((c) => c.startsWith("vae_encoder "));
  assert.ok(encoder.length > 0 && encoder.every((c) => c.endsWith(`,${h},${w}]`)), encoder.join(" "));
  const decoder = sorted(calls).filter((c) => c.startsWith("vae_decoder "));
  assert.ok(decoder.length > 0 && decoder.every((c) => /,32\]$|,10\]$/.test(c)), decoder.join(" "));
});

test("decoder tile shapes, spatial tiling included, are the ones a tiled decode runs", async () => {
  const vae = models.runtime.bundle.manifest.vae;
  // Small spatial tiles (4 latents every 3) so the tiny size is tiled both ways.
  const spatialTiling = {
    tile_sample_min_height: 32,
    tile_sample_min_width: 32,
    tile_sample_stride_height: 24,
    tile_sample_stride_width: 24,
  };
  const latents = [1, vae.latent_channels, 7, H / 8, W / 8];
  calls.clear();
  await decodeVideo(models.runtime, Tensor.zeros(latents), { spatialTiling });
  const decoded = sorted(calls);
  const shapes = await decoderTileShapes(vae, [latents], { spatialTiling });
  assert.deepEqual(sorted(new Set(shapes.map((s) => `vae_decoder latents:float32[${s.join(",")}]`))), decoded);
  assert.ok(shapes.length > 3, `tiled in time and space: ${JSON.stringify(shapes)}`);
});

test("a node warms only the models of the stages it serves, for every section shape of its sizes", async () => {
  assert.deepEqual(parseWarmupSizes("80x48, 64x64"), [
    { width: 80, height: 48 },
    { width: 64, height: 64 },
  ]);
  assert.throws(() => parseWarmupSizes("80x50"), /multiples of 16/);
  calls.clear();
  await warmUpNode(models, ["denoise"], [{ width: W, height: H }]);
  assert.deepEqual(new Set([...calls].map((c) => c.split(" ")[0])), new Set(["transformer"]));
  calls.clear();
  await warmUpNode(models, ["decode", "mux"], [{ width: W, height: H }]);
  // Window 9: decodes of 9 (first), 10 (the only section), 18 (middle) and 19 (last) latent frames.
  const m = models.runtime.bundle.manifest;
  const jobs = warmUpJobsForSize(models.runtime, { width: W, height: H });
  const lengths = new Set(jobs.flatMap((j) => sectionPlanFor(j, m).sections.map((s) => s.decode.latentFrames)));
  assert.deepEqual(
    [...lengths].sort((a, b) => a - b),
    [9, 10, 18, 19],
  );
  const expected = await decoderTileShapes(
    models.runtime.bundle.manifest.vae,
    [...lengths].map((t) => [1, 4, t, H / 8, W / 8]),
    { spatialTiling: false },
  );
  assert.deepEqual(sorted(calls), sorted(new Set(expected.map((s) => `vae_decoder latents:float32[${s.join(",")}]`))));
});

test("a node's warm-up size takes both decodes, untiled and tiled, unless :untiled or :tiled names one", async () => {
  assert.deepEqual(parseWarmupSizes("272x64:tiled, 272x64:untiled,80x48"), [
    { width: 272, height: 64, vaeTiling: true },
    { width: 272, height: 64, vaeTiling: false },
    { width: 80, height: 48 },
  ]);
  assert.throws(() => parseWarmupSizes("272x64:both"), /WxH\[:tiled\|:untiled\]/);
  const [h, w] = [64, 272];
  const m = models.runtime.bundle.manifest;
  const decodes = async (vaeTiling: boolean): Promise<string[]> => {
    const jobs = warmUpJobsForSize(models.runtime, { width: w, height: h, vaeTiling });
    const lengths = new Set(jobs.flatMap((j) => sectionPlanFor(j, m).sections.map((s) => s.decode.latentFrames)));
    const shapes = await decoderTileShapes(
      m.vae,
      [...lengths].map((t) => [1, 4, t, h / 8, w / 8]),
      { spatialTiling: vaeTiling },
    );
    return shapes.map((s) => `vae_decoder latents:float32[${s.join(",")}]`);
  };
  const [untiled, tiled] = [await decodes(false), await decodes(true)];
  const warmed = async (size: string): Promise<string[]> => {
    calls.clear();
    await warmUpNode(models, ["decode"], parseWarmupSizes(size));
    return sorted(calls);
  };
  assert.deepEqual(await warmed(`${w}x${h}:untiled`), sorted(new Set(untiled)));
  assert.deepEqual(await warmed(`${w}x${h}:tiled`), sorted(new Set(tiled)));
  assert.deepEqual(await warmed(`${w}x${h}`), sorted(new Set([...untiled, ...tiled])));
  assert.ok(
    tiled.every((c) => !untiled.includes(c)),
    "above 256 px the tiled decode runs other shapes",
  );
});

test("render --warmup on writes the same bytes as --warmup off, and times the warm-up", async () => {
  const dir = path.join(testOutputDir(), "warm-up");
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const image = path.join(repoRoot(), "test", "fixtures", "images", "demo.png");
  const args = ["render", "--image", image, "--prompt", "a lighthouse", "--frames", "20", "--resolution", "64"];
  const run = promisify(execFile);
  const on = await run(process.execPath, [
    cliPath(),
    ...args,
    "--steps",
    "2",
    "--warmup",
    "on",
    "--timings",
    path.join(dir, "on.json"),
    "-o",
    path.join(dir, "on.mp4"),
  ]);
  assert.match(on.stderr, /warmed up for 64x48 in \d+\.\d s/);
  const off = await run(process.execPath, [cliPath(), ...args, "--steps", "2", "-o", path.join(dir, "off.mp4")]);
  assert.doesNotMatch(off.stderr, /warmed up/, "auto is off on the CPU provider");
  assert.deepEqual(await readFile(path.join(dir, "on.mp4")), await readFile(path.join(dir, "off.mp4")));
  const timings = JSON.parse(await readFile(path.join(dir, "on.json"), "utf8")) as Record<string, unknown>;
  assert.equal(typeof timings["warmupMs"], "number");
  assert.deepEqual(Object.keys(timings["warmup"] as object).sort(), [
    "image_encoder",
    "text_encoder",
    "text_encoder_2",
    "transformer",
    "vae_decoder",
    "vae_encoder",
  ]);
});
