/**
 * Prompts that change over the video: FramePack-Studio's timed prompts ("[0s: a man waves]
 * [2s: he turns away]", or "[1s-3s: ...]" with an explicit end) and per-section prompts, with an
 * optional blend of the text embeddings over a number of sections after each change.
 *
 * Rules (each broken one is INVALID_ARGUMENT naming it):
 *   - a prompt is timed when it starts with "[<number>s"; it is then nothing but segments
 *     "[<start>s: text]" / "[<start>s-<end>s: text]" separated by white space;
 *   - the first segment starts at 0s; starts increase; a segment ends where the next starts (or at
 *     its explicit end, which may not overlap the next nor leave a gap); the last reaches the end;
 *   - no segment starts or ends past the video's end (its length as asked: frames / fps).
 *
 * Which prompt conditions a section: the one in force at the middle of the section's span of
 * video time. Section k of the plan is generated in plan order; in inverted (anti-drifting)
 * sampling the plan runs from the end of the video back, so plan section k covers video-time
 * section n-1-k. Video-time section j spans latent frames [1 + j*w, 1 + (j+1)*w), which is
 * [j, j+1) * w * temporal_compression / fps seconds.
 *
 * Blending over B sections: the B video-time sections that start at a prompt change are
 * conditioned on (1 - a) * previous + a * new with a = (i + 1) / (B + 1) for the i-th of them
 * (i = 0..B-1), so the new prompt is reached gradually and holds alone from the (B+1)-th section.
 * Embeddings are blended with their padding zeroed and the union of the two attention masks, as
 * lllyasviel's zero-padded text embeddings (which FramePack-Studio blends) would be.
 */
import { FarmError } from "../errors.js";
import { Tensor, type F32 } from "../tensor/tensor.js";
import type { SectionPlan } from "../framepack/plan.js";

export interface PromptSegment {
  /** Seconds from the video's start, [start, end). */
  start: number;
  end: number;
  prompt: string;
}

const bad = (message: string): FarmError => new FarmError("INVALID_ARGUMENT", message);
const secs = (v: number): string => `${Number(v.toFixed(3))}s`;

const TIMED_START = /^\s*\[\s*\d+(?:\.\d+)?\s*s/;
const SEGMENT = /\[\s*(\d+(?:\.\d+)?)\s*s\s*(?:-\s*(\d+(?:\.\d+)?)\s*s\s*)?:([^\][]*)\]/y;

/** True when the prompt uses the timed syntax. */
export const isTimedPrompt = (text: string): boolean => TIMED_START.test(text);

/**
 * Reads a timed prompt against a video of `duration` seconds; null for a plain prompt. The
 * segments come back in time order, each with its end filled in.
 */
export function parseTimedPrompt(text: string, duration: number): PromptSegment[] | null {
  if (!isTimedPrompt(text)) return null;
  const raw: { start: number; end: number | null; prompt: string; at: number }[] = [];
  let at = 0;
  while (at < text.length) {
    const ws = /\s*/y;
    ws.lastIndex = at;
    ws.exec(text);
    at = ws.lastIndex;
    if (at >= text.length) break;
    SEGMENT.lastIndex = at;
    const m = SEGMENT.exec(text);
    if (m === null) {
      throw bad(
        `prompt: cannot read the timed prompt at character ${at + 1} (${JSON.stringify(text.slice(at, at + 24))}): expected [<seconds>s: text] or [<start>s-<end>s: text]`,
      );
    }
    const start = Number(m[1]);
    const end = m[2] === undefined ? null : Number(m[2]);
    const prompt = m[3]!.trim();
    if (prompt === "") throw bad(`prompt: the timed prompt at ${secs(start)} has no text`);
    if (end !== null && end <= start)
      throw bad(`prompt: the timed prompt ${secs(start)}-${secs(end)} ends before it starts`);
    raw.push({ start, end, prompt, at });
    at = SEGMENT.lastIndex;
  }
  const first = raw[0]!;
  if (first.start !== 0)
    throw bad(`prompt: the first timed prompt starts at ${secs(first.start)}; the video's start (0s) needs a prompt`);
  const segments: PromptSegment[] = [];
  for (let i = 0; i < raw.length; i++) {
    const s = raw[i]!;
    const next = raw[i + 1];
    if (s.start >= duration)
      throw bad(`prompt: the timed prompt at ${secs(s.start)} starts at or after the video's end (${secs(duration)})`);
    if (s.end !== null && s.end > duration + 1e-9)
      throw bad(
        `prompt: the timed prompt ${secs(s.start)}-${secs(s.end)} ends after the video's end (${secs(duration)})`,
      );
    if (next !== undefined) {
      if (next.start <= s.start)
        throw bad(
          `prompt: the timed prompts at ${secs(s.start)} and ${secs(next.start)} overlap (starts must increase)`,
        );
      if (s.end !== null && s.end > next.start)
        throw bad(
          `prompt: the timed prompt ${secs(s.start)}-${secs(s.end)} overlaps the one starting at ${secs(next.start)}`,
        );
      if (s.end !== null && s.end < next.start)
        throw bad(`prompt: nothing is prompted from ${secs(s.end)} to ${secs(next.start)}`);
    } else if (s.end !== null && s.end < duration - 1e-9) {
      throw bad(`prompt: nothing is prompted from ${secs(s.end)} to the video's end (${secs(duration)})`);
    }
    segments.push({ start: s.start, end: next?.start ?? duration, prompt: s.prompt });
  }
  return segments;
}

/** What conditions one section: a prompt (index into `prompts`), possibly blended from another. */
export interface SectionPrompt {
  prompt: number;
  /** Present while blending: (1 - alpha) * blendFrom + alpha * prompt. */
  blendFrom?: number;
  alpha?: number;
}

export interface PromptSchedule {
  /** Distinct prompt texts, each encoded once; [0] is the first in video time. */
  prompts: string[];
  /** By plan (generation) section index. */
  sections: SectionPrompt[];
}

export interface PromptScheduleParams {
  prompt: string;
  promptSegments: PromptSegment[] | null;
  sectionPrompts: string[] | null;
  promptBlendSections: number;
  fps: number;
}

/** Plan section k's index in video-time order. */
export const videoTimeIndex = (plan: SectionPlan, k: number): number =>
  plan.samplingType === "inverted_anti_drifting" ? plan.sections.length - 1 - k : k;

/** The prompt of every section; throws INVALID_ARGUMENT when section prompts do not fit the plan. */
export function promptSchedule(params: PromptScheduleParams, plan: SectionPlan): PromptSchedule {
  const n = plan.sections.length;
  let byTime: string[];
  if (params.sectionPrompts !== null && params.sectionPrompts !== undefined) {
    if (params.sectionPrompts.length !== n) {
      throw bad(
        `${params.sectionPrompts.length} section prompts given, but the video has ${n} section${n === 1 ? "" : "s"} (one prompt each, in video-time order)`,
      );
    }
    byTime = [...params.sectionPrompts];
  } else if (params.promptSegments !== null && params.promptSegments !== undefined) {
    const segs = params.promptSegments;
    const secondsPerSection = (plan.latentWindowSize * plan.temporalCompression) / params.fps;
    byTime = Array.from({ length: n }, (_, j) => {
      const mid = (j + 0.5) * secondsPerSection;
      // Sections past the asked length (whole sections) keep the last prompt.
      return (segs.find((s) => mid >= s.start && mid < s.end) ?? segs[segs.length - 1]!).prompt;
    });
  } else {
    byTime = new Array<string>(n).fill(params.prompt);
  }
  const prompts: string[] = [];
  const index = byTime.map((p) => {
    let i = prompts.indexOf(p);
    if (i < 0) i = prompts.push(p) - 1;
    return i;
  });
  const blend = params.promptBlendSections ?? 0;
  const timeSections: SectionPrompt[] = index.map((p, j) => {
    if (blend > 0) {
      for (let c = j; c >= 1 && j - c < blend; c--) {
        if (index[c] !== index[c - 1]) return { prompt: p, blendFrom: index[c - 1]!, alpha: (j - c + 1) / (blend + 1) };
      }
    }
    return { prompt: p };
  });
  return { prompts, sections: plan.sections.map((_, k) => timeSections[videoTimeIndex(plan, k)]!) };
}

export interface TextEmbeddings {
  embeds: F32;
  mask: F32;
  pooled: F32;
}

/**
 * (1 - alpha) * from + alpha * to in float32 (alpha rounded to float32 as a torch scalar):
 * embeddings with each one's padding zeroed, the union of the masks, pooled outputs as they are.
 */
export function blendEmbeddings(from: TextEmbeddings, to: TextEmbeddings, alpha: number): TextEmbeddings {
  const f = Math.fround;
  const a = f(alpha);
  const keep = f(1 - alpha);
  const [, len, dim] = from.embeds.shape as [number, number, number];
  if (to.embeds.shape[1] !== len || to.embeds.shape[2] !== dim)
    throw new RangeError(`blend: embeddings ${from.embeds.describe()} and ${to.embeds.describe()} differ`);
  const embeds = new Float32Array(from.embeds.numel);
  const mask = new Float32Array(from.mask.numel);
  for (let t = 0; t < len; t++) {
    const mf = from.mask.data[t]! !== 0;
    const mt = to.mask.data[t]! !== 0;
    mask[t] = mf || mt ? 1 : 0;
    for (let d = 0; d < dim; d++) {
      const i = t * dim + d;
      const x = mf ? from.embeds.data[i]! : 0;
      const y = mt ? to.embeds.data[i]! : 0;
      embeds[i] = f(f(keep * x) + f(a * y));
    }
  }
  const pooled = new Float32Array(from.pooled.numel);
  for (let i = 0; i < pooled.length; i++) pooled[i] = f(f(keep * from.pooled.data[i]!) + f(a * to.pooled.data[i]!));
  return {
    embeds: new Tensor("float32", from.embeds.shape, embeds),
    mask: new Tensor("float32", from.mask.shape, mask),
    pooled: new Tensor("float32", from.pooled.shape, pooled),
  };
}

/** The conditioning of one section from the distinct prompts' embeddings. */
export function sectionEmbeddings(
  schedule: PromptSchedule,
  k: number,
  encoded: readonly TextEmbeddings[],
): TextEmbeddings {
  const s = schedule.sections[k];
  if (s === undefined) throw new RangeError(`no section ${k} in the prompt schedule`);
  const to = encoded[s.prompt];
  if (to === undefined) throw new RangeError(`prompt ${s.prompt} was not encoded`);
  if (s.blendFrom === undefined || s.alpha === undefined) return to;
  return blendEmbeddings(encoded[s.blendFrom]!, to, s.alpha);
}
