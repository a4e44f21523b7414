/**
 * Warm-up: runs every model a job of a given size uses once, at exactly the input shapes the job's
 * stages will give it, on dummy inputs. On a GPU the first run of a graph at a new shape is slow
 * (cuDNN's exhaustive convolution algorithm search, lazy CUDA module loading: over a second per
 * shape), so a node pays that once at start instead of inside a user's job. Only sessions run:
 * nothing a job reads or writes is touched, so outputs do not change.
 */
import { Tensor, type F32 } from "../../shared/tensor/tensor.js";
import type { AnyComponentName, ComponentName, SamplingType } from "../../shared/bundle/manifest.js";
import type { StageKind } from "../../shared/farm/protocol.js";
import type { JobSpec } from "../../shared/job/job-spec.js";
import { skipsSteps, type CacheName, type SamplerName, type VideoParams } from "../../shared/job/render-params.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { initialHistory, sectionInputs } from "../../shared/framepack/history.js";
import { temporalTiledDecode } from "../../shared/framepack/vae-tiling.js";
import { temporalTiledEncode } from "../../shared/framepack/vae-encode-tiling.js";
import type { ModelRuntime } from "../runtime/model-runtime.js";
import type { KeptTensor } from "../runtime/onnx-model.js";
import type { TextTokenizers } from "../text/tokenizers.js";
import { encodeImageEmbeds, encodeImagePosterior } from "./encode-image.js";
import { scalar, transformerFeeds } from "./transformer-feeds.js";
import { changeFeeds } from "./teacache.js";
import { spatialTilingOf, type DecodeOptions } from "./decode-latents.js";
import type { TextConditioning } from "./denoise-section.js";

/** What decides the shapes a job's stages feed its models. */
export interface WarmUpJob {
  height: number;
  width: number;
  samplingType: SamplingType;
  latentWindowSize: number;
  numFrames: number;
  hasEndImage: boolean;
  /** unipc plans sections as the demo does (another section count, so other decode lengths). */
  sampler?: SamplerName;
  /** teacache and magcache run the step-cache graphs (residual, skip, change) in place of the single graph. */
  cache?: CacheName;
  /** Extending a video: its encoder tiles, context and decode lengths differ from a start image's. */
  video?: VideoParams | null;
  /** The job decodes in spatial tiles (256-pixel tiles and their partial edges: other decoder shapes). */
  vaeTiling?: boolean;
}

/** The models each stage kind runs (mux runs none). */
export const STAGE_COMPONENTS: Record<StageKind, readonly ComponentName[]> = {
  encode_text: ["text_encoder", "text_encoder_2"],
  encode_image: ["image_encoder"],
  vae_encode: ["vae_encoder"],
  denoise: ["transformer"],
  decode: ["vae_decoder"],
  mux: [],
};

export interface WarmUpOptions extends DecodeOptions {
  /** Only these models (a node warms the models of the stages it serves); all by default. */
  components?: readonly ComponentName[];
  // spatialTiling, when given, overrides every job's vaeTiling (tests warm other tile sizes).
}

export interface WarmUpResult {
  /** Wall time of the whole warm-up. */
  ms: number;
  /** Wall time per model, summed over its runs. */
  components: Partial<Record<AnyComponentName, number>>;
  /** Runs per model (one per distinct input shape set). */
  runs: Partial<Record<AnyComponentName, number>>;
}

export function warmUpJobOf(spec: JobSpec): WarmUpJob {
  const p = spec.params;
  return {
    height: spec.height,
    width: spec.width,
    samplingType: p.samplingType,
    latentWindowSize: p.latentWindowSize,
    numFrames: p.numFrames,
    hasEndImage: p.hasEndImage,
    ...(p.sampler !== undefined ? { sampler: p.sampler } : {}),
    ...(skipsSteps(p.cache) ? { cache: p.cache } : {}),
    ...(p.video !== undefined && p.video !== null ? { video: p.video } : {}),
    // Records older than the field decoded untiled.
    vaeTiling: p.vaeTiling === true,
  };
}

/** The frame counts of the encoder calls that encoding `frames` frames makes (found by running the tiling). */
export async function encoderTileFrames(
  vae: ModelRuntime["bundle"]["manifest"]["vae"],
  frames: number,
): Promise<number[]> {
  const seen = new Set<number>();
  await temporalTiledEncode(frames, vae, async (_first, count) => {
    seen.add(count);
    const t = (count - 1) / vae.temporal_compression_ratio + 1;
    return { mean: Tensor.zeros([1, 1, t, 1, 1]), std: Tensor.zeros([1, 1, t, 1, 1]) };
  });
  return [...seen];
}

/**
 * Jobs of one size whose plans together hold every section shape any job of that size has: one,
 * two and three sections give the first, middle and last sections' decode lengths of every plan.
 * What a node warms for a size when it does not know the jobs to come. VAE tiling is a job
 * option, so both decodes (untiled and tiled) are warmed unless the size says which
 * (WarmUpSize.vaeTiling); other models' shapes do not depend on it and run once.
 */
export function warmUpJobsForSize(
  runtime: ModelRuntime,
  size: WarmUpSize,
  samplingType: SamplingType = runtime.bundle.manifest.sampling_type,
  latentWindowSize: number = runtime.bundle.manifest.framepack.default_latent_window_size,
): WarmUpJob[] {
  const windowFrames = (latentWindowSize - 1) * runtime.bundle.manifest.vae.temporal_compression_ratio + 1;
  const tilings = size.vaeTiling === undefined ? [false, true] : [size.vaeTiling];
  return tilings.flatMap((vaeTiling) =>
    [1, 2, 3].map((sections) => ({
      height: size.height,
      width: size.width,
      samplingType,
      latentWindowSize,
      numFrames: sections * windowFrames,
      hasEndImage: false,
      vaeTiling,
    })),
  );
}

/** A size a node warms up for; vaeTiling: only the untiled (false) or tiled (true) decode, both when absent. */
export interface WarmUpSize {
  height: number;
  width: number;
  vaeTiling?: boolean;
}

const shapeKey = (feeds: Record<string, Tensor>): string =>
  Object.entries(feeds)
    .map(([k, t]) => `${k}:${t.dtype}[${t.shape.join(",")}]`)
    .join(" ");

/**
 * The distinct input shapes of the decoder calls that decoding latents of these shapes makes,
 * found by running the tiling code itself with a decoder that records its input and returns a
 * 1x1-pixel stand-in of the right frame count (so no full-size frames are blended).
 */
export async function decoderTileShapes(
  vae: ModelRuntime["bundle"]["manifest"]["vae"],
  latentShapes: readonly (readonly number[])[],
  options: DecodeOptions,
): Promise<number[][]> {
  const seen = new Map<string, number[]>();
  const spatial = spatialTilingOf(vae, options);
  for (const shape of latentShapes) {
    await temporalTiledDecode(
      Tensor.zeros(shape),
      vae,
      async (tile) => {
        seen.set(tile.shape.join(","), [...tile.shape]);
        const [b, , t] = tile.shape as [number, number, number];
        return Tensor.zeros([b, 1, (t - 1) * vae.temporal_compression_ratio + 1, 1, 1]);
      },
      spatial,
    );
  }
  return [...seen.values()];
}

/** Runs each model the jobs use once per distinct input shape set, on zeros; returns the time each took. */
export async function warmUp(
  runtime: ModelRuntime,
  tokenizers: TextTokenizers,
  jobs: WarmUpJob | readonly WarmUpJob[],
  options: WarmUpOptions = {},
): Promise<WarmUpResult> {
  const started = performance.now();
  const list = Array.isArray(jobs) ? (jobs as readonly WarmUpJob[]) : [jobs as WarmUpJob];
  const m = runtime.bundle.manifest;
  const wanted = new Set<AnyComponentName>(options.components ?? (Object.keys(m.components) as AnyComponentName[]));
  const result: WarmUpResult = { ms: 0, components: {}, runs: {} };
  const done = new Set<string>();
  /** Runs fn unless this component already ran at this key, timing it under the component. */
  const once = async <T>(name: AnyComponentName, key: string, fn: () => Promise<T>): Promise<T | undefined> => {
    if (!wanted.has(name) || done.has(`${name} ${key}`)) return undefined;
    done.add(`${name} ${key}`);
    const t0 = performance.now();
    const out = await fn();
    result.components[name] = (result.components[name] ?? 0) + performance.now() - t0;
    result.runs[name] = (result.runs[name] ?? 0) + 1;
    return out;
  };

  // Tokens are padded to a fixed length (encode-text.ts), so one prompt's tokens stand for every
  // prompt's. Each encoder runs on its own to be timed on its own.
  const llama = tokenizers.tokenizeLlama("warm-up");
  await once("text_encoder", "", async () =>
    (await runtime.model("text_encoder")).run({ input_ids: llama.inputIds, attention_mask: llama.attentionMask }),
  );
  const clip = tokenizers.tokenizeClip("warm-up");
  await once("text_encoder_2", "", async () =>
    (await runtime.model("text_encoder_2")).run({ input_ids: clip.inputIds }),
  );
  // The conditioning as encode_text gives it: max_sequence_length tokens past the template.
  const seq = m.text_encoder.max_sequence_length;
  const mask = new Float32Array(seq);
  mask[0] = 1;
  const prompt: TextConditioning = {
    embeds: Tensor.zeros([1, seq, m.transformer.text_embed_dim]),
    mask: new Tensor("float32", [1, seq], mask),
    pooled: Tensor.zeros([1, m.transformer.pooled_projection_dim]),
  };

  const sc = m.vae.spatial_compression_ratio;
  for (const job of list) {
    const pixels = Tensor.zeros([1, 3, job.height, job.width]);
    // The image encoder resizes to its fixed input; the VAE encoder takes [1, 3, 1, H, W] for an
    // image and the frames of each temporal tile for a video (encode-video.ts).
    const plan = sectionPlanFor(job, m);
    await once("image_encoder", `${job.height}x${job.width}`, () => encodeImageEmbeds(runtime, pixels));
    if (plan.video === null || job.hasEndImage)
      await once("vae_encoder", `${job.height}x${job.width}`, () => encodeImagePosterior(runtime, pixels));
    if (plan.video !== null)
      for (const frames of await encoderTileFrames(m.vae, plan.video.encodedFrames))
        await once("vae_encoder", `${job.height}x${job.width}x${frames}`, async () =>
          (await runtime.model("vae_encoder")).run({ sample: Tensor.zeros([1, 3, frames, job.height, job.width]) }),
        );
    const imageEmbeds = Tensor.zeros([1, m.image_encoder.num_tokens, m.image_encoder.hidden_size]);

    const latentShape = [1, m.vae.latent_channels, 1, job.height / sc, job.width / sc];
    // A video's latents stand where the start image's would (shared/framepack/history.ts).
    const imageLatents = Tensor.zeros(
      plan.video === null ? latentShape : [1, m.vae.latent_channels, plan.video.latentFrames, ...latentShape.slice(3)],
    );
    const lastImageLatents = job.hasEndImage ? Tensor.zeros(latentShape) : null;
    const history = initialHistory(plan, imageLatents);
    const noise = Tensor.zeros([1, m.vae.latent_channels, plan.latentWindowSize, job.height / sc, job.width / sc]);
    // Sections share their packed shapes (fixed history sizes), but each is checked, not assumed.
    for (const section of plan.sections) {
      const context = sectionInputs(plan, section, history, imageLatents, lastImageLatents);
      const feeds = transformerFeeds({ imageEmbeds, context }, noise, scalar(1000), scalar(10000), prompt);
      if (skipsSteps(job.cache) && m.components.transformer_residual !== undefined) {
        // The step-cache graphs at the job's shapes, fed as TeaCache and MagCache feed them
        // (step-cache-graphs.ts, teacache.ts): a computed call, a skipped one, the change measure.
        const key = shapeKey(feeds);
        let residual: KeptTensor | undefined;
        try {
          await once("transformer_residual", key, async () => {
            const run = await (
              await runtime.model("transformer_residual")
            ).runTimed(feeds, undefined, {
              keep: ["residual"],
            });
            residual = run.kept["residual"];
            return run.outputs;
          });
          const kept = residual;
          if (kept !== undefined)
            await once("transformer_skip", key, async () =>
              (await runtime.model("transformer_skip")).run({ ...feeds, residual: kept }),
            );
        } finally {
          residual?.release();
        }
        if (job.cache === "teacache") {
          await once("transformer_change", key, async () =>
            (await runtime.model("transformer_change")).run(changeFeeds(feeds, feeds)),
          );
        }
      } else await once("transformer", shapeKey(feeds), async () => (await runtime.model("transformer")).run(feeds));
    }

    if (wanted.has("vae_decoder")) {
      const lengths = [...new Set(plan.sections.map((s) => s.decode.latentFrames))];
      const shapes = await decoderTileShapes(
        m.vae,
        lengths.map((t) => [1, m.vae.latent_channels, t, job.height / sc, job.width / sc]),
        "spatialTiling" in options ? options : { spatialTiling: job.vaeTiling === true },
      );
      for (const shape of shapes) {
        const feeds = { latents: Tensor.zeros(shape) };
        await once("vae_decoder", shapeKey(feeds), async () => (await runtime.model("vae_decoder")).run(feeds));
      }
    }
  }
  result.ms = performance.now() - started;
  return result;
}
