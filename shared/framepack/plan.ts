/**
 * The section plan of one FramePack video: how many sections, in which order, each section's
 * latent padding and the frame indices its transformer call uses, exactly as diffusers'
 * HunyuanVideoFramepackPipeline builds them. Pure: the farm's planner and the embedded renderer
 * both start from this.
 */
import { FarmError } from "../errors.js";
import type { SamplingType } from "../bundle/manifest.js";

export interface PlanInput {
  samplingType: SamplingType;
  numFrames: number;
  latentWindowSize: number;
  hasEndImage: boolean;
  /** [1x, 2x, 4x] sizes in the order the sampling type stores them (inverted [1,2,16], vanilla [16,2,1]). */
  historySizes: readonly [number, number, number];
  temporalCompression: number;
}

export interface SectionIndices {
  latents: number[];
  clean: number[];
  history2x: number[];
  history4x: number[];
}

export interface Section {
  index: number;
  isFirst: boolean;
  isLast: boolean;
  /** Inverted sampling: how many windows of blank context sit between the start image and this section. */
  latentPadding: number;
  indices: SectionIndices;
}

export interface SectionPlan extends PlanInput {
  /** Pixel frames one section's window spans: (window - 1) * temporal + 1. */
  windowNumFrames: number;
  sections: Section[];
  /** Frames blended between consecutive decoded sections. */
  overlapFrames: number;
  /** Frames of the finished video (diffusers renders whole sections, so more than numFrames). */
  outputFrames: number;
}

const range = (start: number, length: number): number[] => Array.from({ length }, (_, i) => start + i);

export function latentPaddings(numSections: number): number[] {
  if (numSections > 4) return [3, ...new Array<number>(numSections - 3).fill(2), 1, 0];
  return range(0, numSections).reverse();
}

function invertedIndices(padding: number, w: number, hs: readonly [number, number, number]): SectionIndices {
  // arange split as [prefix 1, padding, latents w, 1x, 2x, 4x]
  const latentsStart = 1 + padding;
  const oneX = latentsStart + w;
  return {
    latents: range(latentsStart, w),
    clean: [0, ...range(oneX, hs[0])],
    history2x: range(oneX + hs[0], hs[1]),
    history4x: range(oneX + hs[0] + hs[1], hs[2]),
  };
}

function vanillaIndices(w: number, hs: readonly [number, number, number]): SectionIndices {
  // arange split as [prefix 1, 4x, 2x, 1x, latents w] with hs = [4x, 2x, 1x]
  const [n4, n2, n1] = hs;
  return {
    history4x: range(1, n4),
    history2x: range(1 + n4, n2),
    clean: [0, ...range(1 + n4 + n2, n1)],
    latents: range(1 + n4 + n2 + n1, w),
  };
}

export function planSections(input: PlanInput): SectionPlan {
  const { samplingType, numFrames, latentWindowSize: w, temporalCompression: tc } = input;
  if (!Number.isInteger(numFrames) || numFrames < 1) throw new FarmError("INVALID_ARGUMENT", `num_frames must be a positive integer, got ${numFrames}`);
  if (!Number.isInteger(w) || w < 1) throw new FarmError("INVALID_ARGUMENT", `latent_window_size must be a positive integer, got ${w}`);
  if (input.hasEndImage && samplingType !== "inverted_anti_drifting") {
    throw new FarmError("INVALID_ARGUMENT", "an end image needs inverted (anti-drifting) sampling");
  }
  const windowNumFrames = (w - 1) * tc + 1;
  const n = Math.max(1, Math.ceil(numFrames / windowNumFrames));
  const paddings = latentPaddings(n);
  const sections: Section[] = range(0, n).map((k) => ({
    index: k,
    isFirst: k === 0,
    isLast: k === n - 1,
    latentPadding: samplingType === "inverted_anti_drifting" ? paddings[k]! * w : 0,
    indices: samplingType === "inverted_anti_drifting" ? invertedIndices(paddings[k]! * w, w, input.historySizes) : vanillaIndices(w, input.historySizes),
  }));
  // Generated latent frames: every section adds w; inverted prefixes the start image latent to the
  // last section, vanilla starts from it.
  const latentFrames = n * w + 1;
  const decodedFrames = (latentFrames - 1) * tc + 1;
  return {
    ...input,
    windowNumFrames,
    sections,
    overlapFrames: windowNumFrames,
    outputFrames: Math.floor((decodedFrames - 1) / tc) * tc + 1,
  };
}
