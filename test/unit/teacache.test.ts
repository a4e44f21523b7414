/**
 * TeaCache (--cache teacache): the step-cache graphs against the single graph, the cache's
 * arithmetic against lllyasviel's, and the job options. The whole cache against lllyasviel's own
 * code (which steps it skips, the latents and frames) is the reference case
 * test/fixtures/reference-cases/teacache_unipc_vanilla (test/parity/reference-cases.test.ts).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import { promisify } from "node:util";
import path from "node:path";
import { parseArgs } from "node:util";
import { openBundle } from "../../gpu-node/runtime/bundle.js";
import { ModelRuntime } from "../../gpu-node/runtime/model-runtime.js";
import type { Feed } from "../../gpu-node/runtime/onnx-model.js";
import {
  TeaCache,
  changeFeeds,
  relativeL1FromMeans,
  roundTo,
  teacacheRescale,
  type ComputeDtype,
} from "../../gpu-node/stages/teacache.js";
import { OnnxModel } from "../../gpu-node/runtime/onnx-model.js";
import { RENDER_OPTIONS, renderSettingsFrom } from "../../coordinator/cli/job-request.js";
import { renderParamsInputOf, settingsOf } from "../../coordinator/api/job-mapping.js";
import { validateManifest } from "../../shared/bundle/manifest.js";
import { FarmError } from "../../shared/errors.js";
import { validateRenderParams, type RenderParamsInput } from "../../shared/job/render-params.js";
import { makeRecipe, parseRecipe, recipeText } from "../../shared/job/recipe.js";
import { recipeParamsInput } from "../../coordinator/api/recipe-request.js";
import { decodeSafetensors } from "../../shared/tensor/safetensors.js";
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";
import { cliPath, repoRoot, tinyBundleDir } from "../support/paths.js";
import { relativeL1 } from "../support/relative-l1.js";

const CASE = path.join(repoRoot(), "test", "fixtures", "reference-cases", "teacache_unipc_vanilla.safetensors");

function relL2(a: F32, b: F32): number {
  let d = 0;
  let n = 0;
  for (let i = 0; i < b.numel; i++) {
    d += (a.data[i]! - b.data[i]!) ** 2;
    n += b.data[i]! ** 2;
  }
  return Math.sqrt(d / n);
}

async function stepInputs(section: number): Promise<Record<string, Feed>> {
  const t = decodeSafetensors(await readFile(CASE)).tensors;
  const prefix = `section${section}.transformer_in.`;
  const feeds: Record<string, Feed> = {};
  for (const [k, v] of t) if (k.startsWith(prefix)) feeds[k.slice(prefix.length)] = v as Feed;
  // The reference stores the mask as int64; the runtime feeds it as float32 (transformer-feeds.ts).
  const mask = feeds["encoder_attention_mask"]!;
  feeds["encoder_attention_mask"] = new Tensor("float32", mask.shape, Float32Array.from(mask.data, Number));
  return feeds;
}

test("the rescale polynomial is initialize_teacache's np.poly1d", () => {
  // np.poly1d([7.33226126e+02, -4.01131952e+02, 6.75869174e+01, -3.14987800e+00, 9.61237896e-02])(x)
  for (const [x, want] of [
    [0, 0.0961237896],
    [0.01, 0.07098990164925999],
    [0.05, 0.0620383523875],
    [0.1, 0.1291958242],
    [0.3, 0.34255187220000066],
  ] as const)
    assert.ok(Math.abs(teacacheRescale(x) - want) < 1e-12, `${x}: ${teacacheRescale(x)} vs ${want}`);
  const a = new Tensor("float32", [4], Float32Array.of(1, -2, 3, -4));
  const b = new Tensor("float32", [4], Float32Array.of(1, -1, 2, -4));
  assert.equal(relativeL1(a, b), 2 / 8);
  // In a half-precision transformer torch rounds the difference, the means and the quotient.
  assert.equal(roundTo("bf16")(1 + 2 ** -9), 1);
  assert.equal(roundTo("fp16")(1 + 2 ** -9), 1 + 2 ** -9);
  assert.equal(roundTo("fp16")(1 + 3 * 2 ** -12), 1 + 2 ** -10);
  const c = new Tensor("float32", [2], Float32Array.of(1.5, 3));
  const d = new Tensor("float32", [2], Float32Array.of(1, 2.9));
  // |diff| = 0.5, 0.1 (0.0999755859375 in fp16, 0.10009765625 in bf16); means 0.3.., 1.95
  assert.equal(relativeL1(c, d, "fp16"), roundTo("fp16")(roundTo("fp16")((0.5 + 0.0999755859375) / 2) / 1.9501953125));
  assert.notEqual(relativeL1(c, d, "bf16"), relativeL1(c, d, "fp32"));
});

test("relativeL1 rounds each difference exactly as roundTo does, over every binade, subnormals, ties and overflow", () => {
  // The per-value definition the fast path must equal bit for bit.
  const reference = (a: Float32Array, b: Float32Array, dtype: ComputeDtype): number => {
    const round = roundTo(dtype);
    let diff = 0;
    let norm = 0;
    for (let i = 0; i < a.length; i++) {
      diff += Math.abs(round(a[i]! - b[i]!));
      norm += Math.abs(b[i]!);
    }
    return round(round(diff / a.length) / round(norm / a.length));
  };
  // mulberry32: uniform draws in [0, 1), the same every run.
  let state = 17;
  const next = (): number => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t ^= t + Math.imul(t ^ (t >>> 7), 61 | t);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const n = 200_000;
  const u = Float64Array.from({ length: 3 * n }, next);
  const a = new Float32Array(n);
  const b = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const scale = 2 ** Math.floor(u[i]! * 170 - 140); // 2^-140 .. 2^30: subnormal to past fp16's range
    a[i] = (u[n + i]! * 2 - 1) * scale;
    // Every 7th pair differs by a value at a rounding tie of the half types.
    b[i] = i % 7 === 0 ? a[i]! + scale * (1 + 2 ** -11) : (u[2 * n + i]! * 2 - 1) * scale;
  }
  for (const dtype of ["fp32", "fp16", "bf16"] as const) {
    // One value at a time (where a wrong rounding cannot hide in a sum), then all together.
    for (let i = 0; i < 20_000; i++) {
      const [x, y] = [a.subarray(i, i + 1), b.subarray(i, i + 1)];
      const got = relativeL1(new Tensor("float32", [1], x), new Tensor("float32", [1], y), dtype);
      assert.ok(Object.is(got, reference(x, y, dtype)), `${dtype}: ${x[0]} - ${y[0]}`);
    }
    assert.ok(
      Object.is(
        relativeL1(new Tensor("float32", [n], a), new Tensor("float32", [n], b), dtype),
        reference(a, b, dtype),
      ),
    );
  }
  // Past fp16's largest value: infinity; NaN stays NaN.
  const big = (x: number) => new Tensor("float32", [1], Float32Array.of(x));
  assert.equal(relativeL1(big(70_000), big(1), "fp16"), Infinity);
  assert.equal(
    relativeL1(big(65_519), big(-1), "fp16"),
    reference(Float32Array.of(65_519), Float32Array.of(-1), "fp16"),
  );
  assert.ok(Number.isNaN(relativeL1(big(NaN), big(1), "bf16")));
});

test("transformer_residual and transformer_skip give the single graph's noise_pred; transformer_change measures the change", async () => {
  for (const sessionWorker of [false, true]) {
    const runtime = new ModelRuntime(await openBundle(tinyBundleDir()), { ep: "cpu", sessionWorker });
    try {
      for (const section of [0, 1]) {
        const feeds = await stepInputs(section);
        const single = (await (await runtime.model("transformer")).run(feeds)).noise_pred!;
        const computed = await (
          await runtime.model("transformer_residual")
        ).runTimed(feeds, undefined, {
          keep: ["residual"],
        });
        assert.deepEqual(Object.keys(computed.outputs), ["noise_pred"], "the residual stays where it was computed");
        const split = relL2(computed.outputs["noise_pred"]!, single);
        assert.ok(split <= 1e-6, `section ${section}: transformer_residual vs single relL2 ${split}`);
        // A skipped step with this very residual: the hidden states before block 0 + residual, then the output layers.
        const residual = computed.kept["residual"]!;
        const skipped = await (await runtime.model("transformer_skip")).run({ ...feeds, residual });
        residual.release();
        const reused = relL2(skipped["noise_pred"]!, single);
        assert.ok(reused <= 1e-5, `section ${section}: skip with its own residual vs single relL2 ${reused}`);
        const change = await runtime.model("transformer_change");
        const same = (await change.run(changeFeeds(feeds, feeds)))["modulated_l1"]!;
        assert.equal(same.data[0], 0, `section ${section}: no change from a call to itself`);
        assert.ok(same.data[1]! > 0);
        const moved = { ...feeds, hidden_states: scaled(feeds["hidden_states"] as F32, 0.9) };
        const l1 = relativeL1FromMeans((await change.run(changeFeeds(moved, feeds)))["modulated_l1"]!);
        assert.ok(l1 > 0 && l1 < 1, `section ${section}: relative change ${l1}`);
      }
    } finally {
      await runtime.close();
    }
  }
});

const scaled = (t: F32, k: number): F32 =>
  new Tensor(
    "float32",
    t.shape,
    Float32Array.from(t.data, (x) => x * k),
  );

test("TeaCache computes the first and last calls, skips while the change stays under the threshold", async () => {
  const runtime = new ModelRuntime(await openBundle(tinyBundleDir()), { ep: "cpu" });
  try {
    const feeds = await stepInputs(0);
    const single = (await (await runtime.model("transformer")).run(feeds)).noise_pred!;
    // The same input four times: no change, so the middle calls reuse the residual.
    const cache = new TeaCache(runtime, 0.15, 4);
    for (let i = 0; i < 4; i++) {
      const { noisePred } = await cache.run(feeds);
      assert.ok(relL2(noisePred, single) <= 1e-5, `call ${i}`);
    }
    // The rescale of a zero change is 0.096: the third call's sum (0.192) passes 0.15 and computes.
    assert.deepEqual(cache.computed, [1, 0, 1, 1]);
    cache.release();
    const everyCall = new TeaCache(runtime, 0.05, 4);
    for (let i = 0; i < 4; i++) await everyCall.run(feeds);
    assert.deepEqual(everyCall.computed, [1, 1, 1, 1]);
    everyCall.release();
  } finally {
    await runtime.close();
  }
});

test("a bundle names all three step-cache graphs or none, each with its own inputs", async () => {
  const manifest = JSON.parse(await readFile(path.join(tinyBundleDir(), "framefarm-bundle.json"), "utf8")) as Record<
    string,
    Record<string, unknown>
  >;
  const components = validateManifest(manifest, "tiny").components;
  assert.deepEqual(components.transformer_residual?.outputs, ["noise_pred", "residual"]);
  assert.ok(components.transformer_change?.inputs.includes("previous_hidden_states"));
  const without = structuredClone(manifest);
  delete without["components"]!["transformer_skip"];
  assert.throws(
    () => validateManifest(without, "x"),
    (e: unknown) => e instanceof FarmError && /transformer_skip missing/.test(e.message),
  );
  const badInputs = structuredClone(manifest);
  (badInputs["components"]!["transformer_skip"] as { inputs: string[] }).inputs = ["residual", "surprise"];
  assert.throws(
    () => validateManifest(badInputs, "x"),
    (e: unknown) => e instanceof FarmError && /transformer_skip\.inputs/.test(e.message),
  );
  const previousElsewhere = structuredClone(manifest);
  (previousElsewhere["components"]!["transformer_skip"] as { inputs: string[] }).inputs.push("previous_timestep");
  assert.throws(
    () => validateManifest(previousElsewhere, "x"),
    (e: unknown) => e instanceof FarmError && /transformer_skip\.inputs/.test(e.message),
  );
  const none = structuredClone(manifest);
  for (const n of ["transformer_residual", "transformer_skip", "transformer_change"]) delete none["components"]![n];
  assert.equal(validateManifest(none, "x").components.transformer_residual, undefined);
});

test("--cache teacache and --cache-threshold: parsed, validated, mapped and carried", () => {
  const defaults = { samplingType: "vanilla" as const, latentWindowSize: 9 };
  const base: RenderParamsInput = { prompt: "a cat", seconds: 1 };
  const p = validateRenderParams({ ...base, cache: "teacache" }, defaults);
  assert.deepEqual([p.cache, p.cacheThreshold], ["teacache", 0.15]);
  assert.deepEqual(
    [validateRenderParams(base, defaults).cache, validateRenderParams({ ...base, cache: "none" }, defaults).cache],
    ["none", "none"],
  );
  const rejects = (input: RenderParamsInput, re: RegExp) =>
    assert.throws(
      () => validateRenderParams({ ...base, ...input }, defaults),
      (e: unknown) => e instanceof FarmError && e.status === "INVALID_ARGUMENT" && re.test(e.message),
      String(re),
    );
  rejects({ cache: "fbcache" }, /cache must be none, teacache.*"fbcache"/);
  for (const t of [0, -0.1, 1.5, Number.NaN, "x"])
    rejects({ cache: "teacache", cacheThreshold: t }, /cache threshold must be greater than 0 and at most 1/);
  rejects({ cacheThreshold: 0.1 }, /cache threshold needs --cache teacache/);
  assert.equal(validateRenderParams({ ...base, cache: "teacache", cacheThreshold: 1 }, defaults).cacheThreshold, 1);

  const settings = renderSettingsFrom(
    parseArgs({
      args: ["--cache", "teacache", "--cache-threshold", "0.1"],
      options: RENDER_OPTIONS,
      strict: true,
      allowPositionals: false,
    }).values,
  );
  assert.deepEqual([settings.cache, settings.cacheThreshold], ["teacache", 0.1]);
  const input = renderParamsInputOf(settings, false);
  assert.deepEqual([input.cache, input.cacheThreshold], ["teacache", 0.1]);
  const params = validateRenderParams({ ...input, prompt: "a", seconds: 1 }, defaults);
  const { seed, size: _size, ...rest } = params;
  const back = settingsOf({
    spec: { jobId: "j", params: { ...rest, seed: seed.toString() }, height: 64, width: 64 },
  } as unknown as Parameters<typeof settingsOf>[0]);
  assert.deepEqual([back.cache, back.cacheThreshold], ["teacache", 0.1]);

  // The recipe names the cache and, for teacache only, its threshold; a recipe renders with both.
  const recipe = (q: typeof params) =>
    makeRecipe({
      params: q,
      size: { height: 64, width: 64 },
      format: "mp4",
      images: { start: Uint8Array.of(1), end: null },
      bundle: { name: "tiny", digest: `sha256:${"a".repeat(64)}` },
      framefarmVersion: "0.1.0",
    });
  const r = parseRecipe(recipeText(recipe(params)));
  assert.deepEqual([r.cache, r.cache_threshold], ["teacache", 0.1]);
  assert.deepEqual(recipeParamsInput(r), { cache: "teacache", cacheThreshold: 0.1 });
  const plainRecipe = parseRecipe(recipeText(recipe(validateRenderParams(base, defaults))));
  assert.deepEqual([plainRecipe.cache, "cache_threshold" in plainRecipe], ["none", false]);
});

test("step_cache_graphs (Debian's python3-onnx) makes the tiny bundle's step-cache graphs and manifest byte for byte", async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-split-"));
  try {
    await cp(tinyBundleDir(), dir, { recursive: true });
    const env = { ...process.env, PYTHONPATH: path.join(repoRoot(), "gpu-node/export") };
    const python = process.env["FRAMEFARM_PYTHON"] ?? "/usr/bin/python3";
    await promisify(execFile)(python, ["-m", "framefarm_export.step_cache_graphs", "--bundle", dir], { env });
    for (const f of [
      "transformer_residual.onnx",
      "transformer_skip.onnx",
      "transformer_change.onnx",
      "framefarm-bundle.json",
    ])
      assert.ok(
        Buffer.compare(await readFile(path.join(dir, f)), await readFile(path.join(tinyBundleDir(), f))) === 0,
        `${f} differs from the committed one`,
      );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("a float16 transformer's step-cache graphs: the residual in float16, the change rounded as torch rounds it", async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-split16-"));
  try {
    const env = { ...process.env, PYTHONPATH: path.join(repoRoot(), "gpu-node/export") };
    const python = process.env["FRAMEFARM_PYTHON"] ?? "/usr/bin/python3";
    const script = path.join(repoRoot(), "test/support/step_cache_synthetic.py");
    const { stdout } = await promisify(execFile)(python, [script, dir], { env });
    assert.equal(stdout.trim(), "fp16", "the modulated input's dtype, for the manifest");
    const load = (n: string) => OnnxModel.load(n, path.join(dir, `${n}.onnx`), { ep: "cpu" });
    const wave = (shape: number[], phase = 0) => {
      const n = shape.reduce((a, b) => a * b, 1);
      return new Tensor(
        "float32",
        shape,
        Float32Array.from({ length: n }, (_, i) => Math.sin(i * 1.3 + phase)),
      );
    };
    const feeds = {
      hidden_states: wave([1, 4, 8]),
      latents_clean: wave([1, 2, 8]),
      encoder_hidden_states: wave([1, 3, 8]),
      timestep: wave([1, 8]),
    };
    const [single, residualGraph, skip, change, modulated] = await Promise.all(
      ["transformer", "transformer_residual", "transformer_skip", "transformer_change", "modulated"].map(load),
    );
    const want = (await single!.run(feeds)).noise_pred!;
    const computed = await residualGraph!.runTimed(feeds, undefined, { keep: ["residual"] });
    const residual = computed.kept["residual"]!;
    assert.equal(residual.type, "float16", "the residual in the transformer's own dtype");
    assert.deepEqual([...residual.dims], [1, 4, 8], "the section's own tokens only");
    assert.deepEqual(Array.from(computed.outputs["noise_pred"]!.data), Array.from(want.data), "computed = single");
    const skipped = (await skip!.run({ ...feeds, residual }))["noise_pred"]!;
    assert.ok(relL2(skipped, want) < 1e-2, `skip with its own residual vs single relL2 ${relL2(skipped, want)}`);
    // The change rounds each difference to fp16 first, as relativeL1(..., "fp16") does.
    const before = { ...feeds, hidden_states: wave([1, 4, 8], 0.2), timestep: wave([1, 8], 0.1) };
    const l1 = (await change!.run(changeFeeds(feeds, before)))["modulated_l1"]!;
    const now = (await modulated!.run(feeds))["modulated_input"]!;
    const then = (await modulated!.run(before))["modulated_input"]!;
    assert.equal(relativeL1FromMeans(l1, "fp16"), relativeL1(now, then, "fp16"));
    assert.notEqual(relativeL1FromMeans(l1, "fp16"), relativeL1(now, then, "fp32"));
    residual.release();
    for (const m of [single, residualGraph, skip, change, modulated]) await m!.release();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("render --cache teacache on a bundle without the step-cache graphs is FAILED_PRECONDITION, naming the flag", async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-nosplit-"));
  try {
    const bundle = path.join(dir, "bundle");
    await cp(tinyBundleDir(), bundle, { recursive: true });
    const file = path.join(bundle, "framefarm-bundle.json");
    const manifest = JSON.parse(await readFile(file, "utf8")) as { components: Record<string, unknown> };
    for (const n of ["transformer_residual", "transformer_skip", "transformer_change"]) delete manifest.components[n];
    await writeFile(file, JSON.stringify(manifest));
    const image = path.join(repoRoot(), "test", "fixtures", "images", "demo.png");
    const args = [cliPath(), "render", "--bundle", bundle, "--image", image, "--prompt", "a", "--frames", "5"];
    const run = promisify(execFile)(process.execPath, [
      ...args,
      "--resolution",
      "64",
      "--steps",
      "2",
      "--cache",
      "teacache",
      "-o",
      path.join(dir, "v.mp4"),
    ]);
    await assert.rejects(run, (e: { stderr?: string }) =>
      /FAILED_PRECONDITION.*--step-cache-graphs/.test(e.stderr ?? ""),
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
