/**
 * What diffusers' encode_image feeds SigLIP: (x + 1) / 2, resized to the encoder's size with an
 * antialiased bicubic filter (a = -0.5, as PIL and torchvision use), then normalised with the
 * processor's mean and std.
 */
import { Tensor, type F32 } from "../tensor/tensor.js";
import type { BundleManifest } from "../bundle/manifest.js";

function cubic(x: number): number {
  const a = -0.5;
  x = Math.abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

/** Resampling weights from inSize to outSize along one axis (PIL's precompute_coeffs). */
function weights(inSize: number, outSize: number): { start: number; w: Float64Array }[] {
  const scale = inSize / outSize;
  const support = 2 * Math.max(scale, 1);
  const filterScale = Math.max(scale, 1);
  return Array.from({ length: outSize }, (_, i) => {
    const center = (i + 0.5) * scale;
    const start = Math.max(0, Math.floor(center - support + 0.5));
    const end = Math.min(inSize, Math.floor(center + support + 0.5));
    const w = new Float64Array(end - start);
    let sum = 0;
    for (let j = start; j < end; j++) sum += w[j - start] = cubic((j - center + 0.5) / filterScale);
    for (let j = 0; j < w.length; j++) w[j]! /= sum || 1;
    return { start, w };
  });
}

function resizeBicubic(src: Float32Array, c: number, h: number, w: number, oh: number, ow: number): Float32Array {
  const wx = weights(w, ow);
  const wy = weights(h, oh);
  const tmp = new Float64Array(c * h * ow);
  for (let ch = 0; ch < c; ch++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < ow; x++) {
        const { start, w: k } = wx[x]!;
        let acc = 0;
        for (let j = 0; j < k.length; j++) acc += k[j]! * src[(ch * h + y) * w + start + j]!;
        tmp[(ch * h + y) * ow + x] = acc;
      }
    }
  }
  const out = new Float32Array(c * oh * ow);
  for (let ch = 0; ch < c; ch++) {
    for (let y = 0; y < oh; y++) {
      const { start, w: k } = wy[y]!;
      for (let x = 0; x < ow; x++) {
        let acc = 0;
        for (let j = 0; j < k.length; j++) acc += k[j]! * tmp[(ch * h + start + j) * ow + x]!;
        out[(ch * oh + y) * ow + x] = acc;
      }
    }
  }
  return out;
}

/** pixels [1, 3, H, W] in [-1, 1] -> SigLIP input [1, 3, S, S]. */
export function siglipPixels(pixels: F32, cfg: BundleManifest["image_encoder"]): F32 {
  const [, c, h, w] = pixels.shape as [number, number, number, number];
  const f = Math.fround;
  let x: Float32Array = pixels.data.map((v) => f(f(v + 1) / 2));
  const { height: oh, width: ow } = cfg.image_size;
  if (oh !== h || ow !== w) x = resizeBicubic(x, c, h, w, oh, ow);
  const plane = oh * ow;
  const out = new Float32Array(c * plane);
  for (let ch = 0; ch < c; ch++) {
    const mean = f(cfg.image_mean[ch]!);
    const std = f(cfg.image_std[ch]!);
    for (let p = 0; p < plane; p++) out[ch * plane + p] = f(f(x[ch * plane + p]! - mean) / std);
  }
  return new Tensor("float32", [1, c, oh, ow], out);
}
