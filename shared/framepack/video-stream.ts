/**
 * The finished video's frames in video order, uint8 RGB, one frame at a time as the encoder asks
 * for them: what VideoAccumulator.finish() returns, without waiting for the whole video to be
 * blended and converted first. The mux hands these to ffmpeg as they are made, so conversion and
 * encoding overlap (on the H200 host the mux after the last decode was 1.8 s of blending and
 * conversion, then 1.7 s of ffmpeg).
 *
 * Sections come in generation order; vanilla sampling generates them in video order, inverted
 * (anti-drifting) sampling from the end backwards. Between neighbours in video order the last
 * `overlap` frames of the earlier one cross-fade into the first `overlap` frames of the later one,
 * exactly as soft-append joins them. That is the accumulator's result whenever no frame lies in
 * two cross-fades, i.e. every section between the first and the last (in video order) has at least
 * twice the overlap; streamable() says whether that holds (FramePack's sections do: 8w-3 frames
 * against an overlap of 4w-3).
 */
import type { F32 } from "../tensor/tensor.js";
import type { SamplingType } from "../bundle/manifest.js";
import { blendPlane, fadeWeights } from "./soft-append.js";
import type { PlaneConverter } from "./frames.js";

/** Can these sections (generation order, frame counts) be streamed without changing a frame? */
export function streamable(frameCounts: readonly number[], overlap: number): boolean {
  const n = frameCounts.length;
  return n > 0 && frameCounts.every((t, i) => t >= (i === 0 || i === n - 1 ? overlap : 2 * overlap));
}

/** Yields the video's first `limit` frames, each a fresh uint8 [H, W, 3] buffer. */
export function* softAppendedFrames(
  sections: readonly F32[],
  samplingType: SamplingType,
  overlap: number,
  toUint8: PlaneConverter,
  limit = Infinity,
): Generator<Uint8Array> {
  for (const step of softAppendSteps(sections, samplingType, overlap, toUint8, limit))
    if ("frame" in step) yield step.frame();
}

/**
 * Frames [0, frames) of sections[section] (generation order) are final: resolves when they are,
 * or undefined when they already are.
 */
export type FramesReady = (section: number, frames: number) => Promise<void> | undefined;

/**
 * softAppendedFrames for sections still being decoded: before each frame, waits until the frames
 * it is made of are final (`ready`), so a section's frames are encoded while its last tiles decode.
 */
export async function* softAppendedFramesWhenReady(
  sections: readonly F32[],
  samplingType: SamplingType,
  overlap: number,
  toUint8: PlaneConverter,
  ready: FramesReady,
  limit = Infinity,
): AsyncGenerator<Uint8Array> {
  for (const step of softAppendSteps(sections, samplingType, overlap, toUint8, limit)) {
    if ("frame" in step) yield step.frame();
    else await ready(step.section, step.frames);
  }
}

/** What making the next frame needs (frames [0, frames) of a section, generation order), then the frame. */
type SoftAppendStep = { section: number; frames: number } | { frame: () => Uint8Array };

function* softAppendSteps(
  sections: readonly F32[],
  samplingType: SamplingType,
  overlap: number,
  toUint8: PlaneConverter,
  limit: number,
): Generator<SoftAppendStep> {
  const counts = sections.map((s) => {
    if (s.shape.length !== 5 || s.shape[0] !== 1 || s.shape[1] !== 3)
      throw new RangeError(`expected a [1, 3, T, H, W] video, got ${s.describe()}`);
    return s.shape[2]!;
  });
  if (!streamable(counts, overlap))
    throw new RangeError(`sections of ${counts.join(", ")} frames overlap by ${overlap}: not streamable`);
  const inverted = samplingType === "inverted_anti_drifting";
  const ordered = inverted ? [...sections].reverse() : [...sections];
  // Video order -> generation order, for what a frame needs.
  const generation = (i: number): number => (inverted ? sections.length - 1 - i : i);
  const [h, w] = [ordered[0]!.shape[3]!, ordered[0]!.shape[4]!];
  for (const s of ordered)
    if (s.shape[3] !== h || s.shape[4] !== w)
      throw new RangeError(`soft append: ${ordered[0]!.describe()} and ${s.describe()} differ outside the time axis`);
  const size = h * w;
  const plane = (v: F32, ch: number, i: number): Float32Array => {
    const t = v.shape[2]!;
    return v.data.subarray((ch * t + i) * size, (ch * t + i + 1) * size);
  };
  const weights = fadeWeights(overlap);
  const scratch = new Float32Array(size);
  let emitted = 0;
  const frame = (source: (ch: number) => Float32Array): Uint8Array => {
    const out = new Uint8Array(size * 3);
    for (let ch = 0; ch < 3; ch++) toUint8(source(ch), out, ch);
    return out;
  };
  const last = ordered.length - 1;
  for (let i = 0; i <= last && emitted < limit; i++) {
    const v = ordered[i]!;
    const t = v.shape[2]!;
    // Its own frames: after the cross-fade with the previous section, before the one with the next.
    const from = i === 0 ? 0 : overlap;
    const to = i === last ? t : t - overlap;
    for (let j = from; j < to && emitted < limit; j++, emitted++) {
      yield { section: generation(i), frames: j + 1 };
      yield { frame: () => frame((ch) => plane(v, ch, j)) };
    }
    if (i === last) break;
    const next = ordered[i + 1]!;
    for (let k = 0; k < overlap && emitted < limit; k++, emitted++) {
      yield { section: generation(i), frames: t - overlap + k + 1 };
      yield { section: generation(i + 1), frames: k + 1 };
      yield {
        frame: () =>
          frame((ch) => {
            blendPlane(scratch, plane(v, ch, t - overlap + k), plane(next, ch, k), weights[k]!);
            return scratch;
          }),
      };
    }
  }
}
