/**
 * MagCache (--cache magcache): the ratios and skipping decisions against Zehong-Ma/MagCache's
 * MagCache4FramePack, the cache over the tiny bundle's step-cache graphs, and the job options. The whole
 * cache against the reference code itself (which calls it skips, the latents and frames) is the
 * reference cases test/fixtures/reference-cases/magcache_unipc_* (test/parity/reference-cases.test.ts).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { parseArgs } from "node:util";
import { openBundle } from "../../gpu-node/runtime/bundle.js";
import { ModelRuntime } from "../../gpu-node/runtime/model-runtime.js";
import type { Feed } from "../../gpu-node/runtime/onnx-model.js";
import {
  MAGCACHE_RATIOS_25,
  MagCache,
  MagCacheSchedule,
  magRatios,
  nearestInterp,
  type MagCacheOptions,
} from "../../gpu-node/stages/magcache.js";
import { stepCacheOf, transformerCall } from "../../gpu-node/stages/step-cache.js";
import { estimateForRuntime } from "../../gpu-node/runtime/memory-admission.js";
import { warmUpJobOf } from "../../gpu-node/stages/warm-up.js";
import { RENDER_OPTIONS, renderSettingsFrom } from "../../coordinator/cli/job-request.js";
import { renderParamsInputOf, settingsOf } from "../../coordinator/api/job-mapping.js";
import { FarmError } from "../../shared/errors.js";
import { validateRenderParams, type RenderParamsInput } from "../../shared/job/render-params.js";
import { makeRecipe, parseRecipe, recipeText } from "../../shared/job/recipe.js";
import { recipeParamsInput } from "../../coordinator/api/recipe-request.js";
import { decodeSafetensors } from "../../shared/tensor/safetensors.js";
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";
import type { JobSpec } from "../../shared/job/job-spec.js";
import { repoRoot, tinyBundleDir } from "../support/paths.js";

const CASES = path.join(repoRoot(), "test", "fixtures", "reference-cases");

function relL2(a: F32, b: F32): number {
  let d = 0;
  let n = 0;
  for (let i = 0; i < b.numel; i++) {
    d += (a.data[i]! - b.data[i]!) ** 2;
    n += b.data[i]! ** 2;
  }
  return Math.sqrt(d / n);
}

const decisions = (options: MagCacheOptions, calls: number): number[] => {
  const s = new MagCacheSchedule(options);
  return Array.from({ length: calls }, () => (s.next() ? 0 : 1));
};

test("the ratios for other step counts are nearest_interp's (np.round: halves to even)", () => {
  assert.equal(MAGCACHE_RATIOS_25.length, 25);
  const index = (steps: number) => nearestInterp([...Array(25).keys()], steps);
  // np.round(np.arange(t) * (25 - 1) / (t - 1)).astype(int), printed by numpy 1.24.
  assert.deepEqual(index(1), [24]);
  assert.deepEqual(index(6), [0, 5, 10, 14, 19, 24]);
  assert.deepEqual(index(8), [0, 3, 7, 10, 14, 17, 21, 24]);
  assert.deepEqual(index(17), [0, 2, 3, 4, 6, 8, 9, 10, 12, 14, 15, 16, 18, 20, 21, 22, 24]);
  assert.deepEqual(index(13), [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24]);
  assert.deepEqual(index(25), [...Array(25).keys()]);
  assert.deepEqual(magRatios(25), [...MAGCACHE_RATIOS_25]);
  assert.deepEqual(magRatios(6), [1.0, 1.03906, 1.03906, 1.01562, 1.0, 0.78906]);
});

test("MagCache skips as magcache_framepack_forward decides: retention, threshold, K and the 0.06 bound", () => {
  const studio = { threshold: 0.1, k: 2, retention: 0.25 };
  // 8 steps: ratios 1, 1.03125, 1.03906, 1.03906, 1.01562, 1.04688, 0.98828, 0.78906; calls 0 and 1 retained.
  assert.deepEqual(decisions({ ...studio, numSteps: 8 }, 8), [1, 1, 0, 1, 0, 0, 1, 1]);
  // K = 1: never two in a row.
  assert.deepEqual(decisions({ ...studio, k: 1, numSteps: 8 }, 8), [1, 1, 0, 1, 0, 1, 0, 1]);
  // Retention 1 keeps every call; a tiny threshold skips none.
  assert.deepEqual(decisions({ ...studio, retention: 1, numSteps: 8 }, 8), [1, 1, 1, 1, 1, 1, 1, 1]);
  assert.deepEqual(decisions({ ...studio, threshold: 0.01, numSteps: 8 }, 8), [1, 1, 1, 1, 1, 1, 1, 1]);
  // The counter counts calls and wraps at num_steps (true CFG: two calls per step), starting afresh.
  const cfg = { threshold: 0.15, k: 3, retention: 0.2, numSteps: 6 };
  assert.deepEqual(decisions(cfg, 12), [1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1]);
  // 25 steps with Studio's defaults: the calibrated ratios as they are.
  const at25 = decisions({ ...studio, numSteps: 25 }, 25);
  assert.equal(at25.slice(0, 6).join(""), "111111");
  assert.equal(at25[24], 1);
  assert.ok(at25.includes(0));
  // skipsNext tells the next call's decision ahead, across the wrap too.
  const s = new MagCacheSchedule(cfg);
  for (let call = 0; call < 12; call++) {
    s.next();
    const ahead = s.skipsNext();
    assert.equal(ahead, decisions(cfg, call + 2)[call + 1] === 0, `call ${call + 1}`);
  }
});

test("each reference case's skipped calls are the schedule's (the reference code's own decisions)", async () => {
  for (const name of ["magcache_unipc_vanilla", "magcache_unipc_inverted_cfg"]) {
    const json = JSON.parse(await readFile(path.join(CASES, `${name}.json`), "utf8")) as Record<string, number>;
    const t = decodeSafetensors(await readFile(path.join(CASES, `${name}.safetensors`))).tensors;
    const options = stepCacheOf({
      cache: "magcache",
      cacheThreshold: json["cache_threshold"]!,
      magcacheK: json["magcache_k"]!,
      magcacheRetention: json["magcache_retention"]!,
    });
    assert.equal(options?.kind, "magcache");
    if (options?.kind !== "magcache") return;
    for (let k = 0; t.has(`section${k}.magcache_computed`); k++) {
      const want = Array.from(t.get(`section${k}.magcache_computed`)!.data as Float32Array);
      assert.ok(want.includes(0), `${name} section ${k} skips some calls`);
      assert.deepEqual(decisions({ ...options, numSteps: json["steps"]! }, want.length), want, `${name} section ${k}`);
    }
  }
});

test("MagCache over the step-cache graphs: a skipped call adds the last residual, on the node's thread and on a worker", async () => {
  for (const sessionWorker of [false, true]) {
    const runtime = new ModelRuntime(await openBundle(tinyBundleDir()), { ep: "cpu", sessionWorker });
    try {
      const t = decodeSafetensors(await readFile(path.join(CASES, "magcache_unipc_vanilla.safetensors"))).tensors;
      const feeds: Record<string, Feed> = {};
      for (const [k, v] of t) if (k.startsWith("section0.transformer_in.")) feeds[k.slice(24)] = v as Feed;
      const mask = feeds["encoder_attention_mask"]!;
      feeds["encoder_attention_mask"] = new Tensor("float32", mask.shape, Float32Array.from(mask.data, Number));
      const single = (await (await runtime.model("transformer")).run(feeds)).noise_pred!;
      // The same input each call: a reused residual gives the single graph's output again.
      const cache = new MagCache(runtime, { numSteps: 8, threshold: 0.1, k: 2, retention: 0.25 });
      for (let i = 0; i < 8; i++) {
        const { noisePred, computed } = await cache.run(feeds);
        assert.equal(computed, cache.computed[i] === 1);
        assert.ok(relL2(noisePred, single) <= 1e-5, `call ${i}`);
      }
      assert.deepEqual(cache.computed, [1, 1, 0, 1, 0, 0, 1, 1]);
      cache.release();
      const { cache: made, release } = await transformerCall(runtime, 8, {
        kind: "magcache",
        threshold: 0.1,
        k: 2,
        retention: 0.25,
      });
      assert.ok(made instanceof MagCache);
      release();
    } finally {
      await runtime.close();
    }
  }
});

test("--cache magcache, --cache-threshold, --magcache-k, --magcache-retention: parsed, validated, mapped and carried", async () => {
  const defaults = { samplingType: "vanilla" as const, latentWindowSize: 9 };
  const base: RenderParamsInput = { prompt: "a cat", seconds: 1 };
  const p = validateRenderParams({ ...base, cache: "magcache" }, defaults);
  // FramePack-Studio's defaults.
  assert.deepEqual([p.cache, p.cacheThreshold, p.magcacheK, p.magcacheRetention], ["magcache", 0.1, 2, 0.25]);
  assert.equal(validateRenderParams({ ...base, cache: "teacache" }, defaults).cacheThreshold, 0.15);
  const rejects = (input: RenderParamsInput, re: RegExp) =>
    assert.throws(
      () => validateRenderParams({ ...base, ...input }, defaults),
      (e: unknown) => e instanceof FarmError && e.status === "INVALID_ARGUMENT" && re.test(e.message),
      String(re),
    );
  rejects({ cache: "fbcache" }, /cache must be none, teacache .* or magcache .*"fbcache"/);
  for (const t of [0, 1.5, Number.NaN])
    rejects({ cache: "magcache", cacheThreshold: t }, /cache threshold must be greater than 0 and at most 1/);
  for (const k of [0, 1.5, -1, 201, "x"])
    rejects(
      { cache: "magcache", magcacheK: k },
      /MagCache's K \(max consecutive skips\) must be an integer from 1 to 200/,
    );
  for (const r of [-0.1, 1.01, Number.NaN, "x"])
    rejects({ cache: "magcache", magcacheRetention: r }, /MagCache's retention ratio must be from 0 to 1/);
  rejects({ cache: "teacache", magcacheK: 3 }, /K \(max consecutive skips\) needs --cache magcache/);
  rejects({ magcacheRetention: 0.5 }, /retention ratio needs --cache magcache/);
  rejects({ cacheThreshold: 0.1 }, /cache threshold needs --cache teacache or --cache magcache/);
  const edge = validateRenderParams({ ...base, cache: "magcache", magcacheK: "5", magcacheRetention: 0 }, defaults);
  assert.deepEqual([edge.magcacheK, edge.magcacheRetention], [5, 0]);

  const settings = renderSettingsFrom(
    parseArgs({
      args: ["--cache", "magcache", "--cache-threshold", "0.2", "--magcache-k", "3", "--magcache-retention", "0.1"],
      options: RENDER_OPTIONS,
      strict: true,
      allowPositionals: false,
    }).values,
  );
  assert.deepEqual(
    [settings.cache, settings.cacheThreshold, settings.magcacheK, settings.magcacheRetention],
    ["magcache", 0.2, 3, 0.1],
  );
  const input = renderParamsInputOf(settings, false);
  const params = validateRenderParams({ ...input, prompt: "a", seconds: 1 }, defaults);
  assert.deepEqual([params.cacheThreshold, params.magcacheK, params.magcacheRetention], [0.2, 3, 0.1]);
  const { seed, size: _size, ...rest } = params;
  const spec = { jobId: "j", params: { ...rest, seed: seed.toString() }, height: 64, width: 64 };
  const back = settingsOf({ spec } as unknown as Parameters<typeof settingsOf>[0]);
  assert.deepEqual(
    [back.cache, back.cacheThreshold, back.magcacheK, back.magcacheRetention],
    ["magcache", 0.2, 3, 0.1],
  );
  // The node's side: the job's section cache, its warm-up (split graphs) and its memory estimate.
  assert.deepEqual(stepCacheOf(params), { kind: "magcache", threshold: 0.2, k: 3, retention: 0.1 });
  assert.equal(warmUpJobOf(spec as unknown as JobSpec).cache, "magcache");
  const runtime = new ModelRuntime(await openBundle(tinyBundleDir()), { ep: "cpu" });
  try {
    const withSplit = estimateForRuntime(runtime, spec as unknown as JobSpec);
    const plain = estimateForRuntime(runtime, {
      ...spec,
      params: { ...spec.params, cache: "none" },
    } as unknown as JobSpec);
    assert.ok(withSplit.peak > plain.peak, "the split graphs' weights are counted");
  } finally {
    await runtime.close();
  }

  // The recipe names the cache and its three parameters; a recipe renders with them.
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
  assert.deepEqual([r.cache, r.cache_threshold, r.magcache_k, r.magcache_retention], ["magcache", 0.2, 3, 0.1]);
  assert.deepEqual(recipeParamsInput(r), {
    cache: "magcache",
    cacheThreshold: 0.2,
    magcacheK: 3,
    magcacheRetention: 0.1,
  });
  const tea = parseRecipe(recipeText(recipe(validateRenderParams({ ...base, cache: "teacache" }, defaults))));
  assert.deepEqual([tea.cache, "magcache_k" in tea, "magcache_retention" in tea], ["teacache", false, false]);
});
