/**
 * The finished video: diffusers trims the decoded frames to a whole number of VAE time steps
 * plus one, and its postprocessing maps [-1, 1] to uint8 RGB frames [T, H, W, 3]:
 * VaeImageProcessor.denormalize is (x * 0.5 + 0.5).clamp(0, 1) in float32 torch, and
 * numpy_to_pil is (x * 255).round().astype(uint8) in float32 numpy, where round() is half-to-even.
 */
import { Tensor, type F32 } from "../tensor/tensor.js";
import { yieldToEventLoop } from "../event-loop.js";

/** Half-to-even rounding, as numpy's round(). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  // Math.round sends ties up; move an odd tie result back down.
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** (frames - 1) // temporal * temporal + 1 */
export function trimFrameCount(frames: number, temporalCompression: number): number {
  if (!Number.isInteger(frames) || frames < 1)
    throw new RangeError(`frame count must be a positive integer, got ${frames}`);
  return Math.floor((frames - 1) / temporalCompression) * temporalCompression + 1;
}

/**
 * Writes one colour plane (one channel of one frame, planar float32) into interleaved RGB bytes:
 * dst[dstOffset + 3p] for every pixel p. The two conversions are written out as loops of their own
 * (no per-pixel callback): they run over every pixel of every frame of a job.
 */
export type PlaneConverter = (src: Float32Array, dst: Uint8Array, dstOffset: number) => void;

const f = Math.fround;

/** diffusers: round_half_even(clamp(x * 0.5 + 0.5, 0, 1) * 255). */
export const diffusersPlaneToUint8: PlaneConverter = (src, dst, dstOffset) => {
  const n = src.length;
  for (let p = 0, d = dstOffset; p < n; p++, d += 3) {
    let x = f(f(src[p]! * 0.5) + 0.5);
    // Comparisons rather than Math.min/max (faster here); NaN passes through both, as torch's clamp keeps it.
    x = x > 1 ? 1 : x < 0 ? 0 : x;
    const y = f(x * 255);
    // Ties up (y + 0.5 is exact in float64), then back down to even: numpy's round().
    let r = Math.floor(y + 0.5);
    if (r - y === 0.5 && (r & 1) === 1) r -= 1;
    // A Uint8Array stores NaN as 0, as numpy's cast of NaN to uint8 gives.
    dst[d] = r;
  }
};

/** lllyasviel's demo: trunc(clamp(x, -1, 1) * 127.5 + 127.5) in float32 (torch .to(uint8)). */
export const demoPlaneToUint8: PlaneConverter = (src, dst, dstOffset) => {
  const n = src.length;
  for (let p = 0, d = dstOffset; p < n; p++, d += 3) {
    const v = src[p]!;
    // NaN passes the clamp and `| 0` makes it 0; values are in [0, 255], so `| 0` truncates.
    dst[d] = f(f((v > 1 ? 1 : v < -1 ? -1 : v) * 127.5) + 127.5) | 0;
  }
};

/** video [1, 3, T, H, W] -> uint8 [keep, H, W, 3], plane by plane (planar to interleaved); yields after each plane. */
function* convertPlanes(
  video: F32,
  keep: number,
  plane: PlaneConverter,
  done: (t: Tensor<"uint8">) => void,
): Generator<void> {
  if (video.shape.length !== 5 || video.shape[0] !== 1)
    throw new RangeError(`expected a [1, 3, T, H, W] video, got ${video.describe()}`);
  const [, c, t, h, w] = video.shape as [number, number, number, number, number];
  if (c !== 3) throw new RangeError(`expected 3 colour channels, got ${c}`);
  const frames = Math.min(keep, t);
  const size = h * w;
  const out = new Uint8Array(frames * size * 3);
  for (let ch = 0; ch < 3; ch++) {
    for (let i = 0; i < frames; i++) {
      const src = (ch * t + i) * size;
      plane(video.data.subarray(src, src + size), out, i * size * 3 + ch);
      yield;
    }
  }
  done(new Tensor("uint8", [frames, h, w, 3], out));
}

function toUint8Frames(video: F32, keep: number, plane: PlaneConverter): Tensor<"uint8"> {
  let result: Tensor<"uint8"> | undefined;
  for (const _ of convertPlanes(video, keep, plane, (t) => (result = t)));
  return result!;
}

/** The sampler's frame conversion (frameConverterFor), yielding to the event loop every few planes. */
export async function toUint8FramesAsync(
  video: F32,
  keep: number,
  sampler: string | undefined,
): Promise<Tensor<"uint8">> {
  let result: Tensor<"uint8"> | undefined;
  let planes = 0;
  for (const _ of convertPlanes(video, keep, planeConverterFor(sampler), (t) => (result = t)))
    if (++planes % 4 === 0) await yieldToEventLoop();
  return result!;
}

/** video [1, 3, T, H, W] in [-1, 1] -> uint8 [keep, H, W, 3]: round_half_even(clamp(x * 0.5 + 0.5, 0, 1) * 255). */
export function videoToUint8Frames(video: F32, keep: number): Tensor<"uint8"> {
  return toUint8Frames(video, keep, diffusersPlaneToUint8);
}

/**
 * lllyasviel's demo's frames (save_bcthw_as_mp4): clamp(x, -1, 1) * 127.5 + 127.5 in float32,
 * then .to(torch.uint8), which truncates toward zero. NaN becomes 0.
 */
export function videoToUint8FramesDemo(video: F32, keep: number): Tensor<"uint8"> {
  return toUint8Frames(video, keep, demoPlaneToUint8);
}

export type FrameConverter = (video: F32, keep: number) => Tensor<"uint8">;

/** The frame conversion of a sampler: diffusers' postprocessing, or the demo's (unipc). */
export const frameConverterFor = (sampler: string | undefined): FrameConverter =>
  sampler === "unipc" ? videoToUint8FramesDemo : videoToUint8Frames;

/** The same, one plane at a time (VideoAccumulator). */
export const planeConverterFor = (sampler: string | undefined): PlaneConverter =>
  sampler === "unipc" ? demoPlaneToUint8 : diffusersPlaneToUint8;
