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
import { OnnxModel, type SessionSettings } from "../../gpu-node/runtime/onnx-model.js";
import { SessionHost } from "../../gpu-node/runtime/session-host.js";
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

/**
 * Two graphs in a temporary folder: keeps (x float32 -> y = x + 1, r = float16(2x)) and takes
 * (x float32, r float16 -> y = x + float32(r)), a step cache's residual and skip graphs in
 * miniature; `load` opens one of them (or `file`) on the CPU, and `close` releases every session it
 * opened and removes the folder.
 */
async function keepAndTakeGraphs(): Promise<{
  dir: string;
  load(graph: string, settings?: Partial<SessionSettings>, file?: string): Promise<OnnxModel>;
  close(): Promise<void>;
}> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-kept-"));
  const script = `
import sys, onnx
from onnx import TensorProto as T, helper as h
def save(name, nodes, inputs, outputs, inits=[]):
    model = h.make_model(h.make_graph(nodes, name, inputs, outputs, inits), opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, f"{sys.argv[1]}/{name}.onnx")
x, r, y = (h.make_tensor_value_info(n, t, ["n"]) for n, t in (("x", T.FLOAT), ("r", T.FLOAT16), ("y", T.FLOAT)))
save("keeps", [h.make_node("Add", ["x", "one"], ["y"]), h.make_node("Mul", ["x", "two"], ["x2"]),
    h.make_node("Cast", ["x2"], ["r"], to=T.FLOAT16)], [x], [y, r],
    [h.make_tensor("one", T.FLOAT, [], [1.0]), h.make_tensor("two", T.FLOAT, [], [2.0])])
save("takes", [h.make_node("Cast", ["r"], ["r32"], to=T.FLOAT), h.make_node("Add", ["x", "r32"], ["y"])], [x, r], [y])
`;
  await run(process.env["FRAMEFARM_PYTHON"] ?? "/usr/bin/python3", ["-c", script, dir]);
  const models: OnnxModel[] = [];
  return {
    dir,
    async load(graph, settings = {}, file = path.join(dir, `${graph}.onnx`)) {
      const m = await OnnxModel.load(graph, file, { ep: "cpu", ...settings });
      models.push(m);
      return m;
    },
    async close() {
      await Promise.all(models.map((m) => m.release()));
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Six float32 values in [10, 30], none a float16. */
const values = (seed: number): Tensor<"float32"> =>
  new Tensor(
    "float32",
    [6],
    Float32Array.from({ length: 6 }, (_, i) => 20 + 10 * Math.sin(i * 1.3 + seed)),
  );

/** v rounded to float16's 11 significant bits (v a normal float16 and no tie, as with values()). */
const toHalf = (v: number): number => {
  const step = 2 ** (Math.floor(Math.log2(Math.abs(v))) - 10);
  return Math.round(v / step) * step;
};

test("an output kept where its session ran feeds another session there, on this thread and on a shared host, bit for bit", async () => {
  const { load, close } = await keepAndTakeGraphs();
  try {
    const x = values(0);
    const keepsHere = await load("keeps");
    const takesHere = await load("takes");
    // A float16 output not kept is still refused.
    await assert.rejects(
      keepsHere.run({ x }),
      (e: unknown) =>
        e instanceof FarmError && e.status === "INTERNAL" && /keeps: output r missing or not float32/.test(e.message),
    );
    const here = await keepsHere.runTimed({ x }, undefined, { keep: ["r"] });
    assert.deepEqual(Object.keys(here.outputs), ["y"]);
    assert.deepEqual(Object.keys(here.kept), ["r"]);
    assert.equal(here.kept.r!.type, "float16");
    assert.deepEqual(here.kept.r!.dims, [6]);
    const want = (await takesHere.run({ x, r: here.kept.r! })).y!;
    assert.deepEqual(
      [...want.data],
      [...x.data].map((v) => Math.fround(v + toHalf(2 * v))),
    );

    const host = new SessionHost();
    const keeps = await load("keeps", { sessionWorker: true, host });
    const takes = await load("takes", { sessionWorker: true, host });
    const there = await keeps.runTimed({ x }, undefined, { keep: ["r"] });
    assert.deepEqual(there.outputs.y!.data, here.outputs.y!.data);
    assert.deepEqual(Object.keys(there.outputs), ["y"]);
    assert.equal(there.kept.r!.describe(), "kept float16[6]");
    // Fed as often as wanted until released.
    for (let k = 0; k < 2; k++) assert.deepEqual((await takes.run({ x, r: there.kept.r! })).y!.data, want.data);
    here.kept.r!.release();
    there.kept.r!.release();
    // An output left unfetched is neither returned nor kept, here and on the host.
    for (const model of [keepsHere, keeps]) {
      const bare = await model.runTimed({ x }, undefined, { unused: ["r"] });
      assert.deepEqual([Object.keys(bare.outputs), Object.keys(bare.kept)], [["y"], []]);
      assert.deepEqual(bare.outputs.y!.data, here.outputs.y!.data);
    }
    await assert.rejects(
      keeps.runTimed({ x }, undefined, { unused: ["z"] }),
      (e: unknown) => e instanceof FarmError && /keeps has no output z to leave unfetched/.test(e.message),
    );
  } finally {
    await close();
  }
});

test("a kept tensor fed after its release, or where it was not kept, is refused naming the component and the input", async () => {
  const { load, close } = await keepAndTakeGraphs();
  const refused = (pattern: RegExp) => (e: unknown) =>
    e instanceof FarmError && e.status === "INTERNAL" && pattern.test(e.message);
  try {
    const x = values(0);
    const host = new SessionHost();
    const keeps = await load("keeps", { sessionWorker: true, host });
    const takes = await load("takes", { sessionWorker: true, host });
    const keepsHere = await load("keeps");
    const r = (await keeps.runTimed({ x }, undefined, { keep: ["r"] })).kept.r!;
    const elsewhere = [
      await load("takes", { sessionWorker: true, host: new SessionHost() }),
      await load("takes", { sessionWorker: true }),
      await load("takes"),
    ];
    for (const m of elsewhere)
      await assert.rejects(
        m.run({ x, r }),
        refused(new RegExp(`^takes: input r was kept on ${host.name}'s worker, and this session runs on `)),
      );
    const rHere = (await keepsHere.runTimed({ x }, undefined, { keep: ["r"] })).kept.r!;
    await assert.rejects(
      takes.run({ x, r: rHere }),
      refused(new RegExp(`^takes: input r was kept on this thread, and this session runs on ${host.name}'s worker`)),
    );
    r.release();
    r.release();
    rHere.release();
    await assert.rejects(takes.run({ x, r }), refused(/^takes: input r is a kept tensor that was released$/));
    await assert.rejects(
      elsewhere[2]!.run({ x, r: rHere }),
      refused(/^takes: input r is a kept tensor that was released$/),
    );
    await assert.rejects(keeps.runTimed({ x }, undefined, { keep: ["z"] }), refused(/^keeps has no output z to keep$/));
    await assert.rejects(takes.run({ x }), refused(/^takes: input r was not provided$/));
  } finally {
    await close();
  }
});

test("sessions of one host: runs asked at once and steady feeds agree with this thread; a release leaves the others; the worker ends with the last", async () => {
  const { dir, load, close } = await keepAndTakeGraphs();
  try {
    const host = new SessionHost();
    const keeps = await load("keeps", { sessionWorker: true, host });
    const takes = await load("takes", { sessionWorker: true, host });
    const keepsHere = await load("keeps");
    const takesHere = await load("takes");
    // Each session has steady feeds of its own under one id space: takes gets other x than keeps.
    const xs = [0, 1, 2].map(values);
    const others = [3, 4, 5].map(values);
    const want: { y: Float32Array; taken: Float32Array }[] = [];
    for (const [i, x] of xs.entries()) {
      const { outputs, kept } = await keepsHere.runTimed({ x }, undefined, { keep: ["r"] });
      want.push({ y: outputs.y!.data, taken: (await takesHere.run({ x: others[i]!, r: kept.r! })).y!.data });
      kept.r!.release();
    }
    const steady = new Set(["x"]);
    const order = [0, 0, 1, 0, 2, 0, 2, 1, 0];
    const kept = await Promise.all(order.map((i) => keeps.runTimed({ x: xs[i]! }, steady, { keep: ["r"] })));
    for (const [k, i] of order.entries()) assert.deepEqual(kept[k]!.outputs.y!.data, want[i]!.y, `run ${k}`);
    const taken = await Promise.all(order.map((i, k) => takes.run({ x: others[i]!, r: kept[k]!.kept.r! }, steady)));
    for (const [k, i] of order.entries()) assert.deepEqual(taken[k]!.y!.data, want[i]!.taken, `run ${k}`);

    // A tiled decode on the same worker, asked for together with a run there: each as alone.
    const decoderFile = path.join(tinyBundleDir(), "vae_decoder.onnx");
    const decoder = await load("vae_decoder", { sessionWorker: true, host }, decoderFile);
    const decoderHere = await load("vae_decoder", {}, decoderFile);
    const decode = {
      latents: new TorchGenerator(11n).randn([1, 4, 11, 6, 8]),
      input: "latents",
      output: "sample",
      temporal: {
        temporal_compression_ratio: 4,
        use_framewise_decoding: true,
        tile_sample_min_num_frames: 16,
        tile_sample_stride_num_frames: 12,
      },
      spatial: undefined,
    };
    const [decoded, during] = await Promise.all([
      decoder.tiledDecode(decode),
      keeps.runTimed({ x: xs[2]! }, steady, { keep: ["r"] }),
    ]);
    assert.deepEqual(decoded.video.data, (await decoderHere.tiledDecode(decode)).video.data);
    assert.deepEqual(during.outputs.y!.data, want[2]!.y);
    during.kept.r!.release();
    // A graph that does not load names its error and leaves the host's sessions running.
    await assert.rejects(
      OnnxModel.load("missing", path.join(dir, "missing.onnx"), { ep: "cpu", sessionWorker: true, host }),
      (e: unknown) =>
        e instanceof FarmError && e.status === "FAILED_PRECONDITION" && /cannot load missing from/.test(e.message),
    );
    await keeps.release();
    await decoder.release();
    const kept1 = kept[order.indexOf(1)]!.kept.r!;
    assert.deepEqual((await takes.run({ x: others[1]!, r: kept1 }, steady)).y!.data, want[1]!.taken);

    // The last session's release ends the worker: what it kept is gone; a later session starts another.
    await takes.release();
    const keepsAgain = await load("keeps", { sessionWorker: true, host });
    const takesAgain = await load("takes", { sessionWorker: true, host });
    await assert.rejects(
      takesAgain.run({ x: others[1]!, r: kept1 }),
      (e: unknown) => e instanceof FarmError && /takes: input r is a kept tensor that was released/.test(e.message),
    );
    const { kept: again } = await keepsAgain.runTimed({ x: xs[1]! }, undefined, { keep: ["r"] });
    assert.deepEqual((await takesAgain.run({ x: others[1]!, r: again.r! })).y!.data, want[1]!.taken);
  } finally {
    await close();
  }
});
