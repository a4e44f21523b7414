/**
 * decode stage: VAE latents to video in [-1, 1]. Long inputs are decoded in temporal tiles exactly
 * like diffusers' framewise decoding, so the ONNX decoder only ever sees a few latent frames and
 * its memory stays flat whatever the video length. With spatial tiling on (the job's vaeTiling)
 * each (temporal tile of) latents larger than 32x32 is also decoded in 256-pixel tiles, as
 * diffusers' vae.enable_tiling() does.
 */
import type { F32 } from "../../shared/tensor/tensor.js";
import { map } from "../../shared/tensor/ops.js";
import {
  DIFFUSERS_SPATIAL_TILE,
  type SpatialTiling,
  type SpatialTileSizes,
} from "../../shared/framepack/vae-tiling.js";
import type { ModelRuntime } from "../runtime/model-runtime.js";
import { FarmError } from "../../shared/errors.js";

/** Generation latents -> what vae.decode receives: latents / scaling_factor in float32. */
export function toVaeLatents(latents: F32, scalingFactor: number): F32 {
  const sf = Math.fround(scalingFactor);
  return map(latents, (x) => x / sf);
}

export interface DecodeOptions {
  /** diffusers' vae.enable_tiling() with its default tile sizes (or these). */
  spatialTiling?: boolean | Partial<SpatialTileSizes>;
  /** Filled in as the decoder runs: where a decode's time goes (the rest is host work). */
  stats?: DecodeStats;
  /** Latent frames whose decoded tiles the next section's decode will ask for again (latentsDecodedAgain). */
  keep?: { first: number; count: number };
  /** Frames [0, upTo) of `video` are final: the mux encodes them while the rest decodes. */
  onFrames?: (video: F32, upTo: number) => void;
  /** The video's memory, given by the caller (the mux's streamed section): no second copy. */
  into?: F32;
}

/**
 * FRAMEFARM_DECODE_TILE_CACHE_MB (default 512; 0 turns it off): decoded VAE tiles a node keeps
 * for the next section's decode (decoded-tile-cache.ts). A 640x640 tile is 83 MB and a section
 * keeps two or three, so the default holds two jobs' at 640 and stays small beside a CPU node's
 * 4 GiB limit (deploy/k8s/base/nodes.yaml).
 */
export function decodedTileCacheBytes(env: NodeJS.ProcessEnv = process.env): number {
  const v = env["FRAMEFARM_DECODE_TILE_CACHE_MB"];
  if (v === undefined || v === "") return 512 * 1048576;
  const mb = Number(v);
  if (!Number.isInteger(mb) || mb < 0 || mb > 1048576)
    throw new FarmError(
      "INVALID_ARGUMENT",
      `FRAMEFARM_DECODE_TILE_CACHE_MB must be a whole number of MB from 0, got ${JSON.stringify(v)}`,
    );
  return mb * 1048576;
}

export interface DecodeStats {
  /** onnxruntime's session.run, summed over the decoder's calls (tiles). */
  runMs: number;
}

/**
 * vaeLatents: [1, C, T, h, w] already divided by the scaling factor -> [1, 3, (T-1)*4+1, H, W].
 * Untiled unless the options say so: tiling changes the frames, so only the job decides it (never
 * the process's environment, which differs from node to node).
 */
export async function decodeVideo(runtime: ModelRuntime, vaeLatents: F32, options: DecodeOptions = {}): Promise<F32> {
  const model = await runtime.model("vae_decoder");
  const vae = runtime.bundle.manifest.vae;
  // On a session worker (GPUs) the tiles are decoded and blended there, off the node's thread.
  const { video, runMs } = await model.tiledDecode({
    latents: vaeLatents,
    input: "latents",
    output: "sample",
    temporal: vae,
    spatial: spatialTilingOf(vae, options),
    tileCacheBytes: decodedTileCacheBytes(),
    ...(options.keep !== undefined ? { keep: options.keep } : {}),
    ...(options.onFrames !== undefined ? { onFrames: options.onFrames } : {}),
    ...(options.into !== undefined ? { into: options.into } : {}),
  });
  if (options.stats !== undefined) options.stats.runMs += runMs;
  return video;
}

/** The spatial tiling a decode with these options uses (undefined: off). Warm-up derives its tile shapes from it too. */
export function spatialTilingOf(
  vae: { spatial_compression_ratio: number },
  options: DecodeOptions,
): SpatialTiling | undefined {
  const tiling = options.spatialTiling;
  if (tiling === undefined || tiling === false) return undefined;
  return {
    spatial_compression_ratio: vae.spatial_compression_ratio,
    ...DIFFUSERS_SPATIAL_TILE,
    ...(tiling === true ? {} : tiling),
  };
}
