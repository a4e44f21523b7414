/**
 * Keyframes: images the video passes through, FramePack-eichi's section keyframes placed by time.
 * Inverted (anti-drifting) sampling only, as in eichi (its F1 mode has none).
 *
 * eichi (webui/endframe_ichi.py, worker) numbers its sections in generation order and, for
 * section i, puts in the packed context's first clean slot (clean_latents_pre, where lllyasviel's
 * demo and diffusers put the start image's latent) the latent of the keyframe with the smallest
 * section number >= i, or the start image's latent when there is none. In video time: a section
 * takes the latest keyframe at or before it. The last section still prefixes the start image's own
 * latent to the video, and the end image (if any) still stands in for the first generated
 * section's 1x history: the two meet only there, in different slots.
 *
 * framefarm places keyframes by time instead of by number: a keyframe at t seconds belongs to
 * video-time section j = floor(t * fps / (window * temporal_compression)), the section whose span
 * [j, j+1) * window * temporal / fps holds t (timed-prompts.ts reads section times the same way);
 * plan section k covers video-time section n-1-k.
 *
 * The VAE posterior samples of the keyframe images are drawn after the start and end images', in
 * eichi's order: by section number, which is plan order (latest in time first).
 *
 * Rules (each broken one is INVALID_ARGUMENT naming it): vanilla sampling takes none; times are
 * finite, from 0 and before the video's end (its length as asked), strictly increasing; each lies
 * in a section of the plan (the demo's section count may cover less than the asked length); no two
 * share a section.
 */
import { FarmError } from "../errors.js";
import type { SamplingType } from "../bundle/manifest.js";
import type { SectionPlan } from "../framepack/plan.js";

/** Generous: one keyframe per section at most anyway; each is an image of up to 50 MiB. */
export const MAX_KEYFRAMES = 256;

const bad = (message: string): FarmError => new FarmError("INVALID_ARGUMENT", message);
const secs = (v: number): string => `${Number(v.toFixed(3))}s`;

/** How a keyframe is named in messages: 1-based, with its time. */
export const keyframeLabel = (i: number, time?: number): string =>
  time === undefined || !Number.isFinite(time) ? `keyframe ${i + 1}` : `keyframe ${i + 1} (at ${secs(time)})`;

/** The keyframes' times, checked against the video's length and sampling type; [] when none. */
export function parseKeyframeTimes(v: unknown, duration: number, samplingType: SamplingType): number[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw bad("keyframe times must be a list of seconds");
  if (v.length === 0) return [];
  if (v.length > MAX_KEYFRAMES) throw bad(`at most ${MAX_KEYFRAMES} keyframes, got ${v.length}`);
  if (samplingType === "vanilla")
    throw bad("keyframes need inverted (anti-drifting) sampling; vanilla (F1) sampling cannot use them");
  const times = v.map((t, i) => {
    if (typeof t !== "number" || !Number.isFinite(t))
      throw bad(`${keyframeLabel(i)}: its time must be a finite number of seconds, got ${String(t)}`);
    if (t < 0) throw bad(`${keyframeLabel(i)}: its time ${secs(t)} is before the video's start (0s)`);
    if (t >= duration)
      throw bad(`${keyframeLabel(i)}: its time ${secs(t)} is at or after the video's end (${secs(duration)})`);
    return t;
  });
  for (let i = 1; i < times.length; i++) {
    if (times[i]! <= times[i - 1]!)
      throw bad(
        `${keyframeLabel(i, times[i])} is not after ${keyframeLabel(i - 1, times[i - 1])}: give keyframes in time order`,
      );
  }
  return times;
}

/** The video-time section each keyframe belongs to; INVALID_ARGUMENT when one is past the plan or two share one. */
export function keyframeSections(plan: SectionPlan, times: readonly number[], fps: number): number[] {
  const n = plan.sections.length;
  const span = (plan.latentWindowSize * plan.temporalCompression) / fps;
  // A hair of slack: 2.4 s at 30 fps and 36 frames a section is 1.9999999999999998 sections in floats.
  const sections = times.map((t) => Math.floor((t * fps) / (plan.latentWindowSize * plan.temporalCompression) + 1e-9));
  sections.forEach((j, i) => {
    if (j >= n)
      throw bad(
        `${keyframeLabel(i, times[i])} is past the video's last section, which ends at ${secs(n * span)} (${n} section${n === 1 ? "" : "s"} of ${secs(span)})`,
      );
    if (i > 0 && sections[i - 1] === j)
      throw bad(
        `${keyframeLabel(i - 1, times[i - 1])} and ${keyframeLabel(i, times[i])} fall in the same section (${secs(j * span)} to ${secs((j + 1) * span)}); a section takes one keyframe`,
      );
  });
  return sections;
}

export interface KeyframeSchedule {
  /** By plan section: the keyframe (index into the job's keyframes) in force there, or null for the start image. */
  bySection: (number | null)[];
  /** Keyframe indices in the order their posterior samples are drawn (plan order, eichi's). */
  drawOrder: number[];
}

/** Which keyframe each plan section takes, and in which order the keyframes are sampled. */
export function keyframeSchedule(plan: SectionPlan, times: readonly number[], fps: number): KeyframeSchedule {
  const n = plan.sections.length;
  const sections = keyframeSections(plan, times, fps);
  const toPlan = (j: number): number => n - 1 - j;
  const bySection = plan.sections.map((s) => {
    // eichi: the keyframe of the smallest plan (section) number >= this one's.
    let best: number | null = null;
    sections.forEach((j, i) => {
      if (toPlan(j) >= s.index && (best === null || toPlan(j) < toPlan(sections[best]!))) best = i;
    });
    return best;
  });
  const drawOrder = sections.map((_, i) => i).sort((a, b) => toPlan(sections[a]!) - toPlan(sections[b]!));
  return { bySection, drawOrder };
}
