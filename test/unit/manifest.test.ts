import { test } from "node:test";
import assert from "node:assert/strict";
import { validateManifest, COMPONENT_IO, COMPONENT_NAMES } from "../../shared/bundle/manifest.js";
import { FarmError } from "../../shared/errors.js";

function validManifest(): Record<string, unknown> {
  const components: Record<string, unknown> = {};
  for (const name of COMPONENT_NAMES) {
    components[name] = {
      file: `${name}.onnx`,
      external_data: null,
      inputs: [...COMPONENT_IO[name].inputs],
      outputs: [...COMPONENT_IO[name].outputs],
      ...(name === "vae_decoder" ? { max_latent_frames: 5 } : {}),
    };
  }
  return {
    format: "framefarm-bundle",
    version: 1,
    created_by: "test",
    source: { pipeline: "tiny", transformer: null, image_encoder: null },
    dtype: "fp32",
    sampling_type: "inverted_anti_drifting",
    components,
    text_encoder: {
      tokenizer: "tokenizer/tokenizer.json",
      tokenizer_config: "tokenizer/tokenizer_config.json",
      hidden_size: 16,
      max_sequence_length: 256,
      num_hidden_layers_to_skip: 2,
      prompt_template: { template: "a {} b", crop_start: 3 },
    },
    text_encoder_2: {
      tokenizer: "tokenizer_2/tokenizer.json",
      tokenizer_config: "tokenizer_2/tokenizer_config.json",
      hidden_size: 8,
      max_length: 77,
    },
    image_encoder: {
      image_size: { height: 64, width: 64 },
      image_mean: [0.5, 0.5, 0.5],
      image_std: [0.5, 0.5, 0.5],
      resample: "bicubic",
      hidden_size: 32,
      num_tokens: 64,
    },
    vae: {
      latent_channels: 4,
      scaling_factor: 0.476986,
      spatial_compression_ratio: 8,
      temporal_compression_ratio: 4,
      use_framewise_decoding: true,
      tile_sample_min_num_frames: 16,
      tile_sample_stride_num_frames: 12,
    },
    transformer: {
      in_channels: 4,
      out_channels: 4,
      patch_size: 2,
      patch_size_t: 1,
      text_embed_dim: 16,
      pooled_projection_dim: 8,
      image_proj_dim: 32,
      guidance_embeds: true,
      num_attention_heads: 2,
      attention_head_dim: 10,
    },
    scheduler: {
      class: "FlowMatchEulerDiscreteScheduler",
      num_train_timesteps: 1000,
      shift: 7,
      use_dynamic_shifting: false,
    },
    framepack: {
      history_sizes: { inverted_anti_drifting: [1, 2, 16], vanilla: [16, 2, 1] },
      default_latent_window_size: 9,
    },
  };
}

function rejects(mutate: (m: Record<string, any>) => void, pattern: RegExp): void {
  const m = validManifest() as Record<string, any>;
  mutate(m);
  assert.throws(
    () => validateManifest(m),
    (err: unknown) => err instanceof FarmError && err.status === "FAILED_PRECONDITION" && pattern.test(err.message),
  );
}

test("a complete manifest validates", () => {
  const m = validateManifest(validManifest());
  assert.equal(m.vae.scaling_factor, 0.476986);
  assert.equal(m.components.vae_decoder.max_latent_frames, 5);
});

test("the validator names what is wrong", () => {
  rejects((m) => (m["format"] = "something-else"), /not a framefarm bundle/);
  rejects((m) => (m["version"] = 2), /version 2.*re-export/);
  rejects((m) => delete m["components"]["transformer"], /components\.transformer: expected an object/);
  rejects((m) => (m["components"]["transformer"]["inputs"] = ["hidden_states"]), /components\.transformer\.inputs/);
  rejects((m) => (m["components"]["vae_decoder"]["file"] = "../../etc/passwd"), /relative path inside the bundle/);
  rejects((m) => (m["vae"]["scaling_factor"] = "0.4"), /vae\.scaling_factor/);
  rejects((m) => (m["transformer"]["in_channels"] = 16), /in_channels .* must equal vae\.latent_channels/);
  rejects((m) => (m["scheduler"]["use_karras_sigmas"] = true), /use_karras_sigmas/);
  rejects((m) => (m["text_encoder"]["prompt_template"]["template"] = "no placeholder"), /placeholder/);
  rejects((m) => (m["sampling_type"] = "sideways"), /sampling_type/);
});

test("all problems are reported at once", () => {
  const m = validManifest() as Record<string, any>;
  m["vae"]["latent_channels"] = 0;
  m["image_encoder"]["image_std"] = [0.5, 0, 0.5];
  assert.throws(
    () => validateManifest(m),
    (err: unknown) => {
      const msg = (err as Error).message;
      return /latent_channels/.test(msg) && /image_std/.test(msg);
    },
  );
});

test("a quantized component's weights are read and checked", () => {
  const m = validManifest() as Record<string, any>;
  m["components"]["transformer"]["weights"] = { bits: 4, block_size: 128, symmetric: true };
  assert.deepEqual(validateManifest(m).components.transformer.weights, { bits: 4, block_size: 128, symmetric: true });
  assert.equal(validateManifest(validManifest()).components.transformer.weights, undefined, "as exported");
  const weights = (w: unknown) => (m: Record<string, any>) => (m["components"]["transformer"]["weights"] = w);
  rejects(weights({ bits: 3, block_size: 128, symmetric: true }), /weights\.bits: expected 4 or 8, got 3/);
  rejects(weights({ bits: 8, block_size: 100, symmetric: true }), /weights\.block_size: expected a power of two/);
  rejects(weights({ bits: 8, block_size: 64, symmetric: "yes" }), /weights\.symmetric/);
});
