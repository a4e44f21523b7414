/**
 * Input images: decoded with sharp after checking size and pixel count from the header (so a
 * decompression bomb is refused before any large allocation), orientation applied as diffusers'
 * load_image does (EXIF transpose), alpha dropped as PIL's convert("RGB") does, then resized to
 * cover and centre-cropped as FramePack's resize_and_center_crop (Lanczos).
 */
import sharp, { type Metadata } from "sharp";
import { FarmError } from "../errors.js";
import { Tensor, type F32 } from "../tensor/tensor.js";

export interface ImageLimits {
  maxBytes: number;
  maxPixels: number;
  maxSide: number;
}

export const DEFAULT_IMAGE_LIMITS: ImageLimits = { maxBytes: 50 * 1024 * 1024, maxPixels: 40_000_000, maxSide: 16384 };

export interface DecodedImage {
  width: number;
  height: number;
  /** RGB, 8 bits per channel, row-major. */
  rgb: Uint8Array;
}

export async function decodeImage(bytes: Uint8Array, limits: ImageLimits = DEFAULT_IMAGE_LIMITS, what = "image"): Promise<DecodedImage> {
  if (bytes.length === 0) throw new FarmError("INVALID_ARGUMENT", `${what} is empty (0 bytes)`);
  if (bytes.length > limits.maxBytes) throw new FarmError("RESOURCE_EXHAUSTED", `${what} is ${bytes.length} bytes; the limit is ${limits.maxBytes} bytes`);
  let meta: Metadata;
  try {
    meta = await sharp(bytes, { limitInputPixels: false }).metadata();
  } catch (err) {
    throw new FarmError("INVALID_ARGUMENT", `${what} is not a readable image: ${(err as Error).message}`, { cause: err });
  }
  const { width, height } = meta;
  if (width === undefined || height === undefined || width < 1 || height < 1) throw new FarmError("INVALID_ARGUMENT", `${what} has no valid size`);
  if (width > limits.maxSide || height > limits.maxSide || width * height > limits.maxPixels) {
    throw new FarmError("RESOURCE_EXHAUSTED", `${what} is ${width}x${height} pixels; the limit is ${limits.maxPixels} pixels and ${limits.maxSide} per side`);
  }
  try {
    const { data, info } = await sharp(bytes, { limitInputPixels: limits.maxPixels, failOn: "error", animated: false })
      .rotate()
      .removeAlpha()
      .toColourspace("srgb")
      .raw()
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels`);
    return { width: info.width, height: info.height, rgb: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
  } catch (err) {
    throw new FarmError("INVALID_ARGUMENT", `${what} cannot be decoded (corrupt or truncated?): ${(err as Error).message}`, { cause: err });
  }
}

/** Resize to cover height x width (Lanczos) and centre-crop; unchanged when already that size. */
export async function resizeAndCenterCrop(image: DecodedImage, height: number, width: number): Promise<DecodedImage> {
  if (image.width === width && image.height === height) return image;
  const scale = Math.max(width / image.width, height / image.height);
  const rw = Math.max(width, Math.round(image.width * scale));
  const rh = Math.max(height, Math.round(image.height * scale));
  const left = Math.floor((rw - width) / 2);
  const top = Math.floor((rh - height) / 2);
  const data = await sharp(image.rgb, { raw: { width: image.width, height: image.height, channels: 3 } })
    .resize(rw, rh, { kernel: "lanczos3", fit: "fill" })
    .extract({ left, top, width, height })
    .raw()
    .toBuffer();
  return { width, height, rgb: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}

/** [1, 3, H, W] float32 in [-1, 1] as diffusers' VaeImageProcessor makes it: 2 * (x / 255) - 1. */
export function toPixelTensor(image: DecodedImage): F32 {
  const { width: w, height: h, rgb } = image;
  const plane = w * h;
  const out = new Float32Array(3 * plane);
  const f = Math.fround;
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++) out[c * plane + p] = f(f(2 * f(rgb[p * 3 + c]! / 255)) - 1);
  }
  return new Tensor("float32", [1, 3, h, w], out);
}

/** Decoded image -> render pixels at height x width. */
export async function prepareImage(image: DecodedImage, height: number, width: number): Promise<F32> {
  return toPixelTensor(await resizeAndCenterCrop(image, height, width));
}
