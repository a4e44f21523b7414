/**
 * How much memory a job's stages need on one node, from the bundle's shapes and the job's size,
 * so that a job that cannot fit is refused up front (RESOURCE_EXHAUSTED) instead of being killed
 * by the kernel mid-render. Pure: the caller supplies the model file sizes and what is available.
 *
 * The terms (float32 activations, bytes):
 * - denoise: the transformer's joint attention over T tokens (the window, the 1x/2x/4x history,
 *   the text and the image tokens) materialises heads x T^2 scores per layer on the CPU provider
 *   (onnxruntime's CPU MultiHeadAttention), plus activations of T x hidden. Its session keeps its
 *   memory arena (the same shapes every step), so this stays resident for the node's life.
 * - decode: one temporal tile (at most max_latent_frames latent frames, 4x - 3 pixel frames) at
 *   full resolution: conv activations of pixelFrames x H x W x channels, plus the VAE mid-block
 *   attention over N = frames x h x w tokens: [N, N] scores several times over when the graph
 *   runs as exported, or blocks of `attentionBlockBytes` when chunked (gpu-node/runtime/chunked-attention.ts).
 *   A job with spatial VAE tiling (vaeTiling) runs the decoder on at most 256x256-pixel tiles, so
 *   activations and attention are a tile's, plus the decoded tiles (3 channels, overlapping) and the
 *   blended temporal tile they are joined into.
 * - mux: the finished video as uint8 RGB plus one decoded section in float32.
 * Calibrated against measured peaks (test/bench/memory/RESULTS.md): it errs high.
 */
import type { BundleManifest } from "../bundle/manifest.js";
import type { SectionPlan } from "../framepack/plan.js";
import { FarmError } from "../errors.js";
import { DIFFUSERS_SPATIAL_TILE } from "../framepack/vae-tiling.js";

export interface MemoryEstimateInput {
  manifest: BundleManifest;
  plan: SectionPlan;
  height: number;
  width: number;
  /** Bytes of the model files the node loads (all of a bundle for an embedded render). */
  weightBytes: number;
  /** Chunked VAE attention's block (bytes), or null when the VAE graph runs as exported. */
  attentionBlockBytes: number | null;
  /** Peak channels of the VAE decoder at full resolution (its conv_out input); 128 for HunyuanVideo. */
  decoderChannels?: number;
  /** Tensor cache and process baseline (Node.js, onnxruntime, libraries). */
  baseBytes?: number;
  /** The job decodes in diffusers' spatial tiles (RenderParams.vaeTiling). */
  vaeTiling?: boolean;
}

export interface MemoryEstimate {
  denoise: number;
  decode: number;
  mux: number;
  /** The process's peak: base + weights + the resident transformer arena + the largest other stage, plus slack. */
  peak: number;
  /** Of that, the model files' bytes. */
  weights: number;
}

const F32 = 4;
/**
 * Node.js, onnxruntime and libraries with nothing loaded (about 0.3 GiB), the node's tensor cache
 * once full (512 MiB by default: decoded sections and histories it keeps for the next task, which
 * is why a short video peaks a little lower than a long one) and allocator slack.
 */
export const DEFAULT_BASE_BYTES = 1152 * 2 ** 20;
/** Live float tensors of the decoder at full resolution at once (input, output, residual, norm). */
const DECODE_LIVE_ACTIVATIONS = 6;
/** Copies of the [N, N] scores alive in the exported attention: mask, scores, masked, probabilities. */
const ATTENTION_COPIES = 4;
/**
 * The node runs a section's decode beside the next section's denoise, each on its own thread, and
 * the allocator keeps some of what they free: measured peaks vary by up to 20% run to run
 * (test/bench/memory/RESULTS.md), so the estimate adds that.
 */
const SLACK = 1.2;

export function estimateJobMemory(input: MemoryEstimateInput): MemoryEstimate {
  const { manifest, plan, height, width } = input;
  const sc = manifest.vae.spatial_compression_ratio;
  const h = Math.ceil(height / sc);
  const w = Math.ceil(width / sc);
  const t = manifest.transformer;
  const p = t.patch_size;
  const hidden = t.num_attention_heads * t.attention_head_dim;
  const perFrame = (k: number): number => Math.ceil(h / (p * k)) * Math.ceil(w / (p * k));
  const [h1, h2, h4] = plan.historySizes;
  // Window + start image + 1x history at patch p; 2x and 4x history patchified 2x and 4x further.
  const tokens =
    (plan.latentWindowSize + 1 + h1) * perFrame(1) +
    Math.ceil(h2 / 2) * perFrame(2) +
    Math.ceil(h4 / 4) * perFrame(4) +
    manifest.text_encoder.max_sequence_length +
    manifest.image_encoder.num_tokens;
  const denoise = t.num_attention_heads * tokens * tokens * F32 * 1.25 + tokens * hidden * F32 * 24;

  const tileLatent = Math.min(
    manifest.components.vae_decoder.max_latent_frames ??
      Math.floor(manifest.vae.tile_sample_min_num_frames / manifest.vae.temporal_compression_ratio) + 1,
    maxDecodeFrames(plan),
  );
  const pixelFrames = (tileLatent - 1) * manifest.vae.temporal_compression_ratio + 1;
  const channels = input.decoderChannels ?? 128;
  // One decoder call's latents: the whole frame, or with tiling at most one spatial tile of it.
  const tiles = input.vaeTiling === true ? spatialTiles(h, w, sc) : null;
  const [callH, callW] = tiles === null ? [h, w] : [Math.min(h, tiles.tileH), Math.min(w, tiles.tileW)];
  const n = tileLatent * callH * callW;
  const attention =
    input.attentionBlockBytes === null
      ? ATTENTION_COPIES * n * n * F32
      : 3 * Math.max(input.attentionBlockBytes, 16 * n * F32) + 8 * n * F32 * 16;
  // Decoded tiles of one temporal tile are all held until blended, then joined into its frames.
  const tiled = tiles === null ? 0 : 3 * pixelFrames * F32 * (tiles.decodedPixels + height * width);
  const callPixels = tiles === null ? height * width : Math.min(height, callH * sc) * Math.min(width, callW * sc);
  const decode = DECODE_LIVE_ACTIVATIONS * pixelFrames * callPixels * channels * F32 + attention + tiled;

  const sectionFrames = Math.max(...plan.sections.map((s) => s.decode.videoFrames));
  const mux = plan.outputFrames * height * width * 3 + 2 * 3 * sectionFrames * height * width * F32;
  const base = (input.baseBytes ?? DEFAULT_BASE_BYTES) + input.weightBytes;
  return { denoise, decode, mux, peak: SLACK * (base + denoise + Math.max(decode, mux)), weights: input.weightBytes };
}

/**
 * diffusers' default spatial tiles over h x w latents (spatialTiledDecode's loop): the tile size in
 * latents and the pixels of all decoded tiles together (they overlap); null when one tile holds it all.
 */
function spatialTiles(
  h: number,
  w: number,
  sc: number,
): { tileH: number; tileW: number; decodedPixels: number } | null {
  const t = DIFFUSERS_SPATIAL_TILE;
  const [tileH, tileW] = [Math.floor(t.tile_sample_min_height / sc), Math.floor(t.tile_sample_min_width / sc)];
  if (h <= tileH && w <= tileW) return null;
  const [strideH, strideW] = [
    Math.floor(t.tile_sample_stride_height / sc),
    Math.floor(t.tile_sample_stride_width / sc),
  ];
  let rows = 0;
  for (let i = 0; i < h; i += strideH) rows += Math.min(tileH, h - i);
  let cols = 0;
  for (let j = 0; j < w; j += strideW) cols += Math.min(tileW, w - j);
  return { tileH, tileW, decodedPixels: rows * sc * cols * sc };
}

function maxDecodeFrames(plan: SectionPlan): number {
  return Math.max(...plan.sections.map((s) => s.decode.latentFrames));
}

export const gib = (b: number): string => `${(b / 2 ** 30).toFixed(1)} GiB`;

/** Throws RESOURCE_EXHAUSTED, naming needed and available memory, when the estimate does not fit. */
export function admitMemory(
  estimate: MemoryEstimate,
  available: { bytes: number; what: string },
  job: { height: number; width: number; frames: number },
): void {
  if (estimate.peak <= available.bytes) return;
  throw new FarmError(
    "RESOURCE_EXHAUSTED",
    `a ${job.width}x${job.height} job of ${job.frames} frames needs about ${gib(estimate.peak)} of memory (denoise ${gib(estimate.denoise)}, decode ${gib(estimate.decode)}, mux ${gib(estimate.mux)}) but ${available.what} has ${gib(available.bytes)} available: lower --resolution or free memory`,
  );
}
