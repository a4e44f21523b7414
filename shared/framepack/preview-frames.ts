/**
 * A section preview's frames: the decoded video averaged over k x k pixel blocks, k the largest
 * whole factor that keeps the longer side at least `maxSide` (none below 2 x maxSide), then the
 * sampler's uint8 conversion. A preview is small H.264 whatever the job's size, so converting every
 * pixel of the full-size video first was wasted: at 640x640 it was ~1.3 s of the decode task's
 * thread on the H200 node, beside the section's store, in the tail the finished video waits for.
 * ffmpeg still scales the result to the preview's size when it is larger (writeVideoObject).
 */
import { Tensor, type F32 } from "../tensor/tensor.js";
import { yieldToEventLoop } from "../event-loop.js";
import { planeConverterFor } from "./frames.js";

/** The block side previewFramesAsync averages over for a video of h x w and a preview of maxSide. */
export function previewBlock(height: number, width: number, maxSide: number): number {
  return Math.max(1, Math.floor(Math.max(height, width) / maxSide));
}

/** video [1, 3, T, H, W] -> uint8 [keep, H / k, W / k, 3] (rounded down to even), k = previewBlock(H, W, maxSide). */
export async function previewFramesAsync(
  video: F32,
  keep: number,
  maxSide: number,
  sampler: string | undefined,
): Promise<Tensor<"uint8">> {
  if (video.shape.length !== 5 || video.shape[0] !== 1 || video.shape[1] !== 3)
    throw new RangeError(`expected a [1, 3, T, H, W] video, got ${video.describe()}`);
  const [, , t, h, w] = video.shape as [number, number, number, number, number];
  const k = previewBlock(h, w, maxSide);
  // Even sides, as H.264 wants them (a job's own sides are multiples of 16, so only k > 1 can make one odd).
  const even = (n: number): number => (k === 1 ? n : Math.floor(n / k / 2) * 2);
  const [oh, ow] = [even(h), even(w)];
  const frames = Math.min(keep, t);
  const toUint8 = planeConverterFor(sampler);
  const out = new Uint8Array(frames * oh * ow * 3);
  const plane = new Float32Array(oh * ow);
  const scale = 1 / (k * k);
  for (let ch = 0; ch < 3; ch++) {
    for (let i = 0; i < frames; i++) {
      const src = video.data.subarray((ch * t + i) * h * w, (ch * t + i + 1) * h * w);
      if (k === 1) plane.set(src);
      else averageBlocks(src, w, k, plane, oh, ow, scale);
      toUint8(plane, out, i * oh * ow * 3 + ch);
      if ((ch * frames + i) % 8 === 7) await yieldToEventLoop();
    }
  }
  return new Tensor("uint8", [frames, oh, ow, 3], out);
}

function averageBlocks(
  src: Float32Array,
  w: number,
  k: number,
  dst: Float32Array,
  oh: number,
  ow: number,
  scale: number,
): void {
  if (k === 2) {
    // The common case (640 to 960 pixel sides), written out: three times faster than the loop below.
    for (let y = 0; y < oh; y++) {
      const [r0, r1, o] = [2 * y * w, (2 * y + 1) * w, y * ow];
      for (let x = 0, a = 0; x < ow; x++, a += 2)
        dst[o + x] = (src[r0 + a]! + src[r0 + a + 1]! + src[r1 + a]! + src[r1 + a + 1]!) * 0.25;
    }
    return;
  }
  for (let y = 0; y < oh; y++)
    for (let x = 0; x < ow; x++) {
      let s = 0;
      for (let dy = 0; dy < k; dy++) for (let dx = 0, at = (y * k + dy) * w + x * k; dx < k; dx++) s += src[at + dx]!;
      dst[y * ow + x] = s * scale;
    }
}
