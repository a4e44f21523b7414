/**
 * Sessions on worker threads (FRAMEFARM_SESSION_WORKERS, the default on CUDA): the same outputs as
 * on the node's thread, bit for bit, errors that name the component, and a render that writes the
 * same bytes.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { OnnxModel } from "../../gpu-node/runtime/onnx-model.js";
import { sessionWorkersFromEnv } from "../../gpu-node/runtime/model-runtime.js";
import { FarmError } from "../../shared/errors.js";
import { TorchGenerator } from "../../shared/sampler/torch-rng.js";
import { narrow } from "../../shared/tensor/ops.js";
import { Tensor } from "../../shared/tensor/tensor.js";
import { cliPath, repoRoot, tinyBundleDir } from "../support/paths.js";

const run = promisify(execFile);

test("FRAMEFARM_SESSION_WORKERS: on for cuda by default, 0 or 1 to choose, anything else refused", () => {
  assert.equal(sessionWorkersFromEnv("cuda", {}), true);
  assert.equal(sessionWorkersFromEnv("cpu", {}), false);
  assert.equal(sessionWorkersFromEnv("webgpu", {}), false);
  assert.equal(sessionWorkersFromEnv("cpu", { FRAMEFARM_SESSION_WORKERS: "1" }), true);
  assert.equal(sessionWorkersFromEnv("cuda", { FRAMEFARM_SESSION_WORKERS: "0" }), false);
  assert.throws(() => sessionWorkersFromEnv("cpu", { FRAMEFARM_SESSION_WORKERS: "yes" }), RangeError);
});

test("a session on a worker thread gives the node thread's outputs bit for bit; a bad feed names the component", async () => {
  const file = path.join(tinyBundleDir(), "vae_decoder.onnx");
  const here = await OnnxModel.load("vae_decoder", file, { ep: "cpu" });
  const there = await OnnxModel.load("vae_decoder", file, { ep: "cpu", sessionWorker: true });
  try {
    assert.deepEqual(there.inputNames, here.inputNames);
    assert.deepEqual(there.outputNames, here.outputNames);
    const latents = new TorchGenerator(5n).randn([1, 4, 3, 6, 8]);
    // Two runs at once on the worker: each gets its own answer.
    const [a, b] = await Promise.all([there.run({ latents }), there.run({ latents: latents })]);
    const want = (await here.run({ latents })).sample!;
    assert.deepEqual(a.sample!.shape, want.shape);
    assert.deepEqual(a.sample!.data, want.data);
    assert.deepEqual(b.sample!.data, want.data);
    await assert.rejects(
      there.run({ latents: new TorchGenerator(5n).randn([1, 4, 6, 8]) }),
      (e: unknown) =>
        e instanceof FarmError && e.status === "INTERNAL" && /vae_decoder failed on latents=/.test(e.message),
    );
  } finally {
    await here.release();
    await there.release();
  }
});

test("a tiled decode on the worker (tiles, blending and copy there) equals tiling from the node's thread, temporal and spatial", async () => {
  const file = path.join(tinyBundleDir(), "vae_decoder.onnx");
  const here = await OnnxModel.load("vae_decoder", file, { ep: "cpu" });
  const there = await OnnxModel.load("vae_decoder", file, { ep: "cpu", sessionWorker: true });
  const temporal = {
    temporal_compression_ratio: 4,
    use_framewise_decoding: true,
    tile_sample_min_num_frames: 16,
    tile_sample_stride_num_frames: 12,
  };
  const spatial = {
    spatial_compression_ratio: 8,
    tile_sample_min_height: 64,
    tile_sample_min_width: 64,
    tile_sample_stride_height: 48,
    tile_sample_stride_width: 48,
  };
  const io = { input: "latents", output: "sample" } as const;
  try {
    // 11 latent frames: four temporal tiles, the last a short one; 3 frames: one tile, no blending.
    for (const [frames, tiling] of [
      [11, undefined],
      [3, undefined],
      [5, spatial],
    ] as const) {
      const latents = new TorchGenerator(BigInt(frames)).randn([1, 4, frames, 10, 12]);
      const want = await here.tiledDecode({ latents, ...io, temporal, spatial: tiling });
      const got = await there.tiledDecode({ latents, ...io, temporal, spatial: tiling });
      assert.deepEqual(got.video.shape, want.video.shape, `${frames} frames`);
      assert.deepEqual(got.video.data, want.video.data, `${frames} frames`);
      assert.ok(got.runMs > 0 && want.runMs > 0);
    }
    // The caller's latents are untouched (the worker got a copy).
    const latents = new TorchGenerator(9n).randn([1, 4, 7, 6, 8]);
    const before = latents.data.slice();
    await there.tiledDecode({ latents, ...io, temporal, spatial: undefined });
    assert.deepEqual(latents.data, before);
    await assert.rejects(
      there.tiledDecode({
        latents: new TorchGenerator(5n).randn([1, 3, 7, 6, 8]),
        ...io,
        temporal,
        spatial: undefined,
      }),
      (e: unknown) =>
        e instanceof FarmError && e.status === "INTERNAL" && /vae_decoder failed decoding/.test(e.message),
    );
    await assert.rejects(
      there.tiledDecode({ latents, input: "x", output: "sample", temporal, spatial: undefined }),
      /vae_decoder has no input x/,
    );
  } finally {
    await here.release();
    await there.release();
  }
});

test("a streamed decode (worker or not) hands its frames over in order and keeps tiles for the next window: same video", async () => {
  const file = path.join(tinyBundleDir(), "vae_decoder.onnx");
  const temporal = {
    temporal_compression_ratio: 4,
    use_framewise_decoding: true,
    tile_sample_min_num_frames: 16,
    tile_sample_stride_num_frames: 12,
  };
  const io = { input: "latents", output: "sample", temporal, spatial: undefined } as const;
  const plain = await OnnxModel.load("vae_decoder", file, { ep: "cpu" });
  // Two windows as inverted sampling decodes them: the second starts with 9 new frames, then the first's.
  const all = new TorchGenerator(4n).randn([1, 4, 18, 6, 8]);
  const second = all;
  const first = narrow(all, 2, 9, 9);
  try {
    const want = [
      (await plain.tiledDecode({ latents: first, ...io })).video,
      (await plain.tiledDecode({ latents: second, ...io })).video,
    ];
    for (const sessionWorker of [false, true]) {
      const model = await OnnxModel.load("vae_decoder", file, { ep: "cpu", sessionWorker });
      try {
        for (const [k, latents] of [first, second].entries()) {
          const marks: number[] = [];
          // The mux gives the video's memory (into); the second window here lets the decode make it.
          const into = k === 0 ? new Tensor("float32", want[k]!.shape, new Float32Array(want[k]!.numel)) : undefined;
          const got = await model.tiledDecode({
            latents,
            ...io,
            ...(into !== undefined ? { into } : {}),
            tileCacheBytes: 1 << 28,
            ...(k === 0 ? { keep: { first: 0, count: 9 } } : {}),
            onFrames: (video, upTo) => {
              marks.push(upTo);
              assert.deepEqual(video.data.subarray(0, upTo * 48), want[k]!.data.subarray(0, upTo * 48));
            },
          });
          assert.deepEqual(got.video.data, want[k]!.data, `window ${k}, worker ${sessionWorker}`);
          if (into !== undefined) assert.equal(got.video, into);
          // The second window's tiles at 9 and 12 (and the short one at 15) are the first window's.
          assert.equal(got.reused, k === 0 ? 0 : 3);
          assert.equal(marks.at(-1), got.video.shape[2]);
          assert.deepEqual(
            marks,
            [...marks].sort((a, b) => a - b),
          );
        }
      } finally {
        await model.release();
      }
    }
  } finally {
    await plain.release();
  }
});

test("steady feeds reach a worker once and are named after that, for two objects per input at a time", async () => {
  const file = path.join(tinyBundleDir(), "vae_decoder.onnx");
  const here = await OnnxModel.load("vae_decoder", file, { ep: "cpu" });
  const there = await OnnxModel.load("vae_decoder", file, { ep: "cpu", sessionWorker: true });
  const steady = new Set(["latents"]);
  try {
    const [a, b, c] = [5n, 6n, 7n].map((seed) => new TorchGenerator(seed).randn([1, 4, 3, 6, 8]));
    const want = new Map<unknown, Float32Array>();
    for (const x of [a, b, c]) want.set(x, (await here.run({ latents: x! })).sample!.data);
    // a kept; a named; b kept; a named; c kept (a dropped); a sent again; b dropped, c named.
    for (const x of [a, a, b, a, c, a, c, b, a]) {
      const got = (await there.run({ latents: x! }, steady)).sample!;
      assert.deepEqual(got.data, want.get(x));
    }
  } finally {
    await here.release();
    await there.release();
  }
});

test("render with sessions on worker threads writes the same video", async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-session-worker-"));
  try {
    const args = (out: string): string[] => [
      cliPath(),
      "render",
      "--image",
      path.join(repoRoot(), "test", "fixtures", "images", "demo.png"),
      "--prompt",
      "a lighthouse",
      "--frames",
      "40",
      "--resolution",
      "64",
      "--steps",
      "2",
      "-o",
      out,
    ];
    // Also the split graphs with a negative prompt: two steady prompts alternate on each input.
    const cached = ["--cache", "teacache", "--negative-prompt", "blurry", "--cfg", "3"];
    for (const [name, extra] of [
      ["plain", []],
      ["teacache-cfg", cached],
    ] as const) {
      const inThread = path.join(dir, `${name}-thread.mp4`);
      const inWorkers = path.join(dir, `${name}-workers.mp4`);
      const env = (workers: string) => ({ env: { ...process.env, FRAMEFARM_SESSION_WORKERS: workers } });
      await run(process.execPath, [...args(inThread), ...extra], env("0"));
      await run(process.execPath, [...args(inWorkers), ...extra], env("1"));
      assert.ok((await readFile(inThread)).equals(await readFile(inWorkers)), `${name}: the videos differ`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
