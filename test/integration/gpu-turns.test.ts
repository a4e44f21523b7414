/**
 * GPU turns (FRAMEFARM_GPU_TURNS, gpu-turns.ts): session workers of one process run one at a time,
 * in the order they asked, with the same outputs as without turns.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { Worker } from "node:worker_threads";
import { gpuTurnsFromEnv, newGpuTurns } from "../../gpu-node/runtime/gpu-turns.js";
import { OnnxModel } from "../../gpu-node/runtime/onnx-model.js";
import { TorchGenerator } from "../../shared/sampler/torch-rng.js";
import { tinyBundleDir } from "../support/paths.js";

test("FRAMEFARM_GPU_TURNS: off unless 1, never on the CPU provider, anything else refused", () => {
  assert.equal(gpuTurnsFromEnv("cuda", {}), false);
  assert.equal(gpuTurnsFromEnv("cuda", { FRAMEFARM_GPU_TURNS: "1" }), true);
  assert.equal(gpuTurnsFromEnv("webgpu", { FRAMEFARM_GPU_TURNS: "1" }), true);
  assert.equal(gpuTurnsFromEnv("cpu", { FRAMEFARM_GPU_TURNS: "1" }), false);
  assert.equal(gpuTurnsFromEnv("cuda", { FRAMEFARM_GPU_TURNS: "0" }), false);
  assert.throws(() => gpuTurnsFromEnv("cuda", { FRAMEFARM_GPU_TURNS: "yes" }), /FRAMEFARM_GPU_TURNS must be 0 or 1/);
});

// Each worker enters its turn `rounds` times and spends ~2 ms inside: a second thread inside at
// the same moment is counted in cells[1].
const WORKER = `
const { workerData, parentPort } = require("node:worker_threads");
import(workerData.module).then(async ({ inTurn }) => {
  const cells = new Int32Array(workerData.counters);
  for (let i = 0; i < workerData.rounds; i++) {
    await inTurn(workerData.turns, async () => {
      if (Atomics.add(cells, 0, 1) !== 0) Atomics.add(cells, 1, 1);
      await new Promise((r) => setTimeout(r, 2));
      Atomics.add(cells, 2, 1);
      Atomics.sub(cells, 0, 1);
    });
  }
  parentPort.postMessage("done");
});
`;

test("turns: threads asking at once never run together, and every turn is served", async () => {
  const turns = newGpuTurns();
  const counters = new SharedArrayBuffer(3 * 4);
  const module = new URL("../../gpu-node/runtime/gpu-turns.js", import.meta.url).href;
  const rounds = 40;
  const workers = [0, 1, 2].map(
    () => new Worker(WORKER, { eval: true, workerData: { module, turns, counters, rounds } }),
  );
  await Promise.all(
    workers.map(
      (w) =>
        new Promise<void>((resolve, reject) => {
          w.once("message", () => resolve());
          w.once("error", reject);
        }),
    ),
  );
  await Promise.all(workers.map((w) => w.terminate()));
  const cells = new Int32Array(counters);
  assert.equal(cells[1], 0, "two threads inside a turn at once");
  assert.equal(cells[2], 3 * rounds);
});

test("sessions taking turns give the same outputs, runs and tiled decodes at once", async () => {
  const file = path.join(tinyBundleDir(), "vae_decoder.onnx");
  const here = await OnnxModel.load("vae_decoder", file, { ep: "cpu" });
  const a = await OnnxModel.load("vae_decoder", file, { ep: "cpu", sessionWorker: true, gpuTurns: true });
  const b = await OnnxModel.load("vae_decoder", file, { ep: "cpu", sessionWorker: true, gpuTurns: true });
  const temporal = {
    temporal_compression_ratio: 4,
    use_framewise_decoding: true,
    tile_sample_min_num_frames: 16,
    tile_sample_stride_num_frames: 12,
  };
  try {
    const latents = new TorchGenerator(5n).randn([1, 4, 11, 6, 8]);
    const io = { input: "latents", output: "sample", temporal, spatial: undefined } as const;
    const want = await here.tiledDecode({ latents, ...io });
    const wantRun = (await here.run({ latents })).sample!;
    const [x, y, z, w] = await Promise.all([
      a.tiledDecode({ latents, ...io }),
      b.run({ latents }),
      b.tiledDecode({ latents, ...io }),
      a.run({ latents }),
    ]);
    for (const got of [x, z]) assert.deepEqual(got.video.data, want.video.data);
    for (const got of [y, w]) assert.deepEqual(got.sample!.data, wantRun.data);
  } finally {
    await Promise.all([here.release(), a.release(), b.release()]);
  }
});
