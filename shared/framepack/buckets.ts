/**
 * FramePack's resolution buckets (lllyasviel/FramePack, diffusers_helper/bucket_tools.py):
 * `bucket_options[640]`, (height, width) pairs of about 640x640 pixels at 14 aspect ratios, and
 * `find_nearest_bucket(h, w)`, the bucket minimising |h * bucket_w - w * bucket_h|, the LAST one
 * on ties (the loop keeps a bucket when its metric is <= the best so far).
 *
 * Upstream defines only resolution 640. Other resolutions (any multiple of 16 in [64, 1280]) scale
 * each 640 bucket side by resolution / 640 and round to the nearest multiple of 16 (halves up),
 * at least 16: the VAE needs multiples of 8 and the transformer's 2x2 patches multiples of 16.
 * At 640 the table is upstream's, unchanged. Scaled tables can hold the same size twice (at 64
 * several aspect ratios collapse); the nearest-bucket rule is applied to the list as it is.
 */
import { FarmError } from "../errors.js";

export const MIN_BUCKET_RESOLUTION = 64;
export const MAX_BUCKET_RESOLUTION = 1280;

export interface BucketSize {
  height: number;
  width: number;
}

/** bucket_options[640], in upstream's order (the order decides ties). */
const BUCKETS_640: readonly (readonly [number, number])[] = [
  [416, 960],
  [448, 864],
  [480, 832],
  [512, 768],
  [544, 704],
  [576, 672],
  [608, 640],
  [640, 608],
  [672, 576],
  [704, 544],
  [768, 512],
  [832, 480],
  [864, 448],
  [960, 416],
];

export function bucketsFor(resolution: number): BucketSize[] {
  if (
    !Number.isInteger(resolution) ||
    resolution % 16 !== 0 ||
    resolution < MIN_BUCKET_RESOLUTION ||
    resolution > MAX_BUCKET_RESOLUTION
  ) {
    throw new FarmError(
      "INVALID_ARGUMENT",
      `resolution must be a multiple of 16 from ${MIN_BUCKET_RESOLUTION} to ${MAX_BUCKET_RESOLUTION}, got ${resolution}`,
    );
  }
  if (resolution === 640) return BUCKETS_640.map(([height, width]) => ({ height, width }));
  const round16 = (v: number): number => Math.max(16, Math.round((v * resolution) / 640 / 16) * 16);
  return BUCKETS_640.map(([h, w]) => ({ height: round16(h), width: round16(w) }));
}

/** find_nearest_bucket(height, width, resolution) of FramePack. */
export function findNearestBucket(height: number, width: number, resolution: number): BucketSize {
  if (!Number.isInteger(height) || !Number.isInteger(width) || height < 1 || width < 1) {
    throw new FarmError("INVALID_ARGUMENT", `image size must be positive integers, got ${width}x${height}`);
  }
  let best: BucketSize | undefined;
  let min = Infinity;
  for (const b of bucketsFor(resolution)) {
    const metric = Math.abs(height * b.width - width * b.height);
    if (metric <= min) {
      min = metric;
      best = b;
    }
  }
  return best!;
}
