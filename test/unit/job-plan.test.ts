/** The job DAG: order, overlap of decode with the next denoise, keys, and generator positions. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { planJob, readyTasks } from "../../coordinator/planner/job-plan.js";
import { planSections } from "../../shared/framepack/plan.js";
import { TorchGenerator } from "../../shared/sampler/torch-rng.js";
import { toFloat64 } from "../../shared/tensor/convert.js";
import { REFERENCE_CASES, loadCaseTensors, refTensor } from "../support/reference.js";
import type { SamplingType } from "../../shared/bundle/manifest.js";
import { jobPrefix } from "../../shared/farm/keys.js";

const HISTORY: Record<SamplingType, [number, number, number]> = {
  inverted_anti_drifting: [1, 2, 16],
  vanilla: [16, 2, 1],
};

function planFor(name: string) {
  const { params, tensors } = loadCaseTensors(name);
  const samplingType = params["sampling_type"] as SamplingType;
  const hasEndImage = params["last_image"] !== null;
  const sections = planSections({
    samplingType,
    numFrames: params.num_frames as number,
    latentWindowSize: (params["latent_window_size"] as number | undefined) ?? 9,
    hasEndImage,
    historySizes: HISTORY[samplingType],
    temporalCompression: 4,
  });
  const tasks = planJob({
    jobId: "job1",
    seed: BigInt(params["seed"] as number),
    sections,
    hasEndImage,
    trueCfg: tensors.has("negative_prompt_embeds"),
    latent: { channels: 4, height: 8, width: 8 },
  });
  return { tasks, sections };
}

for (const name of REFERENCE_CASES) {
  test(`${name}: each denoise task's generator position reproduces the reference noise`, () => {
    const { params } = loadCaseTensors(name);
    for (const t of planFor(name).tasks.filter((x) => x.kind === "denoise")) {
      const g = new TorchGenerator(BigInt(t.rng!.seed));
      g.skip(t.rng!.offset);
      const want = refTensor(name, `section${t.section}.noise`);
      const got = g.randn(want.shape);
      const w = toFloat64(want);
      let max = 0;
      for (let i = 0; i < w.length; i++) max = Math.max(max, Math.abs(got.data[i]! - w[i]!));
      assert.ok(max <= 1e-6, `section ${t.section}: ${max}`);
      assert.equal(t.rng!.seed, String(params["seed"]));
    }
  });
}

test("sections run in order; decode k may run beside denoise k+1; the mux decodes the last section itself", () => {
  const { tasks } = planFor("inverted_3sec");
  const done = new Set<string>();
  const waves: string[][] = [];
  for (let guard = 0; guard < 20 && done.size < tasks.length; guard++) {
    const wave = readyTasks(tasks, done, new Set()).map((t) => t.id);
    waves.push(wave);
    for (const id of wave) done.add(id);
  }
  assert.deepEqual(waves, [
    ["job1.encode_text", "job1.encode_image", "job1.vae_encode"],
    ["job1.denoise.0"],
    ["job1.decode.0", "job1.denoise.1"],
    ["job1.decode.1", "job1.denoise.2"],
    ["job1.mux"],
  ]);
  const mux = tasks.find((t) => t.kind === "mux")!;
  assert.deepEqual(mux.dependsOn, ["job1.decode.0", "job1.decode.1", "job1.denoise.2"]);
  assert.deepEqual(Object.keys(mux.inputs).sort(), ["latents2", "section0", "section1"]);
  assert.equal(mux.inputs["latents2"], tasks.find((t) => t.id === "job1.denoise.2")!.outputs["history"]);
});

test("every key lives under the job's prefix and each output has one writer", () => {
  const { tasks } = planFor("vanilla_cfg_window5");
  const writers = new Map<string, string>();
  for (const t of tasks) {
    for (const k of [...Object.values(t.inputs), ...Object.values(t.outputs)])
      assert.ok(k.startsWith(jobPrefix("job1")), k);
    for (const k of Object.values(t.outputs)) {
      assert.equal(writers.get(k), undefined, `${k} written twice`);
      writers.set(k, t.id);
    }
  }
  assert.ok(tasks.find((t) => t.kind === "encode_text")!.outputs["negative"], "true CFG encodes the negative prompt");
});

test("job ids that could escape the key space are refused", () => {
  const sections = planSections({
    samplingType: "vanilla",
    numFrames: 10,
    latentWindowSize: 9,
    hasEndImage: false,
    historySizes: HISTORY.vanilla,
    temporalCompression: 4,
  });
  for (const bad of ["../x", "a/b", "", "x".repeat(65)]) {
    assert.throws(
      () =>
        planJob({
          jobId: bad,
          seed: 1n,
          sections,
          hasEndImage: false,
          trueCfg: false,
          latent: { channels: 4, height: 8, width: 8 },
        }),
      /job id/,
    );
  }
});

test("--sampler unipc (rng demo): noise from seed at 0, k * window draws; image latents from seed + 1 (mod 2^64)", () => {
  const sections = planSections({
    samplingType: "inverted_anti_drifting",
    numFrames: 60,
    latentWindowSize: 5,
    hasEndImage: true,
    sectionCount: "demo",
  });
  const tasks = planJob({
    jobId: "job1",
    seed: (1n << 64n) - 1n,
    sections,
    hasEndImage: true,
    trueCfg: true,
    latent: { channels: 4, height: 8, width: 8 },
    rng: "demo",
  });
  assert.deepEqual(tasks.find((t) => t.kind === "vae_encode")!.rng, { seed: "0", offset: 0 });
  const denoise = tasks.filter((t) => t.kind === "denoise");
  assert.equal(denoise.length, 3);
  denoise.forEach((t, k) =>
    assert.deepEqual(t.rng, { seed: ((1n << 64n) - 1n).toString(), offset: k * 4 * 5 * 8 * 8 }),
  );
});

test("extending a video: the tasks read it, and the sections' noise follows its whole posterior draw", async () => {
  const { readFileSync } = await import("node:fs");
  const path = await import("node:path");
  const { decodeSafetensors } = await import("../../shared/tensor/safetensors.js");
  const { repoRoot } = await import("../support/paths.js");
  const dir = path.join(repoRoot(), "test", "fixtures", "reference-cases");
  const params = JSON.parse(readFileSync(path.join(dir, "video_extend_vanilla.json"), "utf8")) as {
    num_frames: number;
    latent_window_size: number;
    context_frames: number;
    seed: number;
  };
  const tensors = decodeSafetensors(readFileSync(path.join(dir, "video_extend_vanilla.safetensors"))).tensors;
  const sections = planSections({
    samplingType: "vanilla",
    numFrames: params.num_frames,
    latentWindowSize: params.latent_window_size,
    hasEndImage: false,
    historySizes: HISTORY.vanilla,
    video: { inputFrames: 50, contextFrames: params.context_frames },
  });
  const tasks = planJob({
    jobId: "job1",
    seed: BigInt(params.seed),
    sections,
    hasEndImage: false,
    trueCfg: false,
    latent: { channels: 4, height: 8, width: 8 },
  });
  const task = (id: string) => tasks.find((t) => t.id === id)!;
  assert.deepEqual(task("job1.encode_image").inputs, { video: "jobs/job1/inputs/video" });
  assert.deepEqual(task("job1.vae_encode").inputs, { video: "jobs/job1/inputs/video" });
  assert.equal(task("job1.mux").inputs["video"], "jobs/job1/inputs/video");
  for (const t of tasks.filter((x) => x.kind === "denoise")) {
    const g = new TorchGenerator(BigInt(t.rng!.seed));
    g.skip(t.rng!.offset);
    const want = tensors.get(`section${t.section}.noise`)!;
    const got = g.randn(want.shape);
    const w = toFloat64(want);
    assert.ok(
      w.every((x, i) => Math.abs(got.data[i]! - x) <= 1e-6),
      `section ${t.section}`,
    );
  }
});
