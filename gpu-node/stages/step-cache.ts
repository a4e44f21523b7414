/**
 * Step caches over the step-cache graphs (framefarm_export.step_cache_graphs; step-cache-graphs.ts):
 * TeaCache (teacache.ts) and MagCache (magcache.ts). Both decide per transformer call whether the
 * blocks run (transformer_residual, its residual kept) or are skipped (transformer_skip: the kept
 * residual added to the hidden states, then norm_out and proj_out).
 */
import type { F32 } from "../../shared/tensor/tensor.js";
import type { Feed } from "../runtime/onnx-model.js";
import type { ModelRuntime } from "../runtime/model-runtime.js";
import {
  DEFAULT_MAGCACHE_K,
  DEFAULT_MAGCACHE_RETENTION,
  defaultCacheThreshold,
  type CacheName,
  type RenderParams,
} from "../../shared/job/render-params.js";
import { TeaCache, type ComputeDtype } from "./teacache.js";
import { MagCache } from "./magcache.js";
import { STEADY_TRANSFORMER_FEEDS } from "./transformer-feeds.js";

export interface StepCacheCall {
  noisePred: F32;
  /** Whether the blocks ran (false: the cached residual was reused). */
  computed: boolean;
}

/** One section's cache state: made before each section, called once per transformer call. */
export interface StepCache {
  run(feeds: Record<string, Feed>): Promise<StepCacheCall>;
  /** Per transformer call of the section: 1 if the blocks ran, 0 if skipped. */
  readonly computed: number[];
  /** Frees what the cache keeps between calls (the section is done). */
  release(): void;
}

/** A section's step cache and its parameters (--cache teacache | magcache). */
export type StepCacheOptions =
  { kind: "teacache"; threshold: number } | { kind: "magcache"; threshold: number; k: number; retention: number };

/** The name a cache's per-call decisions are probed under: section<k>.<name>. */
export const computedProbeName = (kind: Exclude<CacheName, "none">): string => `${kind}_computed`;

/** A job's step cache, or undefined without one (records from before a parameter get its default). */
export function stepCacheOf(
  p: Partial<Pick<RenderParams, "cache" | "cacheThreshold" | "magcacheK" | "magcacheRetention">>,
): StepCacheOptions | undefined {
  if (p.cache === "teacache")
    return { kind: "teacache", threshold: p.cacheThreshold ?? defaultCacheThreshold("teacache") };
  if (p.cache === "magcache")
    return {
      kind: "magcache",
      threshold: p.cacheThreshold ?? defaultCacheThreshold("magcache"),
      k: p.magcacheK ?? DEFAULT_MAGCACHE_K,
      retention: p.magcacheRetention ?? DEFAULT_MAGCACHE_RETENTION,
    };
  return undefined;
}

/**
 * The transformer call of one section's sampling loop: the single graph, or the step cache over
 * its graphs when `options` is given (then `cache` holds the section's decisions). `release` when
 * the section's calls are done.
 */
export async function transformerCall(
  runtime: Pick<ModelRuntime, "model"> & { bundle?: Pick<ModelRuntime["bundle"], "manifest"> },
  steps: number,
  options: StepCacheOptions | undefined,
  /** Hears session.run's own time for each call of the single graph (the rest of a step is host work). */
  onRun?: (runMs: number) => void,
): Promise<{ call(feeds: Record<string, Feed>): Promise<F32>; cache?: StepCache; release(): void }> {
  if (options === undefined) {
    const model = await runtime.model("transformer");
    return {
      call: async (feeds) => {
        const { outputs, runMs } = await model.runTimed(feeds, STEADY_TRANSFORMER_FEEDS);
        onRun?.(runMs);
        return outputs.noise_pred!;
      },
      release: () => undefined,
    };
  }
  let cache: StepCache;
  if (options.kind === "magcache") {
    cache = new MagCache(runtime, {
      numSteps: steps,
      threshold: options.threshold,
      k: options.k,
      retention: options.retention,
    });
  } else {
    const dtype: ComputeDtype = runtime.bundle?.manifest.components.transformer_change?.modulated_dtype ?? "fp32";
    cache = new TeaCache(runtime, options.threshold, steps, dtype);
  }
  return { call: async (feeds) => (await cache.run(feeds)).noisePred, cache, release: () => cache.release() };
}
