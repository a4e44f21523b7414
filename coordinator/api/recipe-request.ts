/**
 * Submissions that render a recipe again (the output options of every submission, video format
 * and frames, are mapped in job-mapping.ts). A recipe's settings replace the request's, which may then carry only output
 * options; the farm's bundle must be the recipe's (FAILED_PRECONDITION naming both digests), and
 * so must the images (checked once they are read: INVALID_ARGUMENT naming both SHA-256).
 */
import { FarmError } from "../../shared/errors.js";
import type { RenderSettings, SubmitJobRequest } from "../../proto/gen/framefarm/v1/jobs.js";
import { DEFAULT_CACHE, paramName, parseRecipe, type Recipe } from "../../shared/job/recipe.js";
import type { RenderParams, RenderParamsInput } from "../../shared/job/render-params.js";
import { parseSampler, parseUnipcVariant } from "../../shared/job/render-params.js";
import { samplerToPb, samplingModeOf, unipcVariantToPb, videoFormatToPb } from "./job-mapping.js";

/** RenderSettings fields a recipe submission may set: how the video is written, not what it shows. */
const OUTPUT_FIELDS = new Set(["format", "crf", "lossless", "saveFrames"]);

/** A proto3 field left at its default (ts-proto gives absent fields these values). */
const unset = (v: unknown): boolean => v === undefined || v === "" || v === 0 || v === false;

/** The recipe of a submission, if it has one, with the settings it stands for. */
export function recipeRequest(
  req: SubmitJobRequest,
  farm: { name: string; digest: string | undefined },
): { recipe: Recipe; settings: RenderSettings } | null {
  if (req.recipe === undefined || req.recipe === "") return null;
  const recipe = parseRecipe(req.recipe);
  if (farm.digest === undefined)
    throw new FarmError(
      "FAILED_PRECONDITION",
      "this farm does not know its bundle's digest, so it cannot check a recipe's bundle",
    );
  if (recipe.bundle.digest !== farm.digest) {
    throw new FarmError(
      "FAILED_PRECONDITION",
      `the recipe was rendered on bundle ${JSON.stringify(recipe.bundle.name)} with digest ${recipe.bundle.digest}; this farm's bundle ${JSON.stringify(farm.name)} has digest ${farm.digest}, so it cannot render the recipe again`,
    );
  }
  if (recipe.loras.length > 0)
    throw new FarmError(
      "FAILED_PRECONDITION",
      `the recipe uses LoRAs (${recipe.loras.map((l) => l.name).join(", ")}); this farm cannot load LoRAs`,
    );
  const given = req.settings ?? ({} as Partial<RenderSettings>);
  for (const [k, v] of Object.entries(given)) {
    if (OUTPUT_FIELDS.has(k) || unset(v)) continue;
    throw new FarmError(
      "INVALID_ARGUMENT",
      `settings.${k} comes from the recipe: with a recipe give only format, crf, lossless and save_frames`,
    );
  }
  const settings: RenderSettings = {
    prompt: recipe.prompt,
    ...(recipe.negative_prompt !== null ? { negativePrompt: recipe.negative_prompt } : {}),
    length: { $case: "numFrames", value: recipe.num_frames },
    mode: samplingModeOf(recipe.mode),
    steps: recipe.steps,
    guidanceScale: recipe.guidance_scale,
    trueCfgScale: recipe.true_cfg_scale,
    seed: BigInt(recipe.seed),
    latentWindowSize: recipe.latent_window_size,
    ...samplingSettingsOf(recipe),
    ...(recipe.resolution !== null
      ? { resolution: recipe.resolution }
      : { height: recipe.height, width: recipe.width }),
    fps: recipe.fps,
    ...(recipe.context_frames !== undefined ? { contextFrames: recipe.context_frames } : {}),
    vaeTiling: recipe.vae_tiling,
    crf: given.crf ?? recipe.video.crf,
    lossless: given.lossless ?? recipe.video.lossless,
    format: given.format === undefined || unset(given.format) ? videoFormatToPb(recipe.video.format) : given.format,
    saveFrames: given.saveFrames === true,
  };
  return { recipe, settings };
}

/** The recipe's sampler and prompt schedule as RenderSettings fields (validated where any request's are). */
function samplingSettingsOf(recipe: Recipe): Partial<RenderSettings> {
  const sampler = parseSampler(recipe.sampler);
  return {
    sampler: samplerToPb(sampler),
    ...(sampler === "unipc"
      ? {
          unipc: {
            variant: unipcVariantToPb(parseUnipcVariant(recipe.unipc_variant ?? undefined, sampler)),
            cfgRescale: recipe.cfg_rescale,
          },
        }
      : {}),
    ...(recipe.section_prompts !== null || recipe.prompt_blend_sections > 0
      ? {
          promptSchedule: {
            sectionPrompts: recipe.section_prompts ?? [],
            blendSections: recipe.prompt_blend_sections,
          },
        }
      : {}),
  };
}

/**
 * Render parameters a recipe sets that RenderSettings may not carry in this version (sampler, step
 * cache): added to the validator's input so that, where the validator knows them, they take effect.
 */
export function recipeParamsInput(recipe: Recipe): Partial<RenderParamsInput> {
  return {
    cache: recipe.cache,
    ...(recipe.cache_threshold !== undefined ? { cacheThreshold: recipe.cache_threshold } : {}),
    ...(recipe.magcache_k !== undefined ? { magcacheK: recipe.magcache_k } : {}),
    ...(recipe.magcache_retention !== undefined ? { magcacheRetention: recipe.magcache_retention } : {}),
  };
}

/** The validated parameters must render as the recipe says, or the farm cannot reproduce it. */
export function checkRecipeParams(recipe: Recipe, params: RenderParams): void {
  const pairs: [string, string, string][] = [
    ["sampler", parseSampler(recipe.sampler), params.sampler],
    ["cache", recipe.cache, paramName(params, "cache", DEFAULT_CACHE)],
  ];
  for (const [key, want, here] of pairs) {
    if (here !== want)
      throw new FarmError(
        "FAILED_PRECONDITION",
        `the recipe's ${key} is ${JSON.stringify(want)}, which this farm cannot use (it would render with ${JSON.stringify(here)})`,
      );
  }
}
