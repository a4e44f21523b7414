/**
 * The finished video: diffusers trims the decoded frames to a whole number of VAE time steps
 * plus one, and its postprocessing maps [-1, 1] to uint8 RGB frames [T, H, W, 3].
 */
import { Tensor, type F32 } from "../tensor/tensor.js";

export function trimFrameCount(frames: number, temporalCompression: number): number {
  return Math.floor((frames - 1) / temporalCompression) * temporalCompression + 1;
}

/** video [1, 3, T, H, W] in [-1, 1] -> uint8 [keep, H, W, 3]: round(clamp(x * 0.5 + 0.5, 0, 1) * 255). */
export function videoToUint8Frames(video: F32, keep: number): Tensor<"uint8"> {
  const [, c, t, h, w] = video.shape as [number, number, number, number, number];
  if (c !== 3) throw new RangeError(`expected 3 colour channels, got ${c}`);
  const frames = Math.min(keep, t);
  const plane = h * w;
  const out = new Uint8Array(frames * plane * 3);
  const f = Math.fround;
  for (let ch = 0; ch < 3; ch++) {
    for (let i = 0; i < frames; i++) {
      const src = (ch * t + i) * plane;
      const dst = i * plane * 3 + ch;
      for (let p = 0; p < plane; p++) {
        const x = Math.min(1, Math.max(0, f(f(video.data[src + p]! * 0.5) + 0.5)));
        out[dst + p * 3] = Math.round(f(x * 255));
      }
    }
  }
  return new Tensor("uint8", [frames, h, w, 3], out);
}
