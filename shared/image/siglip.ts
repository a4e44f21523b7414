/**
 * What diffusers' `encode_image` feeds SigLIP: `image = (image + 1) / 2`, then
 * `SiglipImageProcessor(images=image, do_rescale=False)`. transformers 5 runs the fast (torchvision)
 * processor: `F.resize(size, interpolation=BICUBIC, antialias=True)` on the float tensor, i.e.
 * torch's `_upsample_bicubic2d_aa`, then `(x - mean) / std`. No clamping for float input.
 *
 * The resize here follows torch's separable antialiased kernel: width first, then height, a side
 * that keeps its size is left alone (so the same size is the identity); scale = in / out in
 * float32; support = 2 * max(scale, 1) (bicubic, Keys a = -0.5) or max(scale, 1) (bilinear);
 * weights computed and normalised in float32, sums accumulated in float32.
 */
import { FarmError } from "../errors.js";
import { Tensor, type F32 } from "../tensor/tensor.js";
import type { BundleManifest } from "../bundle/manifest.js";

const f = Math.fround;

export type AaMode = "bicubic" | "bilinear";

function bicubicAa(x: number): number {
  const a = -0.5;
  x = Math.abs(x);
  if (x < 1) return f(f(f(f(f(f(a + 2) * x) - f(a + 3)) * x) * x) + 1);
  if (x < 2) return f(f(f(f(f(f(f(a * x) - f(5 * a)) * x) + f(8 * a)) * x)) - f(4 * a));
  return 0;
}

function bilinearAa(x: number): number {
  x = Math.abs(x);
  return x < 1 ? f(1 - x) : 0;
}

interface AaWeights {
  start: Int32Array;
  count: Int32Array;
  stride: number;
  w: Float32Array;
}

function aaWeights(inSize: number, outSize: number, mode: AaMode): AaWeights {
  const interpSize = mode === "bicubic" ? 4 : 2;
  const filter = mode === "bicubic" ? bicubicAa : bilinearAa;
  const scale = f(inSize / outSize);
  const support = scale >= 1 ? f(interpSize * 0.5 * scale) : interpSize * 0.5;
  const stride = Math.ceil(support) * 2 + 1;
  const invscale = scale >= 1 ? f(1 / scale) : 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const w = new Float32Array(outSize * stride);
  for (let i = 0; i < outSize; i++) {
    const center = f(scale * (i + 0.5));
    const xmin = Math.max(Math.trunc(f(center - support) + 0.5), 0);
    const xsize = Math.min(Math.trunc(f(center + support) + 0.5), inSize) - xmin;
    let total = 0;
    for (let j = 0; j < xsize; j++) {
      const v = filter(f((f(j + xmin - center) + 0.5) * invscale));
      w[i * stride + j] = v;
      total = f(total + v);
    }
    if (total !== 0) for (let j = 0; j < xsize; j++) w[i * stride + j] = f(w[i * stride + j]! / total);
    start[i] = xmin;
    count[i] = xsize;
  }
  return { start, count, stride, w };
}

/**
 * Antialiased resize of a float32 [C, H, W] block (torch `interpolate(mode, antialias=True,
 * align_corners=False)` with an output size).
 */
export function resizeAntialiased(
  src: Float32Array,
  c: number,
  h: number,
  w: number,
  oh: number,
  ow: number,
  mode: AaMode = "bicubic",
): Float32Array {
  if (src.length !== c * h * w)
    throw new FarmError("INTERNAL", `resizeAntialiased: ${src.length} values for ${c}x${h}x${w}`);
  let cur = src;
  let curW = w;
  if (ow !== w) {
    const k = aaWeights(w, ow, mode);
    const out = new Float32Array(c * h * ow);
    for (let row = 0; row < c * h; row++) {
      for (let x = 0; x < ow; x++) {
        const s = k.start[x]!;
        const n = k.count[x]!;
        const base = x * k.stride;
        let acc = f(cur[row * w + s]! * k.w[base]!);
        for (let j = 1; j < n; j++) acc = f(acc + f(cur[row * w + s + j]! * k.w[base + j]!));
        out[row * ow + x] = acc;
      }
    }
    cur = out;
    curW = ow;
  }
  if (oh !== h) {
    const k = aaWeights(h, oh, mode);
    const out = new Float32Array(c * oh * curW);
    for (let ch = 0; ch < c; ch++) {
      for (let y = 0; y < oh; y++) {
        const s = k.start[y]!;
        const n = k.count[y]!;
        const base = y * k.stride;
        for (let x = 0; x < curW; x++) {
          let acc = f(cur[(ch * h + s) * curW + x]! * k.w[base]!);
          for (let j = 1; j < n; j++) acc = f(acc + f(cur[(ch * h + s + j) * curW + x]! * k.w[base + j]!));
          out[(ch * oh + y) * curW + x] = acc;
        }
      }
    }
    cur = out;
  }
  return cur === src ? src.slice() : cur;
}

export type SiglipConfig = Pick<
  BundleManifest["image_encoder"],
  "image_size" | "image_mean" | "image_std" | "resample"
>;

/** pixels [1, 3, H, W] in [-1, 1] -> SigLIP input [1, 3, S_h, S_w]. */
export function siglipPixels(pixels: F32, cfg: SiglipConfig): F32 {
  if (pixels.shape.length !== 4 || pixels.shape[0] !== 1)
    throw new FarmError("INVALID_ARGUMENT", `SigLIP input must be [1, C, H, W], got ${pixels.describe()}`);
  const [, c, h, w] = pixels.shape as [number, number, number, number];
  if (c !== cfg.image_mean.length || c !== cfg.image_std.length)
    throw new FarmError(
      "FAILED_PRECONDITION",
      `SigLIP mean/std have ${cfg.image_mean.length} channels, the image ${c}`,
    );
  let x: Float32Array = new Float32Array(pixels.data.length);
  for (let i = 0; i < x.length; i++) x[i] = f(f(pixels.data[i]! + 1) / 2);
  const { height: oh, width: ow } = cfg.image_size;
  if (oh !== h || ow !== w) {
    if (cfg.resample !== "bicubic" && cfg.resample !== "bilinear") {
      throw new FarmError(
        "FAILED_PRECONDITION",
        `SigLIP resample "${cfg.resample}" is not supported for resizing ${w}x${h} to ${ow}x${oh} (bicubic or bilinear)`,
      );
    }
    x = resizeAntialiased(x, c, h, w, oh, ow, cfg.resample);
  }
  const plane = oh * ow;
  const out = new Float32Array(c * plane);
  for (let ch = 0; ch < c; ch++) {
    const mean = f(cfg.image_mean[ch]!);
    const std = f(cfg.image_std[ch]!);
    for (let p = 0; p < plane; p++) out[ch * plane + p] = f(f(x[ch * plane + p]! - mean) / std);
  }
  return new Tensor("float32", [1, c, oh, ow], out);
}
