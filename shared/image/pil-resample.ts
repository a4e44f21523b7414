/**
 * PIL's `Image.resize` for 8-bit RGB images (libImaging/Resample.c behaviour), written from its
 * documented algorithm so that FramePack's `resize_and_center_crop` (PIL LANCZOS) is reproduced
 * exactly, not approximately (libvips' lanczos3 shrinks and rounds differently):
 *
 * - separable: a horizontal pass (only over the rows the vertical pass reads), then a vertical one;
 *   a pass is skipped when that side keeps its size;
 * - for output pixel i the filter is centred at (i + 0.5) * scale, spans support * max(scale, 1)
 *   input pixels either side (bounds rounded as C's `(int)(x + 0.5)`), taps at
 *   (j - centre + 0.5) / max(scale, 1), normalised to sum 1 in double;
 * - the weights become 22-bit fixed point (`(int)(±0.5 + w * 2^22)`), each pass accumulates
 *   integers from 2^21 and keeps (sum >> 22) clamped to [0, 255].
 */
import { FarmError } from "../errors.js";

export type PilFilter = "lanczos" | "bicubic" | "bilinear";

const PRECISION_BITS = 22;

function sinc(x: number): number {
  if (x === 0) return 1;
  const px = x * Math.PI;
  return Math.sin(px) / px;
}

const FILTERS: Record<PilFilter, { support: number; f: (x: number) => number }> = {
  lanczos: { support: 3, f: (x) => (x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0) },
  bicubic: {
    support: 2,
    f: (x) => {
      const a = -0.5;
      x = Math.abs(x);
      if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
      if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
      return 0;
    },
  },
  bilinear: { support: 1, f: (x) => Math.max(0, 1 - Math.abs(x)) },
};

interface Coeffs {
  ksize: number;
  /** Per output pixel: first input index and tap count. */
  start: Int32Array;
  count: Int32Array;
  /** outSize * ksize fixed-point weights. */
  k: Int32Array;
}

/** Integer truncation toward zero, as C's (int) cast. */
const cint = Math.trunc;

function precompute(inSize: number, outSize: number, filter: PilFilter): Coeffs {
  const { support: base, f } = FILTERS[filter];
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = base * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const k = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  const ss = 1 / filterScale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(0, cint(center - support + 0.5));
    const xmax = Math.min(inSize, cint(center + support + 0.5)) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      w[x] = f((x + xmin - center + 0.5) * ss);
      ww += w[x]!;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0 ? w[x]! / ww : w[x]!;
      k[xx * ksize + x] = v < 0 ? cint(-0.5 + v * (1 << PRECISION_BITS)) : cint(0.5 + v * (1 << PRECISION_BITS));
    }
    start[xx] = xmin;
    count[xx] = xmax;
  }
  return { ksize, start, count, k };
}

const clip8 = (ss: number): number => {
  const v = Math.floor(ss / (1 << PRECISION_BITS));
  return v < 0 ? 0 : v > 255 ? 255 : v;
};

/**
 * Resizes interleaved 8-bit pixels (`channels` per pixel, row-major) as PIL's
 * `Image.resize((outW, outH), filter)` does for an "RGB"/"L" image.
 */
export function pilResize(
  src: Uint8Array,
  width: number,
  height: number,
  channels: number,
  outW: number,
  outH: number,
  filter: PilFilter = "lanczos",
): Uint8Array {
  if (src.length !== width * height * channels)
    throw new FarmError("INTERNAL", `pilResize: ${src.length} bytes for ${width}x${height}x${channels}`);
  if (!(outW >= 1 && outH >= 1 && Number.isInteger(outW) && Number.isInteger(outH)))
    throw new FarmError("INVALID_ARGUMENT", `cannot resize to ${outW}x${outH}`);
  const needH = outW !== width;
  const needV = outH !== height;
  if (!needH && !needV) return src.slice();
  const vert = precompute(height, outH, filter);
  // Rows of the source the vertical pass reads.
  const yFirst = vert.start[0]!;
  const yLast = vert.start[outH - 1]! + vert.count[outH - 1]!;

  let img = src;
  let rows = height;
  let rowOffset = 0;
  if (needH) {
    const hor = precompute(width, outW, filter);
    rows = yLast - yFirst;
    const tmp = new Uint8Array(outW * rows * channels);
    const half = 1 << (PRECISION_BITS - 1);
    for (let y = 0; y < rows; y++) {
      const rowIn = (y + yFirst) * width * channels;
      const rowOut = y * outW * channels;
      for (let xx = 0; xx < outW; xx++) {
        const s = hor.start[xx]!;
        const n = hor.count[xx]!;
        const kb = xx * hor.ksize;
        for (let c = 0; c < channels; c++) {
          let ss = half;
          for (let x = 0; x < n; x++) ss += src[rowIn + (s + x) * channels + c]! * hor.k[kb + x]!;
          tmp[rowOut + xx * channels + c] = clip8(ss);
        }
      }
    }
    img = tmp;
    rowOffset = yFirst;
  }
  if (!needV) return img;
  const rowLen = outW * channels;
  const out = new Uint8Array(outH * rowLen);
  const half = 1 << (PRECISION_BITS - 1);
  for (let yy = 0; yy < outH; yy++) {
    const s = vert.start[yy]! - rowOffset;
    const n = vert.count[yy]!;
    const kb = yy * vert.ksize;
    for (let i = 0; i < rowLen; i++) {
      let ss = half;
      for (let y = 0; y < n; y++) ss += img[(s + y) * rowLen + i]! * vert.k[kb + y]!;
      out[yy * rowLen + i] = clip8(ss);
    }
  }
  return out;
}

/** Python's round(): halves go to the even neighbour. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x - Math.trunc(x)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
