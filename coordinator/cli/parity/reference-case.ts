/**
 * A reference case: the JSON of one diffusers pipeline call, its input images, and (optionally)
 * the safetensors file of every intermediate tensor that call produced.
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import { FarmError } from "../../../shared/errors.js";
import type { Tensor } from "../../../shared/tensor/tensor.js";
import { decodeSafetensors } from "../../../shared/tensor/safetensors.js";
import {
  parseSampler,
  parseSamplingType,
  parseUnipcVariant,
  type RenderParamsInput,
} from "../../../shared/job/render-params.js";
import { samplerToPb, samplingModeOf, unipcVariantToPb } from "../../api/job-mapping.js";
import type { SubmitJobRequest } from "../../../proto/gen/framefarm/v1/jobs.js";

/** Keys a case may carry: the call's parameters, plus facts about the run that we do not need. */
const PARAM_KEYS = [
  "sampling_type",
  "seed",
  "num_frames",
  "steps",
  "prompt",
  "guidance_scale",
  "height",
  "width",
  "first_image",
  "last_image",
  "negative_prompt",
  "true_cfg_scale",
  "latent_window_size",
  // framefarm's own cases: lllyasviel's sampler and prompts that change over time.
  "sampler",
  "unipc_variant",
  "cfg_rescale",
  "cache",
  "cache_threshold",
  "magcache_k",
  "magcache_retention",
  "section_prompts",
  "prompt_blend_sections",
  // extending a video: the video file beside the case, and Studio's context frames.
  "video",
  "context_frames",
  // FramePack-eichi's section keyframes: [{"seconds": t, "image": file beside the case}, ...].
  "keyframes",
  // A run with vae.enable_tiling() (a boolean; validateRenderParams refuses anything else).
  "vae_tiling",
] as const;
const INFO_KEYS = [
  "name",
  "img_seed",
  "last_img_seed",
  "frames_shape",
  "crop_start",
  "generator",
  "reference",
  "image_generator",
  "input_video",
] as const;

export interface ReferenceCase {
  name: string;
  file: string;
  params: RenderParamsInput;
  /** The start image, or null when the case extends a video. */
  firstImage: string | null;
  lastImage: string | null;
  /** The video the case extends, or null. */
  video: string | null;
  /** Keyframes in the case's order: their times and image files. */
  keyframes: { seconds: number; image: string }[];
  /** Expected tensors by reference key; empty when the case has no .safetensors beside it. */
  expected: Map<string, Tensor>;
}

export async function loadReferenceCase(
  caseFile: string,
  options: { requireTensors?: boolean } = {},
): Promise<ReferenceCase> {
  const file = path.resolve(caseFile);
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(file, "utf8"));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new FarmError(
      code === "ENOENT" ? "NOT_FOUND" : "INVALID_ARGUMENT",
      `reference case ${file}: ${(err as Error).message}`,
      { cause: err },
    );
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw new FarmError("INVALID_ARGUMENT", `reference case ${file} must be a JSON object`);
  const json = raw as Record<string, unknown>;
  const known = new Set<string>([...PARAM_KEYS, ...INFO_KEYS]);
  const unknown = Object.keys(json).filter((k) => !known.has(k));
  if (unknown.length > 0)
    throw new FarmError("INVALID_ARGUMENT", `reference case ${file}: unknown field(s) ${unknown.join(", ")}`);
  for (const k of [
    "sampling_type",
    "seed",
    "num_frames",
    "steps",
    "prompt",
    "guidance_scale",
    "height",
    "width",
  ] as const) {
    if (json[k] === undefined || json[k] === null)
      throw new FarmError("INVALID_ARGUMENT", `reference case ${file}: ${k} is missing`);
  }
  const hasVideo = json["video"] !== undefined && json["video"] !== null;
  if (hasVideo === (json["first_image"] !== undefined && json["first_image"] !== null))
    throw new FarmError("INVALID_ARGUMENT", `reference case ${file}: give first_image or video, one of them`);
  const dir = path.dirname(file);
  const imagePath = (key: string): string => {
    const v = json[key];
    if (typeof v !== "string" || v === "" || path.isAbsolute(v) || v.split(/[\\/]/).includes("..")) {
      throw new FarmError("INVALID_ARGUMENT", `reference case ${file}: ${key} must be a file name beside the case`);
    }
    return path.join(dir, v);
  };
  const name = typeof json["name"] === "string" ? json["name"] : path.basename(file, ".json");
  const lastImage = json["last_image"] === null || json["last_image"] === undefined ? null : imagePath("last_image");
  const keyframes = keyframesOf(file, json["keyframes"], dir);
  const seed = json["seed"];
  const params: RenderParamsInput = {
    prompt: json["prompt"],
    negativePrompt: json["negative_prompt"] ?? undefined,
    numFrames: json["num_frames"],
    samplingType: json["sampling_type"],
    steps: json["steps"],
    guidanceScale: json["guidance_scale"],
    trueCfgScale: json["true_cfg_scale"] ?? 1,
    seed: typeof seed === "number" ? String(seed) : seed,
    latentWindowSize: json["latent_window_size"] ?? 9,
    height: json["height"],
    width: json["width"],
    hasEndImage: lastImage !== null,
    keyframeTimes: keyframes.map((k) => k.seconds),
    ...(json["sampler"] !== undefined ? { sampler: json["sampler"] } : {}),
    ...(json["unipc_variant"] !== undefined ? { unipcVariant: json["unipc_variant"] } : {}),
    ...(json["cfg_rescale"] !== undefined ? { cfgRescale: json["cfg_rescale"] } : {}),
    ...(json["cache"] !== undefined ? { cache: json["cache"] } : {}),
    ...(json["cache_threshold"] !== undefined ? { cacheThreshold: json["cache_threshold"] } : {}),
    ...(json["magcache_k"] !== undefined ? { magcacheK: json["magcache_k"] } : {}),
    ...(json["magcache_retention"] !== undefined ? { magcacheRetention: json["magcache_retention"] } : {}),
    ...(json["section_prompts"] !== undefined ? { sectionPrompts: json["section_prompts"] } : {}),
    ...(json["prompt_blend_sections"] !== undefined ? { promptBlendSections: json["prompt_blend_sections"] } : {}),
    ...(json["context_frames"] !== undefined ? { contextFrames: json["context_frames"] } : {}),
    ...(json["vae_tiling"] !== undefined ? { vaeTiling: json["vae_tiling"] } : {}),
  };

  const tensorsFile = path.join(dir, `${path.basename(file, ".json")}.safetensors`);
  let expected = new Map<string, Tensor>();
  try {
    expected = decodeSafetensors(await readFile(tensorsFile)).tensors;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT" || options.requireTensors === true) {
      if (err instanceof FarmError) throw err;
      throw new FarmError("NOT_FOUND", `reference tensors ${tensorsFile}: ${(err as Error).message}`, { cause: err });
    }
  }
  return {
    name,
    file,
    params,
    firstImage: hasVideo ? null : imagePath("first_image"),
    lastImage,
    video: hasVideo ? imagePath("video") : null,
    keyframes,
    expected,
  };
}

/** A case's keyframes: each a time in seconds and an image file beside the case. */
function keyframesOf(file: string, v: unknown, dir: string): { seconds: number; image: string }[] {
  if (v === undefined || v === null) return [];
  const bad = (what: string): FarmError => new FarmError("INVALID_ARGUMENT", `reference case ${file}: ${what}`);
  if (!Array.isArray(v)) throw bad("keyframes must be a list");
  return v.map((k: unknown, i) => {
    const e = (typeof k === "object" && k !== null ? k : {}) as Record<string, unknown>;
    const image = e["image"];
    if (typeof e["seconds"] !== "number") throw bad(`keyframes[${i}].seconds must be a number`);
    if (typeof image !== "string" || image === "" || path.isAbsolute(image) || image.split(/[\\/]/).includes(".."))
      throw bad(`keyframes[${i}].image must be a file name beside the case`);
    return { seconds: e["seconds"], image: path.join(dir, image) };
  });
}

/** The case as a farm submission: same parameters, exact size, lossless video for exact frames. */
export async function submitRequestFor(refCase: ReferenceCase): Promise<SubmitJobRequest> {
  const p = refCase.params;
  return {
    ...(refCase.firstImage !== null
      ? { image: { source: { $case: "data", value: await readFile(refCase.firstImage) } } }
      : {}),
    ...(refCase.video !== null ? { video: { source: { $case: "data", value: await readFile(refCase.video) } } } : {}),
    endImage:
      refCase.lastImage === null ? undefined : { source: { $case: "data", value: await readFile(refCase.lastImage) } },
    settings: {
      prompt: String(p.prompt),
      ...(typeof p.negativePrompt === "string" ? { negativePrompt: p.negativePrompt } : {}),
      length: { $case: "numFrames", value: Number(p.numFrames) },
      mode: samplingModeOf(parseSamplingType(p.samplingType, "inverted_anti_drifting")),
      steps: Number(p.steps),
      guidanceScale: Number(p.guidanceScale),
      trueCfgScale: Number(p.trueCfgScale),
      seed: BigInt(String(p.seed)),
      latentWindowSize: Number(p.latentWindowSize),
      height: Number(p.height),
      width: Number(p.width),
      lossless: true,
      ...(p.contextFrames !== undefined ? { contextFrames: Number(p.contextFrames) } : {}),
      ...(p.vaeTiling === true ? { vaeTiling: true } : {}),
      ...(p.sampler !== undefined ? { sampler: samplerToPb(parseSampler(p.sampler)) } : {}),
      ...(typeof p.cache === "string" ? { cache: p.cache } : {}),
      ...(p.cacheThreshold !== undefined ? { cacheThreshold: Number(p.cacheThreshold) } : {}),
      ...(p.magcacheK !== undefined ? { magcacheK: Number(p.magcacheK) } : {}),
      ...(p.magcacheRetention !== undefined ? { magcacheRetention: Number(p.magcacheRetention) } : {}),
      ...(p.unipcVariant !== undefined || p.cfgRescale !== undefined
        ? {
            unipc: {
              variant: unipcVariantToPb(parseUnipcVariant(p.unipcVariant, "unipc")),
              ...(p.cfgRescale !== undefined ? { cfgRescale: Number(p.cfgRescale) } : {}),
            },
          }
        : {}),
      ...(Array.isArray(p.sectionPrompts) || p.promptBlendSections !== undefined
        ? {
            promptSchedule: {
              sectionPrompts: Array.isArray(p.sectionPrompts) ? p.sectionPrompts.map(String) : [],
              ...(p.promptBlendSections !== undefined ? { blendSections: Number(p.promptBlendSections) } : {}),
            },
          }
        : {}),
    },
    keyframes: await Promise.all(
      refCase.keyframes.map(async (k) => ({
        timeSeconds: k.seconds,
        image: { source: { $case: "data" as const, value: await readFile(k.image) } },
      })),
    ),
    bundle: "",
    priority: 0,
    idempotencyKey: "",
  };
}
