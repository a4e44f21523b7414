/**
 * Input images, decoded the way diffusers users load them (`diffusers.utils.load_image`:
 * `PIL.Image.open` -> `ImageOps.exif_transpose` -> `convert("RGB")`), then resized to the bucket
 * as FramePack does (`resize_and_center_crop`) and normalised as diffusers' VideoProcessor does.
 *
 * Decoding (sharp/libvips):
 * - size and pixel count are read from the header first and checked against the limits, so a
 *   decompression bomb (a tiny file claiming 50000x50000) is refused before any pixel is decoded;
 *   the decoder also gets `limitInputPixels` as a second guard;
 * - EXIF orientation is applied (load_image's exif_transpose; PIL.Image.open alone would not);
 * - alpha is dropped without compositing, as `convert("RGB")` does (the stored RGB stays);
 * - embedded ICC profiles are ignored, as PIL does (the stored values are used, not converted);
 * - greyscale and palette images become RGB; animated images give their first frame;
 *   16-bit images keep the high byte (PIL's 16-bit RGB PNG reader does the same).
 *   CMYK images are converted by libvips, not by PIL's naive formula: colours may differ slightly.
 *
 * Resizing (`resize_and_center_crop`): unchanged when already height x width; otherwise scale to
 * cover with PIL's LANCZOS (reproduced exactly by pil-resample.ts), sizes rounded with Python's
 * round(), then PIL's crop of the centred box (also Python-rounded).
 *
 * Pixels: `VaeImageProcessor.preprocess` of an image already at the size: x / 255 in float32, then
 * 2x - 1. (VideoProcessor would stretch other sizes with PIL lanczos; we never hand it one.)
 */
import sharp, { type Metadata } from "sharp";
import { FarmError } from "../errors.js";
import { Tensor, type F32 } from "../tensor/tensor.js";
import { pilResize, roundHalfEven } from "./pil-resample.js";

export interface ImageLimits {
  /** Largest encoded file accepted, in bytes. */
  maxBytes: number;
  /** Largest width x height accepted (checked from the header, before decoding). */
  maxPixels: number;
  /** Largest width or height accepted. */
  maxSide: number;
}

export const DEFAULT_IMAGE_LIMITS: ImageLimits = { maxBytes: 50 * 1024 * 1024, maxPixels: 40_000_000, maxSide: 16384 };

export interface DecodedImage {
  width: number;
  height: number;
  /** RGB, 8 bits per channel, row-major, width * height * 3 bytes. */
  rgb: Uint8Array;
}

const SUPPORTED = "PNG, JPEG, WebP, GIF, TIFF, AVIF";

export async function decodeImage(
  bytes: Uint8Array,
  limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
  what = "image",
): Promise<DecodedImage> {
  if (bytes.length === 0) throw new FarmError("INVALID_ARGUMENT", `${what} is empty (0 bytes)`);
  if (bytes.length > limits.maxBytes)
    throw new FarmError(
      "RESOURCE_EXHAUSTED",
      `${what} is ${bytes.length} bytes; the limit is ${limits.maxBytes} bytes`,
    );
  let meta: Metadata;
  try {
    // Header only: no pixels are decoded here, whatever size the file claims.
    meta = await sharp(bytes, { limitInputPixels: false }).metadata();
  } catch (err) {
    throw new FarmError(
      "INVALID_ARGUMENT",
      `${what} is not a readable image (${SUPPORTED}): ${(err as Error).message}`,
      { cause: err },
    );
  }
  const { width, height } = meta;
  const pageHeight = meta.pageHeight ?? height;
  if (width === undefined || height === undefined || pageHeight === undefined || width < 1 || pageHeight < 1) {
    throw new FarmError("INVALID_ARGUMENT", `${what} has no valid size in its header`);
  }
  if (width > limits.maxSide || pageHeight > limits.maxSide || width * pageHeight > limits.maxPixels) {
    throw new FarmError(
      "RESOURCE_EXHAUSTED",
      `${what} is ${width}x${pageHeight} pixels; the limit is ${limits.maxPixels} pixels and ${limits.maxSide} per side`,
    );
  }
  try {
    const { data, info } = await sharp(bytes, {
      limitInputPixels: limits.maxPixels,
      failOn: "error",
      animated: false,
      ignoreIcc: true,
      autoOrient: true,
    })
      .removeAlpha()
      .toColourspace("srgb")
      .raw({ depth: "uchar" })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels`);
    if (data.length !== info.width * info.height * 3)
      throw new Error(`decoded ${data.length} bytes for ${info.width}x${info.height}`);
    return {
      width: info.width,
      height: info.height,
      rgb: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    };
  } catch (err) {
    throw new FarmError(
      "INVALID_ARGUMENT",
      `${what} cannot be decoded (corrupt or truncated?): ${(err as Error).message}`,
      { cause: err },
    );
  }
}

/**
 * FramePack's `resize_and_center_crop(image, target_width=width, target_height=height)`: the image
 * itself when already that size; else PIL LANCZOS to cover the target, then the centre crop.
 */
export function resizeAndCenterCrop(image: DecodedImage, height: number, width: number): DecodedImage {
  if (!Number.isInteger(height) || !Number.isInteger(width) || height < 1 || width < 1) {
    throw new FarmError("INVALID_ARGUMENT", `cannot resize an image to ${width}x${height}`);
  }
  if (image.width === width && image.height === height) return image;
  const scale = Math.max(width / image.width, height / image.height);
  const rw = roundHalfEven(image.width * scale);
  const rh = roundHalfEven(image.height * scale);
  const resized = pilResize(image.rgb, image.width, image.height, 3, rw, rh, "lanczos");
  // PIL's crop((left, top, right, bottom)) rounds each coordinate with Python's round().
  const left = roundHalfEven((rw - width) / 2);
  const top = roundHalfEven((rh - height) / 2);
  if (left < 0 || top < 0 || left + width > rw || top + height > rh) {
    throw new FarmError("INTERNAL", `resize to cover ${width}x${height} gave ${rw}x${rh}`);
  }
  const out = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    const from = ((top + y) * rw + left) * 3;
    out.set(resized.subarray(from, from + width * 3), y * width * 3);
  }
  return { width, height, rgb: out };
}

/**
 * The 256 possible values of 2 * (x / 255) - 1, each computed as numpy/torch do in float32 (double
 * rounding of these single operations to float32 is exact).
 */
const PIXEL_VALUES = ((): Float32Array => {
  const f = Math.fround;
  const lut = new Float32Array(256);
  for (let v = 0; v < 256; v++) lut[v] = f(f(2 * f(v / 255)) - 1);
  return lut;
})();

/** [1, 3, H, W] float32 in [-1, 1] as diffusers' VaeImageProcessor makes it: 2 * (x / 255) - 1. */
export function toPixelTensor(image: DecodedImage): F32 {
  return toVideoPixelTensor([image.rgb], image.height, image.width).reshape([1, 3, image.height, image.width]);
}

/** Frames of one size (RGB [H, W, 3] each) as [1, 3, T, H, W] float32 in [-1, 1], as toPixelTensor. */
export function toVideoPixelTensor(frames: readonly Uint8Array[], height: number, width: number): F32 {
  const plane = width * height;
  const t = frames.length;
  const out = new Float32Array(3 * t * plane);
  frames.forEach((rgb, i) => {
    if (rgb.length !== plane * 3)
      throw new RangeError(`frame ${i} has ${rgb.length} bytes, not ${width}x${height} RGB`);
    for (let p = 0; p < plane; p++) {
      for (let c = 0; c < 3; c++) out[(c * t + i) * plane + p] = PIXEL_VALUES[rgb[p * 3 + c]!]!;
    }
  });
  return new Tensor("float32", [1, 3, t, height, width], out);
}

/** Decoded image -> render pixels [1, 3, height, width] in [-1, 1]. */
export async function prepareImage(image: DecodedImage, height: number, width: number): Promise<F32> {
  return toPixelTensor(resizeAndCenterCrop(image, height, width));
}
