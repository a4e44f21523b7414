/**
 * Turns user files into render inputs: reads and checks image (and video) files, decodes images
 * and builds the pixel tensors at the render size.
 */
import { readFile, stat } from "node:fs/promises";
import { FarmError } from "../../../shared/errors.js";
import type { F32 } from "../../../shared/tensor/tensor.js";
import { decodeImage, prepareImage, DEFAULT_IMAGE_LIMITS, type DecodedImage } from "../../../shared/image/decode.js";
import { DEFAULT_VIDEO_LIMITS } from "../../../shared/video/video-input.js";

/** A file's bytes, refused early when it is not a readable file or is over the size limit. */
async function readInputBytes(file: string, what: string, maxBytes: number): Promise<Buffer> {
  try {
    const s = await stat(file);
    if (!s.isFile()) throw new FarmError("INVALID_ARGUMENT", `${what} ${file} is not a file`);
    if (s.size > maxBytes) {
      throw new FarmError("RESOURCE_EXHAUSTED", `${what} ${file} is ${s.size} bytes; the limit is ${maxBytes} bytes`);
    }
    return await readFile(file);
  } catch (err) {
    if (err instanceof FarmError) throw err;
    throw new FarmError("NOT_FOUND", `${what} ${file} cannot be read: ${(err as Error).message}`, { cause: err });
  }
}

/** An image file's bytes (the farm decodes and checks them). */
export const readImageBytes = (file: string, what: string): Promise<Buffer> =>
  readInputBytes(file, what, DEFAULT_IMAGE_LIMITS.maxBytes);

/** A video file's bytes (the farm inspects and checks them). */
export const readVideoBytes = (file: string, what: string): Promise<Buffer> =>
  readInputBytes(file, what, DEFAULT_VIDEO_LIMITS.maxBytes);

export async function readImageFile(file: string, what: string): Promise<DecodedImage> {
  return decodeImage(await readImageBytes(file, what), DEFAULT_IMAGE_LIMITS, what);
}

export function pixelsFor(image: DecodedImage, size: { height: number; width: number }): Promise<F32> {
  return prepareImage(image, size.height, size.width);
}
