/**
 * Turns user files into render inputs: decodes and checks the images, picks the render size
 * (explicit, or the FramePack bucket nearest the start image's aspect) and builds the pixel tensors.
 */
import { readFile, stat } from "node:fs/promises";
import { FarmError } from "../../shared/errors.js";
import type { F32 } from "../../shared/tensor/tensor.js";
import { decodeImage, prepareImage, DEFAULT_IMAGE_LIMITS, type DecodedImage } from "../../shared/image/decode.js";
import { findNearestBucket } from "../../shared/framepack/buckets.js";
import type { RenderParams } from "../../shared/job/render-params.js";

export async function readImageFile(file: string, what: string): Promise<DecodedImage> {
  let bytes: Buffer;
  try {
    const s = await stat(file);
    if (!s.isFile()) throw new FarmError("INVALID_ARGUMENT", `${what} ${file} is not a file`);
    if (s.size > DEFAULT_IMAGE_LIMITS.maxBytes) {
      throw new FarmError("RESOURCE_EXHAUSTED", `${what} ${file} is ${s.size} bytes; the limit is ${DEFAULT_IMAGE_LIMITS.maxBytes} bytes`);
    }
    bytes = await readFile(file);
  } catch (err) {
    if (err instanceof FarmError) throw err;
    throw new FarmError("NOT_FOUND", `${what} ${file} cannot be read: ${(err as Error).message}`, { cause: err });
  }
  return decodeImage(bytes, DEFAULT_IMAGE_LIMITS, what);
}

export function renderSize(params: RenderParams, first: DecodedImage): { height: number; width: number } {
  if ("height" in params.size) return params.size;
  return findNearestBucket(first.height, first.width, params.size.resolution);
}

export function pixelsFor(image: DecodedImage, size: { height: number; width: number }): Promise<F32> {
  return prepareImage(image, size.height, size.width);
}
