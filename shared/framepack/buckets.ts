/**
 * FramePack's resolution buckets: (height, width) pairs of about 640x640 pixels at several aspect
 * ratios, from lllyasviel/FramePack's bucket table. Other resolutions scale the 640 table and round
 * to multiples of 16 (the latent grid needs multiples of 8; the transformer's patching, of 16).
 */
import { FarmError } from "../errors.js";

const BUCKETS_640: readonly (readonly [number, number])[] = [
  [416, 960], [448, 864], [480, 832], [512, 768], [544, 704], [576, 672], [608, 640],
  [640, 608], [672, 576], [704, 544], [768, 512], [832, 480], [864, 448], [960, 416],
];

export function bucketsFor(resolution: number): { height: number; width: number }[] {
  if (!Number.isInteger(resolution) || resolution < 64 || resolution % 16 !== 0) {
    throw new FarmError("INVALID_ARGUMENT", `resolution must be a multiple of 16 and at least 64, got ${resolution}`);
  }
  const scale = resolution / 640;
  const round16 = (v: number): number => Math.max(16, Math.round((v * scale) / 16) * 16);
  return BUCKETS_640.map(([h, w]) => ({ height: round16(h), width: round16(w) }));
}

/** The bucket whose aspect is closest to h:w (FramePack's metric |h*bw - w*bh|; ties go to the later bucket). */
export function findNearestBucket(height: number, width: number, resolution: number): { height: number; width: number } {
  let best = { height: 0, width: 0 };
  let min = Infinity;
  for (const b of bucketsFor(resolution)) {
    const metric = Math.abs(height * b.width - width * b.height);
    if (metric <= min) {
      min = metric;
      best = b;
    }
  }
  return best;
}
