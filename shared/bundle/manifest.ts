/**
 * The model bundle manifest (framefarm-bundle.json), written by gpu-node/export and read by every
 * node and the coordinator. Validation is strict and names the offending key, because a bundle
 * that loads but holds the wrong numbers produces a plausible but wrong video.
 */
import { FarmError } from "../errors.js";

export const MANIFEST_FILE = "framefarm-bundle.json";
export const MANIFEST_FORMAT = "framefarm-bundle";
export const MANIFEST_VERSION = 1;

export type SamplingType = "inverted_anti_drifting" | "vanilla";
export const SAMPLING_TYPES: readonly SamplingType[] = ["inverted_anti_drifting", "vanilla"];

export type ComponentName =
  "text_encoder" | "text_encoder_2" | "image_encoder" | "vae_encoder" | "vae_decoder" | "transformer";

/** Graph input and output names per component: the contract between exporter and runtime. */
export const COMPONENT_IO: Record<ComponentName, { inputs: readonly string[]; outputs: readonly string[] }> = {
  text_encoder: { inputs: ["input_ids", "attention_mask"], outputs: ["hidden_states"] },
  text_encoder_2: { inputs: ["input_ids"], outputs: ["pooled"] },
  image_encoder: { inputs: ["pixel_values"], outputs: ["last_hidden_state"] },
  vae_encoder: { inputs: ["sample"], outputs: ["mean", "std"] },
  vae_decoder: { inputs: ["latents"], outputs: ["sample"] },
  transformer: {
    inputs: [
      "hidden_states",
      "timestep",
      "encoder_hidden_states",
      "encoder_attention_mask",
      "pooled_projections",
      "image_embeds",
      "indices_latents",
      "guidance",
      "latents_clean",
      "indices_latents_clean",
      "latents_history_2x",
      "indices_latents_history_2x",
      "latents_history_4x",
      "indices_latents_history_4x",
    ],
    outputs: ["noise_pred"],
  },
};
export const COMPONENT_NAMES = Object.keys(COMPONENT_IO) as ComponentName[];

/**
 * The graphs the step caches run (--cache teacache | magcache; gpu-node/export
 * framefarm_export/step_cache_graphs.py), optional: a bundle without them renders without a cache.
 * transformer_residual: the transformer with the blocks' residual as a second output;
 * transformer_skip: a skipped call (the kept residual in, noise_pred out); transformer_change:
 * TeaCache's measure of how much block 0's modulated input changed since the previous call.
 * Their inputs are the named ones plus whichever transformer inputs the graph reads
 * (transformer_change: also those of the previous call, prefixed).
 */
export type StepCacheComponentName = "transformer_residual" | "transformer_skip" | "transformer_change";
export const STEP_CACHE_COMPONENT_IO: Record<
  StepCacheComponentName,
  { inputs: readonly string[]; outputs: readonly string[] }
> = {
  transformer_residual: { inputs: [], outputs: ["noise_pred", "residual"] },
  transformer_skip: { inputs: ["residual"], outputs: ["noise_pred"] },
  transformer_change: { inputs: [], outputs: ["modulated_l1"] },
};
export const STEP_CACHE_COMPONENT_NAMES = Object.keys(STEP_CACHE_COMPONENT_IO) as StepCacheComponentName[];
/** The transformer and the step caches' graphs made from it: the graphs that hold its weights. */
export const TRANSFORMER_GRAPH_NAMES = ["transformer", ...STEP_CACHE_COMPONENT_NAMES] as const;
/** transformer_change's inputs for the previous call: this prefix and the transformer input's name. */
export const PREVIOUS_CALL_PREFIX = "previous_";
export type AnyComponentName = ComponentName | StepCacheComponentName;

export interface ComponentEntry {
  file: string;
  external_data: string | null;
  inputs: string[];
  outputs: string[];
  sha256?: string;
  /** transformer_change only: the dtype block 0's modulated input is computed in (fp32 if absent). */
  modulated_dtype?: "fp32" | "fp16" | "bf16";
  /** vae_decoder only: the most latent frames one call may take (temporal tiles are at most this long). */
  max_latent_frames?: number;
  /** Weight-only quantized MatMuls (framefarm_export.quantize: com.microsoft.MatMulNBits); absent: as exported. */
  weights?: QuantizedWeights;
}

export interface QuantizedWeights {
  bits: 4 | 8;
  /** Weights per scale. */
  block_size: number;
  symmetric: boolean;
}

export interface SchedulerConfig {
  class: "FlowMatchEulerDiscreteScheduler";
  num_train_timesteps: number;
  shift: number;
  use_dynamic_shifting: boolean;
  base_shift?: number;
  max_shift?: number;
  base_image_seq_len?: number;
  max_image_seq_len?: number;
  time_shift_type?: "exponential" | "linear";
  shift_terminal?: number | null;
  invert_sigmas?: boolean;
  stochastic_sampling?: boolean;
  use_karras_sigmas?: boolean;
  use_exponential_sigmas?: boolean;
  use_beta_sigmas?: boolean;
  [key: string]: unknown;
}

export interface BundleManifest {
  format: typeof MANIFEST_FORMAT;
  version: number;
  created_by: string;
  source: { pipeline: string; transformer: string | null; image_encoder: string | null };
  dtype: "fp32" | "fp16" | "bf16";
  sampling_type: SamplingType;
  components: Record<ComponentName, ComponentEntry> & Partial<Record<StepCacheComponentName, ComponentEntry>>;
  text_encoder: {
    tokenizer: string;
    tokenizer_config: string;
    hidden_size: number;
    max_sequence_length: number;
    num_hidden_layers_to_skip: number;
    prompt_template: { template: string; crop_start: number };
  };
  text_encoder_2: { tokenizer: string; tokenizer_config: string; hidden_size: number; max_length: number };
  image_encoder: {
    image_size: { height: number; width: number };
    image_mean: [number, number, number];
    image_std: [number, number, number];
    resample: "bicubic" | "bilinear" | "nearest" | "lanczos";
    hidden_size: number;
    num_tokens: number;
  };
  vae: {
    latent_channels: number;
    scaling_factor: number;
    spatial_compression_ratio: number;
    temporal_compression_ratio: number;
    use_framewise_decoding: boolean;
    tile_sample_min_num_frames: number;
    tile_sample_stride_num_frames: number;
  };
  transformer: {
    in_channels: number;
    out_channels: number;
    patch_size: number;
    patch_size_t: number;
    text_embed_dim: number;
    pooled_projection_dim: number;
    image_proj_dim: number;
    guidance_embeds: boolean;
    num_attention_heads: number;
    attention_head_dim: number;
  };
  scheduler: SchedulerConfig;
  framepack: {
    history_sizes: Record<SamplingType, [number, number, number]>;
    default_latent_window_size: number;
  };
}

/** Collects every problem before throwing, so one run of the validator names them all. */
class Checker {
  readonly problems: string[] = [];

  obj(v: unknown, path: string): Record<string, unknown> {
    if (typeof v !== "object" || v === null || Array.isArray(v)) {
      this.problems.push(`${path}: expected an object`);
      return {};
    }
    return v as Record<string, unknown>;
  }

  str(o: Record<string, unknown>, key: string, path: string): string {
    const v = o[key];
    if (typeof v !== "string" || v.length === 0) this.problems.push(`${path}.${key}: expected a non-empty string`);
    return typeof v === "string" ? v : "";
  }

  optStr(o: Record<string, unknown>, key: string, path: string): string | null {
    const v = o[key];
    if (v === null || v === undefined) return null;
    return this.str(o, key, path);
  }

  num(o: Record<string, unknown>, key: string, path: string, opts: { int?: boolean; min?: number } = {}): number {
    const v = o[key];
    const bad =
      typeof v !== "number" ||
      !Number.isFinite(v) ||
      (opts.int === true && !Number.isInteger(v)) ||
      (opts.min !== undefined && v < opts.min);
    if (bad) {
      const kind = opts.int === true ? "an integer" : "a finite number";
      const range = opts.min !== undefined ? ` >= ${opts.min}` : "";
      this.problems.push(`${path}.${key}: expected ${kind}${range}, got ${JSON.stringify(v)}`);
      return NaN;
    }
    return v;
  }

  posInt(o: Record<string, unknown>, key: string, path: string): number {
    return this.num(o, key, path, { int: true, min: 1 });
  }

  bool(o: Record<string, unknown>, key: string, path: string): boolean {
    const v = o[key];
    if (typeof v !== "boolean") this.problems.push(`${path}.${key}: expected true or false`);
    return v === true;
  }

  oneOf<T extends string>(o: Record<string, unknown>, key: string, path: string, allowed: readonly T[]): T {
    const v = o[key];
    if (typeof v !== "string" || !(allowed as readonly string[]).includes(v)) {
      this.problems.push(`${path}.${key}: expected one of ${allowed.join(", ")}, got ${JSON.stringify(v)}`);
      return allowed[0] as T;
    }
    return v as T;
  }

  /** A path inside the bundle: relative, no "..", so a manifest cannot point outside its folder. */
  relPath(o: Record<string, unknown>, key: string, path: string): string {
    const v = this.str(o, key, path);
    if (v !== "" && (v.startsWith("/") || v.split(/[\\/]/).includes("..") || v.includes("\0"))) {
      this.problems.push(`${path}.${key}: ${JSON.stringify(v)} must be a relative path inside the bundle`);
    }
    return v;
  }

  numArray(o: Record<string, unknown>, key: string, path: string, length: number): number[] {
    const v = o[key];
    if (!Array.isArray(v) || v.length !== length || !v.every((x) => typeof x === "number" && Number.isFinite(x))) {
      this.problems.push(`${path}.${key}: expected ${length} finite numbers`);
      return new Array<number>(length).fill(NaN);
    }
    return v as number[];
  }
}

/** A step-cache graph's inputs: its own named ones and transformer inputs, each once. */
function checkStepCacheInputs(
  c: Checker,
  o: Record<string, unknown>,
  name: StepCacheComponentName,
  path: string,
): string[] {
  const io = STEP_CACHE_COMPONENT_IO[name];
  const got = o["inputs"];
  const transformer = COMPONENT_IO.transformer.inputs;
  const allowed = new Set([
    ...io.inputs,
    ...transformer,
    ...(name === "transformer_change" ? transformer.map((n) => PREVIOUS_CALL_PREFIX + n) : []),
  ]);
  if (
    !Array.isArray(got) ||
    !got.every((n) => typeof n === "string" && allowed.has(n)) ||
    new Set(got).size !== got.length ||
    io.inputs.some((n) => !got.includes(n))
  ) {
    c.problems.push(
      `${path}.inputs: expected ${JSON.stringify(io.inputs)} and transformer inputs, got ${JSON.stringify(got)}`,
    );
    return [...io.inputs];
  }
  return got as string[];
}

function checkComponent(c: Checker, raw: unknown, name: AnyComponentName): ComponentEntry {
  const path = `components.${name}`;
  const o = c.obj(raw, path);
  const file = c.relPath(o, "file", path);
  const external =
    o["external_data"] === null || o["external_data"] === undefined ? null : c.relPath(o, "external_data", path);
  const stepCache = name in STEP_CACHE_COMPONENT_IO;
  const io = stepCache ? STEP_CACHE_COMPONENT_IO[name as StepCacheComponentName] : COMPONENT_IO[name as ComponentName];
  for (const side of stepCache ? (["outputs"] as const) : (["inputs", "outputs"] as const)) {
    const got = o[side];
    const want = io[side];
    if (!Array.isArray(got) || got.length !== want.length || want.some((n, i) => got[i] !== n)) {
      c.problems.push(`${path}.${side}: expected ${JSON.stringify(want)}, got ${JSON.stringify(got)}`);
    }
  }
  const inputs = stepCache ? checkStepCacheInputs(c, o, name as StepCacheComponentName, path) : [...io.inputs];
  const entry: ComponentEntry = { file, external_data: external, inputs, outputs: [...io.outputs] };
  if (typeof o["sha256"] === "string") {
    if (!/^[0-9a-f]{64}$/.test(o["sha256"])) c.problems.push(`${path}.sha256: expected 64 lowercase hex digits`);
    entry.sha256 = o["sha256"];
  }
  if (name === "vae_decoder") entry.max_latent_frames = c.posInt(o, "max_latent_frames", path);
  if (name === "transformer_change" && o["modulated_dtype"] !== undefined)
    entry.modulated_dtype = c.oneOf(o, "modulated_dtype", path, ["fp32", "fp16", "bf16"] as const);
  if (o["weights"] !== undefined) {
    const w = c.obj(o["weights"], `${path}.weights`);
    const bits = w["bits"];
    const blockSize = c.posInt(w, "block_size", `${path}.weights`);
    if (bits !== 4 && bits !== 8) c.problems.push(`${path}.weights.bits: expected 4 or 8, got ${JSON.stringify(bits)}`);
    if (typeof w["symmetric"] !== "boolean") c.problems.push(`${path}.weights.symmetric: expected true or false`);
    if (blockSize < 16 || (blockSize & (blockSize - 1)) !== 0)
      c.problems.push(`${path}.weights.block_size: expected a power of two >= 16, got ${blockSize}`);
    entry.weights = { bits: bits === 8 ? 8 : 4, block_size: blockSize, symmetric: w["symmetric"] === true };
  }
  return entry;
}

const UNSUPPORTED_SCHEDULER_OPTIONS = [
  "use_karras_sigmas",
  "use_exponential_sigmas",
  "use_beta_sigmas",
  "stochastic_sampling",
];

function checkScheduler(c: Checker, raw: unknown): SchedulerConfig {
  const o = c.obj(raw, "scheduler");
  if (o["class"] !== "FlowMatchEulerDiscreteScheduler") {
    c.problems.push(
      `scheduler.class: only FlowMatchEulerDiscreteScheduler is supported, got ${JSON.stringify(o["class"])}`,
    );
  }
  c.posInt(o, "num_train_timesteps", "scheduler");
  c.num(o, "shift", "scheduler");
  const dynamic = c.bool(o, "use_dynamic_shifting", "scheduler");
  if (dynamic) {
    for (const k of ["base_shift", "max_shift"]) c.num(o, k, "scheduler");
    for (const k of ["base_image_seq_len", "max_image_seq_len"]) c.posInt(o, k, "scheduler");
  }
  for (const k of UNSUPPORTED_SCHEDULER_OPTIONS) {
    if (o[k] === true) c.problems.push(`scheduler.${k}: true is not supported by framefarm's FlowMatch Euler sampler`);
  }
  return o as SchedulerConfig;
}

/** Validates a parsed manifest; throws FAILED_PRECONDITION listing every problem found. */
export function validateManifest(raw: unknown, where = MANIFEST_FILE): BundleManifest {
  const c = new Checker();
  const m = c.obj(raw, "manifest");
  if (m["format"] !== MANIFEST_FORMAT) {
    throw new FarmError(
      "FAILED_PRECONDITION",
      `${where} is not a framefarm bundle manifest (format ${JSON.stringify(m["format"])})`,
    );
  }
  if (m["version"] !== MANIFEST_VERSION) {
    throw new FarmError(
      "FAILED_PRECONDITION",
      `${where} has manifest version ${JSON.stringify(m["version"])}; this framefarm reads version ${MANIFEST_VERSION}: re-export the bundle`,
    );
  }
  c.str(m, "created_by", "manifest");
  const source = c.obj(m["source"], "source");
  c.str(source, "pipeline", "source");
  c.oneOf(m, "dtype", "manifest", ["fp32", "fp16", "bf16"] as const);
  c.oneOf(m, "sampling_type", "manifest", SAMPLING_TYPES);

  const comps = c.obj(m["components"], "components");
  const components = {} as BundleManifest["components"];
  for (const name of COMPONENT_NAMES) components[name] = checkComponent(c, comps[name], name);
  const stepCachePresent = STEP_CACHE_COMPONENT_NAMES.filter((n) => comps[n] !== undefined);
  if (stepCachePresent.length > 0 && stepCachePresent.length < STEP_CACHE_COMPONENT_NAMES.length) {
    c.problems.push(
      `components: ${STEP_CACHE_COMPONENT_NAMES.filter((n) => comps[n] === undefined).join(", ")} missing beside ${stepCachePresent.join(", ")} (the step-cache graphs are all three or none)`,
    );
  }
  for (const name of stepCachePresent) components[name] = checkComponent(c, comps[name], name);

  const te = c.obj(m["text_encoder"], "text_encoder");
  c.relPath(te, "tokenizer", "text_encoder");
  c.relPath(te, "tokenizer_config", "text_encoder");
  c.posInt(te, "hidden_size", "text_encoder");
  c.posInt(te, "max_sequence_length", "text_encoder");
  c.num(te, "num_hidden_layers_to_skip", "text_encoder", { int: true, min: 0 });
  const tpl = c.obj(te["prompt_template"], "text_encoder.prompt_template");
  const template = c.str(tpl, "template", "text_encoder.prompt_template");
  if (template !== "" && !template.includes("{}"))
    c.problems.push("text_encoder.prompt_template.template: must contain the {} placeholder");
  c.num(tpl, "crop_start", "text_encoder.prompt_template", { int: true, min: 0 });

  const te2 = c.obj(m["text_encoder_2"], "text_encoder_2");
  c.relPath(te2, "tokenizer", "text_encoder_2");
  c.relPath(te2, "tokenizer_config", "text_encoder_2");
  c.posInt(te2, "hidden_size", "text_encoder_2");
  c.posInt(te2, "max_length", "text_encoder_2");

  const ie = c.obj(m["image_encoder"], "image_encoder");
  const size = c.obj(ie["image_size"], "image_encoder.image_size");
  c.posInt(size, "height", "image_encoder.image_size");
  c.posInt(size, "width", "image_encoder.image_size");
  c.numArray(ie, "image_mean", "image_encoder", 3);
  const std = c.numArray(ie, "image_std", "image_encoder", 3);
  if (std.some((s) => s === 0)) c.problems.push("image_encoder.image_std: must not contain 0");
  c.oneOf(ie, "resample", "image_encoder", ["bicubic", "bilinear", "nearest", "lanczos"] as const);
  c.posInt(ie, "hidden_size", "image_encoder");
  c.posInt(ie, "num_tokens", "image_encoder");

  const vae = c.obj(m["vae"], "vae");
  for (const k of [
    "latent_channels",
    "spatial_compression_ratio",
    "temporal_compression_ratio",
    "tile_sample_min_num_frames",
    "tile_sample_stride_num_frames",
  ]) {
    c.posInt(vae, k, "vae");
  }
  c.num(vae, "scaling_factor", "vae");
  c.bool(vae, "use_framewise_decoding", "vae");

  const tr = c.obj(m["transformer"], "transformer");
  for (const k of [
    "in_channels",
    "out_channels",
    "patch_size",
    "patch_size_t",
    "text_embed_dim",
    "pooled_projection_dim",
    "image_proj_dim",
    "num_attention_heads",
    "attention_head_dim",
  ]) {
    c.posInt(tr, k, "transformer");
  }
  c.bool(tr, "guidance_embeds", "transformer");
  if (tr["in_channels"] !== vae["latent_channels"]) {
    c.problems.push(
      `transformer.in_channels (${String(tr["in_channels"])}) must equal vae.latent_channels (${String(vae["latent_channels"])})`,
    );
  }
  if (te["hidden_size"] !== tr["text_embed_dim"]) {
    c.problems.push(
      `text_encoder.hidden_size (${String(te["hidden_size"])}) must equal transformer.text_embed_dim (${String(tr["text_embed_dim"])})`,
    );
  }
  if (te2["hidden_size"] !== tr["pooled_projection_dim"]) {
    c.problems.push(
      `text_encoder_2.hidden_size (${String(te2["hidden_size"])}) must equal transformer.pooled_projection_dim (${String(tr["pooled_projection_dim"])})`,
    );
  }
  if (ie["hidden_size"] !== tr["image_proj_dim"]) {
    c.problems.push(
      `image_encoder.hidden_size (${String(ie["hidden_size"])}) must equal transformer.image_proj_dim (${String(tr["image_proj_dim"])})`,
    );
  }

  checkScheduler(c, m["scheduler"]);

  const fp = c.obj(m["framepack"], "framepack");
  const hs = c.obj(fp["history_sizes"], "framepack.history_sizes");
  for (const t of SAMPLING_TYPES) c.numArray(hs, t, "framepack.history_sizes", 3);
  c.posInt(fp, "default_latent_window_size", "framepack");

  if (c.problems.length > 0) {
    throw new FarmError("FAILED_PRECONDITION", `${where} is invalid:\n  - ${c.problems.join("\n  - ")}`);
  }
  return { ...(m as unknown as BundleManifest), components };
}
