/**
 * The encoders of a job that extends a video: its frames at the render size (FramePack's
 * resize_and_center_crop, as an image's), the VAE posterior of its last encoded frames (one
 * vae.encode call as diffusers makes it: framewise, 17-frame tiles), and the SigLIP embedding of its
 * first encoded frame (Studio's input_image_np). Which frames: the plan's (plan.video).
 */
import type { F32 } from "../../shared/tensor/tensor.js";
import type { VideoPlan } from "../../shared/framepack/plan.js";
import type { VideoParams } from "../../shared/job/render-params.js";
import { resizeAndCenterCrop, toPixelTensor, toVideoPixelTensor } from "../../shared/image/decode.js";
import { readVideoFrames } from "../../shared/video/video-input.js";
import { temporalTiledEncode, type Posterior } from "../../shared/framepack/vae-encode-tiling.js";
import { encodeImageEmbeds } from "./encode-image.js";
import type { ModelRuntime } from "../runtime/model-runtime.js";

export interface RenderSize {
  height: number;
  width: number;
}

/** Frames [first, first + count) of the input video, RGB at the render size, as they are decoded. */
export async function* videoFramesAtSize(
  bytes: Uint8Array,
  video: VideoParams,
  size: RenderSize,
  first = 0,
  count = video.frames - first,
): AsyncGenerator<Uint8Array> {
  const native = { width: video.width, height: video.height };
  for await (const rgb of readVideoFrames(bytes, native, first, count))
    yield resizeAndCenterCrop({ ...native, rgb }, size.height, size.width).rgb;
}

/** The encoded frames (the video's last plan.encodedFrames) at the render size. */
async function encodedFrames(bytes: Uint8Array, video: VideoParams, plan: VideoPlan, size: RenderSize) {
  const frames: Uint8Array[] = [];
  for await (const f of videoFramesAtSize(bytes, video, size, plan.firstEncodedFrame, plan.encodedFrames))
    frames.push(f);
  return frames;
}

/** The posterior over the video's L latents [1, C, L, h, w], as diffusers' vae.encode gives it. */
export async function encodeVideoPosterior(
  runtime: ModelRuntime,
  bytes: Uint8Array,
  video: VideoParams,
  plan: VideoPlan,
  size: RenderSize,
): Promise<Posterior> {
  const frames = await encodedFrames(bytes, video, plan, size);
  const model = await runtime.model("vae_encoder");
  return temporalTiledEncode(frames.length, runtime.bundle.manifest.vae, async (first, count) => {
    const { mean, std } = await model.run({
      sample: toVideoPixelTensor(frames.slice(first, first + count), size.height, size.width),
    });
    return { mean: mean!, std: std! };
  });
}

/** SigLIP of the first encoded frame, and that frame's pixels as the image encoder got them. */
export async function encodeVideoEmbeds(
  runtime: ModelRuntime,
  bytes: Uint8Array,
  video: VideoParams,
  plan: VideoPlan,
  size: RenderSize,
): Promise<{ embeds: F32; siglipInput: F32; pixels: F32 }> {
  let frame: Uint8Array | undefined;
  for await (const f of videoFramesAtSize(bytes, video, size, plan.firstEncodedFrame, 1)) frame = f;
  const pixels = toPixelTensor({ width: size.width, height: size.height, rgb: frame! });
  return { ...(await encodeImageEmbeds(runtime, pixels)), pixels };
}
