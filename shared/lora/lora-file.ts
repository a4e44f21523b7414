/**
 * A LoRA file for the FramePack transformer, read into what fusing it needs: per diffusers module,
 * lora_down (A, [rank, in]), lora_up (B, [out, rank]) and the file's own scale. The formats people
 * share, each with its own scale:
 *
 * - diffusers/PEFT keys as HunyuanVideoLoraLoaderMixin loads them:
 *   "transformer.<module>.lora_A.weight" / ".lora_B.weight" (".lora_down"/".lora_up" too, which
 *   diffusers renames). Scale 1 per module (diffusers' get_peft_kwargs mirrors ranks into alphas
 *   when the file has none), or, when the file carries diffusers' adapter metadata
 *   ("lora_adapter_metadata": LoraConfig kwargs under "transformer."), PEFT's lora_alpha / r per
 *   module (rank_pattern and alpha_pattern matched as PEFT's get_pattern_key does; use_rslora:
 *   lora_alpha / sqrt(r)). "diffusion_model." (ComfyUI's prefix) is read the same way.
 * - HunyuanVideo's original module names (double_blocks.0.img_attn_qkv, single_blocks.0.linear1,
 *   txt_in..., final_layer...), with either prefix: converted as diffusers'
 *   _convert_hunyuan_video_lora_to_diffusers converts them (fused q/k/v and linear1 split row-wise
 *   in lora_B with lora_A shared; final_layer.adaLN_modulation.1's shift and scale halves
 *   swapped), with the bundle's hidden size where diffusers hard-codes the real model's 3072, and
 *   lora_A never split (diffusers chunks the token refiner's self_attn_qkv lora_A too).
 * - musubi-tuner / kohya-ss: "lora_unet_<module, dots as underscores>.lora_down.weight",
 *   ".lora_up.weight", ".alpha": scale alpha / rank (alpha absent or 0: 1), as musubi's LoRAModule;
 *   <module> is a FramePack (diffusers) module name, as musubi's FramePack training writes them, or
 *   an original HunyuanVideo one, as its HunyuanVideo training does. An ".alpha" beside diffusers
 *   keys is applied the same way.
 *
 * Every key must be used: one that names no Linear of this bundle's transformer, a tensor of the
 * wrong shape, DoRA or LoRA bias is INVALID_ARGUMENT naming the key (diffusers drops some of these
 * with a warning; a farm that rendered without them would render something else).
 */
import { FarmError } from "../errors.js";
import { TRANSFORMER_GRAPH_NAMES, type BundleManifest } from "../bundle/manifest.js";
import { decodeSafetensors } from "../tensor/safetensors.js";
import { toF32 } from "../tensor/convert.js";
import type { Tensor } from "../tensor/tensor.js";

export type LoraLayout = "in_out" | "out_in";

/** Where a transformer Linear's weight is in the bundle's graphs (framefarm_export.lora_targets). */
export interface LoraTarget {
  initializer: string;
  /** out_in: [out, in] (a Gemm's weight); in_out: [in, out] (a MatMul's, transposed). */
  layout: LoraLayout;
  out: number;
  in: number;
}

export interface LoraTargets {
  dtype: "fp32" | "fp16" | "bf16";
  modules: Readonly<Record<string, LoraTarget>>;
  notTargetable: readonly string[];
}

/** One module's low-rank delta from one file: scale * up @ down. */
export interface LoraPair {
  module: string;
  /** The file's key the pair came from (its lora_down / lora_A), for messages. */
  key: string;
  rank: number;
  /** [rank, in], row-major. */
  down: Float32Array;
  /** [out, rank], row-major. */
  up: Float32Array;
  scale: number;
}

export interface ParsedLora {
  format: "diffusers" | "kohya";
  pairs: LoraPair[];
}

/** LoRA files larger than this are refused (a rank-128 LoRA of every Linear of the 13B model is ~1.3 GB in fp16). */
export const MAX_LORA_BYTES = 4 * 2 ** 30;
export const MAX_LORA_RANK = 1024;

const bad = (msg: string): FarmError => new FarmError("INVALID_ARGUMENT", msg);

/** The manifest's LoRA targets, or FAILED_PRECONDITION saying how to get them. */
export function loraTargetsOf(manifest: BundleManifest): LoraTargets {
  const raw = (manifest as unknown as Record<string, unknown>)["lora_targets"];
  const quantized = TRANSFORMER_GRAPH_NAMES.filter((c) => manifest.components[c]?.weights !== undefined);
  if (quantized.length > 0)
    throw new FarmError(
      "FAILED_PRECONDITION",
      `this farm's bundle holds quantized transformer weights (${quantized.join(", ")}): LoRAs need an unquantized bundle`,
    );
  if (typeof raw !== "object" || raw === null)
    throw new FarmError(
      "FAILED_PRECONDITION",
      "this farm's bundle has no LoRA targets in its manifest: run python -m framefarm_export.lora_targets on it (gpu-node/export/README.md)",
    );
  const o = raw as Record<string, unknown>;
  const modules = (o["modules"] ?? {}) as Record<string, LoraTarget>;
  const dtype = o["dtype"];
  const ok =
    (dtype === "fp32" || dtype === "fp16" || dtype === "bf16") &&
    typeof modules === "object" &&
    Object.values(modules).every(
      (t) =>
        typeof t === "object" &&
        t !== null &&
        typeof t.initializer === "string" &&
        (t.layout === "in_out" || t.layout === "out_in") &&
        Number.isInteger(t.out) &&
        t.out > 0 &&
        Number.isInteger(t.in) &&
        t.in > 0,
    );
  if (!ok)
    throw new FarmError("FAILED_PRECONDITION", "the bundle manifest's lora_targets is malformed: re-run lora_targets");
  const notTargetable = Array.isArray(o["not_targetable"]) ? (o["not_targetable"] as string[]) : [];
  return { dtype, modules, notTargetable };
}

/** A pattern key of PEFT's rank_pattern / alpha_pattern matches a module as peft.utils.other.get_pattern_key does. */
function patternValue(patterns: Record<string, unknown> | undefined, module: string): number | undefined {
  for (const [key, value] of Object.entries(patterns ?? {})) {
    let re: RegExp;
    try {
      re = new RegExp(`^(.*\\.)?(${key})$`);
    } catch {
      throw bad(`adapter metadata pattern ${JSON.stringify(key)} is not a regular expression`);
    }
    if (re.test(module)) return Number(value);
  }
  return undefined;
}

interface AdapterMetadata {
  r: number;
  loraAlpha: number;
  rankPattern: Record<string, unknown>;
  alphaPattern: Record<string, unknown>;
  rslora: boolean;
}

/** diffusers' adapter metadata (LoraConfig kwargs, "transformer."-prefixed), or null when absent. */
function adapterMetadata(metadata: Record<string, string>, label: string): AdapterMetadata | null {
  const raw = metadata["lora_adapter_metadata"];
  if (raw === undefined || raw === "") return null;
  let all: Record<string, unknown>;
  try {
    all = JSON.parse(raw) as Record<string, unknown>;
  } catch {
    throw bad(`${label}: lora_adapter_metadata is not JSON`);
  }
  const m: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(all)) if (k.startsWith("transformer.")) m[k.slice("transformer.".length)] = v;
  if (Object.keys(m).length === 0) return null;
  if (m["use_dora"] === true) throw bad(`${label}: DoRA (use_dora) is not supported`);
  if (m["lora_bias"] === true) throw bad(`${label}: LoRA bias (lora_bias) is not supported`);
  const r = Number(m["r"] ?? 8);
  const loraAlpha = Number(m["lora_alpha"] ?? 8);
  if (!Number.isFinite(r) || r <= 0 || !Number.isFinite(loraAlpha))
    throw bad(`${label}: lora_adapter_metadata r and lora_alpha must be numbers`);
  return {
    r,
    loraAlpha,
    rankPattern: (m["rank_pattern"] ?? {}) as Record<string, unknown>,
    alphaPattern: (m["alpha_pattern"] ?? {}) as Record<string, unknown>,
    rslora: m["use_rslora"] === true,
  };
}

/** HunyuanVideo's original top-level module prefixes (diffusers converts keys under them). */
const ORIGINAL_ROOTS = [
  "double_blocks.",
  "single_blocks.",
  "txt_in.",
  "time_in.",
  "vector_in.",
  "guidance_in.",
  "final_layer.",
  "img_in.",
];

/** diffusers' TRANSFORMER_KEYS_RENAME_DICT, in its order. */
const RENAMES: readonly [string, string][] = [
  ["img_in", "x_embedder"],
  ["time_in.mlp.0", "time_text_embed.timestep_embedder.linear_1"],
  ["time_in.mlp.2", "time_text_embed.timestep_embedder.linear_2"],
  ["guidance_in.mlp.0", "time_text_embed.guidance_embedder.linear_1"],
  ["guidance_in.mlp.2", "time_text_embed.guidance_embedder.linear_2"],
  ["vector_in.in_layer", "time_text_embed.text_embedder.linear_1"],
  ["vector_in.out_layer", "time_text_embed.text_embedder.linear_2"],
  ["double_blocks", "transformer_blocks"],
  ["img_attn_q_norm", "attn.norm_q"],
  ["img_attn_k_norm", "attn.norm_k"],
  ["img_attn_proj", "attn.to_out.0"],
  ["txt_attn_q_norm", "attn.norm_added_q"],
  ["txt_attn_k_norm", "attn.norm_added_k"],
  ["txt_attn_proj", "attn.to_add_out"],
  ["img_mod.linear", "norm1.linear"],
  ["img_norm1", "norm1.norm"],
  ["img_norm2", "norm2"],
  ["img_mlp", "ff"],
  ["txt_mod.linear", "norm1_context.linear"],
  ["txt_norm1", "norm1.norm"],
  ["txt_norm2", "norm2_context"],
  ["txt_mlp", "ff_context"],
  ["self_attn_proj", "attn.to_out.0"],
  ["modulation.linear", "norm.linear"],
  ["pre_norm", "norm.norm"],
  ["final_layer.norm_final", "norm_out.norm"],
  ["final_layer.linear", "proj_out"],
  ["fc1", "net.0.proj"],
  ["fc2", "net.2"],
  ["input_embedder", "proj_in"],
];

/** diffusers' remap_txt_in_ rename_key. */
function renameTxtIn(name: string): string {
  return name
    .replaceAll("individual_token_refiner.blocks", "token_refiner.refiner_blocks")
    .replaceAll("adaLN_modulation.1", "norm_out.linear")
    .replaceAll("txt_in", "context_embedder")
    .replaceAll("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1")
    .replaceAll("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2")
    .replaceAll("c_embedder", "time_text_embed.text_embedder")
    .replaceAll("mlp", "ff");
}

/**
 * One piece of an original module's lora_up: diffusers module `module` takes rows [start, start +
 * rows) of it (rows -1: to the end); swapHalves: its two halves exchanged (shift, scale -> scale, shift).
 */
interface Piece {
  module: string;
  start: number;
  rows: number;
  swapHalves?: boolean;
}

/** An original HunyuanVideo module name -> the diffusers modules its lora_up feeds, as diffusers converts it. */
export function originalToDiffusers(name: string, hidden: number): Piece[] {
  let n = name;
  for (const [from, to] of RENAMES) n = n.replaceAll(from, to);
  const whole = (module: string): Piece[] => [{ module, start: 0, rows: -1 }];
  const thirds = (a: string, b: string, c: string, f: (s: string) => string = (s) => s): Piece[] => [
    { module: f(n.replace(/[a-z_]*attn_qkv$/, a)), start: 0, rows: hidden },
    { module: f(n.replace(/[a-z_]*attn_qkv$/, b)), start: hidden, rows: hidden },
    { module: f(n.replace(/[a-z_]*attn_qkv$/, c)), start: 2 * hidden, rows: hidden },
  ];
  if (n.includes("txt_in")) {
    if (n.endsWith("self_attn_qkv")) return thirds("attn.to_q", "attn.to_k", "attn.to_v", renameTxtIn);
    return whole(renameTxtIn(n));
  }
  if (n.endsWith("img_attn_qkv")) return thirds("attn.to_q", "attn.to_k", "attn.to_v");
  if (n.endsWith("txt_attn_qkv")) return thirds("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj");
  if (n.includes("single_blocks")) {
    const block = n.replace("single_blocks", "single_transformer_blocks");
    if (block.endsWith(".linear1")) {
      const base = block.slice(0, -".linear1".length);
      return [
        { module: `${base}.attn.to_q`, start: 0, rows: hidden },
        { module: `${base}.attn.to_k`, start: hidden, rows: hidden },
        { module: `${base}.attn.to_v`, start: 2 * hidden, rows: hidden },
        { module: `${base}.proj_mlp`, start: 3 * hidden, rows: -1 },
      ];
    }
    return whole(block.replace(/\.linear2$/, ".proj_out"));
  }
  if (n === "final_layer.adaLN_modulation.1")
    return [{ module: "norm_out.linear", start: 0, rows: -1, swapHalves: true }];
  return whole(n);
}

function matrix(t: Tensor, key: string): { rows: number; cols: number; data: Float32Array } {
  if (t.shape.length !== 2)
    throw bad(`LoRA key ${key}: expected a 2-D tensor, got shape [${t.shape.join(", ")}] (only Linear LoRAs apply)`);
  let f: Tensor<"float32">;
  try {
    f = toF32(t);
  } catch {
    throw bad(`LoRA key ${key}: expected floating-point values, got ${t.dtype}`);
  }
  for (const v of f.data) if (!Number.isFinite(v)) throw bad(`LoRA key ${key} holds a value that is not finite`);
  return { rows: t.shape[0]!, cols: t.shape[1]!, data: f.data };
}

/** A module's file entries: down, up and alpha, by the key each came from. */
interface Entry {
  down?: { key: string; t: Tensor };
  up?: { key: string; t: Tensor };
  alpha?: { key: string; t: Tensor };
}

/**
 * Reads a LoRA file against the bundle's targets. label names the LoRA in messages ("LoRA
 * style.safetensors"). hidden: the transformer's hidden size (heads x head dim), for original
 * HunyuanVideo keys whose fused projections split by it.
 */
export function parseLora(bytes: Uint8Array, targets: LoraTargets, hidden: number, label: string): ParsedLora {
  if (bytes.length > MAX_LORA_BYTES) throw new FarmError("RESOURCE_EXHAUSTED", `${label} is over 4 GiB`);
  let file: ReturnType<typeof decodeSafetensors>;
  try {
    file = decodeSafetensors(bytes);
  } catch (err) {
    throw bad(`${label} is not a safetensors file: ${(err as Error).message}`);
  }
  if (file.tensors.size === 0) throw bad(`${label} holds no tensors`);
  const kohya = [...file.tensors.keys()].some((k) => k.startsWith("lora_unet_"));
  const meta = kohya ? null : adapterMetadata(file.metadata, label);

  // Diffusers modules and original modules by their kohya names (dots as underscores): a kohya
  // name cannot be split back into dots, so it is looked up.
  const known = new Set([...Object.keys(targets.modules), ...targets.notTargetable]);
  const kohyaNames = new Map<string, string>();
  if (kohya) {
    for (const m of known) kohyaNames.set(m.replaceAll(".", "_"), m);
    for (const m of originalModuleNames(targets)) kohyaNames.set(m.replaceAll(".", "_"), m);
  }

  const entries = new Map<string, Entry>();
  for (const [key, t] of file.tensors) {
    let module: string;
    let part: "down" | "up" | "alpha";
    if (kohya) {
      const m = /^lora_unet_(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$/.exec(key);
      const name = m === null ? undefined : kohyaNames.get(m[1]!);
      if (m === null || name === undefined) throw unknownKey(key, label);
      module = name;
      part = m[2] === "alpha" ? "alpha" : m[2] === "lora_down.weight" ? "down" : "up";
    } else {
      if (key.includes("dora_scale") || key.includes("lora_magnitude_vector"))
        throw bad(`${label}: key ${key} is DoRA, which is not supported`);
      const m =
        /^(?:transformer|diffusion_model)\.(.+)\.(lora_A\.weight|lora_B\.weight|lora_down\.weight|lora_up\.weight|alpha)$/.exec(
          key,
        );
      if (m === null) {
        if (/\.lora_B\.bias$/.test(key)) throw bad(`${label}: key ${key} is a LoRA bias, which is not supported`);
        throw unknownKey(key, label);
      }
      module = m[1]!;
      part = m[2] === "alpha" ? "alpha" : m[2]!.startsWith("lora_A") || m[2]!.startsWith("lora_down") ? "down" : "up";
    }
    const e = entries.get(module) ?? {};
    const before = e[part];
    if (before !== undefined) throw bad(`${label}: keys ${before.key} and ${key} give the same tensor`);
    e[part] = { key, t };
    entries.set(module, e);
  }

  const pairs: LoraPair[] = [];
  const seen = new Map<string, string>();
  for (const [module, e] of entries) {
    if (e.down === undefined || e.up === undefined) {
      const have = (e.down ?? e.up ?? e.alpha)!.key;
      throw bad(
        `${label}: key ${have} has no ${e.down === undefined ? "lora_down/lora_A" : "lora_up/lora_B"} beside it`,
      );
    }
    const down = matrix(e.down.t, e.down.key);
    const up = matrix(e.up.t, e.up.key);
    const rank = down.rows;
    if (rank < 1 || rank > MAX_LORA_RANK)
      throw bad(`LoRA key ${e.down.key}: rank ${rank} is outside 1..${MAX_LORA_RANK}`);
    if (up.cols !== rank)
      throw bad(`LoRA key ${e.up.key}: shape [${up.rows}, ${up.cols}] does not match rank ${rank} of ${e.down.key}`);
    let scale = 1;
    if (e.alpha !== undefined) {
      if (e.alpha.t.numel !== 1) throw bad(`LoRA key ${e.alpha.key}: alpha must be one number`);
      const alpha = matrixless(e.alpha.t, e.alpha.key);
      scale = alpha === 0 ? 1 : alpha / rank;
    } else if (meta !== null && !isOriginal(module)) {
      const r = patternValue(meta.rankPattern, module) ?? meta.r;
      const alpha = patternValue(meta.alphaPattern, module) ?? meta.loraAlpha;
      if (r !== rank)
        throw bad(`LoRA key ${e.down.key}: rank ${rank}, but the file's adapter metadata gives this module rank ${r}`);
      scale = meta.rslora ? alpha / Math.sqrt(r) : alpha / r;
    }
    const pieces = isOriginal(module) ? originalToDiffusers(module, hidden) : [{ module, start: 0, rows: -1 }];
    let offset = 0;
    for (const p of pieces) {
      const target = targets.modules[p.module];
      if (target === undefined) {
        if (targets.notTargetable.includes(p.module))
          throw bad(
            `LoRA key ${e.down.key}: ${p.module} is a Linear whose weight this bundle's graphs do not hold as is`,
          );
        throw unknownKey(e.down.key, label, p.module);
      }
      const rows = p.rows === -1 ? up.rows - p.start : p.rows;
      if (p.start !== offset || rows !== target.out || p.start + rows > up.rows)
        throw bad(
          `LoRA key ${e.up.key}: shape [${up.rows}, ${up.cols}] does not fit ${p.module} (out ${target.out}` +
            (pieces.length > 1 ? `, as rows ${p.start}.. of ${pieces.length} fused projections)` : ")"),
        );
      offset += rows;
      if (down.cols !== target.in)
        throw bad(
          `LoRA key ${e.down.key}: shape [${down.rows}, ${down.cols}] does not fit ${p.module} (expected [${rank}, ${target.in}])`,
        );
      let slice = up.data.slice(p.start * rank, (p.start + rows) * rank);
      if (p.swapHalves === true) {
        if (rows % 2 !== 0) throw bad(`LoRA key ${e.up.key}: ${rows} rows cannot be swapped in halves`);
        const half = (rows / 2) * rank;
        const swapped = new Float32Array(slice.length);
        swapped.set(slice.subarray(half), 0);
        swapped.set(slice.subarray(0, half), half);
        slice = swapped;
      }
      const first = seen.get(p.module);
      if (first !== undefined) throw bad(`${label}: keys ${first} and ${e.down.key} both target ${p.module}`);
      seen.set(p.module, e.down.key);
      pairs.push({ module: p.module, key: e.down.key, rank, down: down.data, up: slice, scale });
    }
    if (offset !== up.rows)
      throw bad(`LoRA key ${e.up.key}: shape [${up.rows}, ${up.cols}] has rows beyond what ${module} feeds`);
  }
  return { format: kohya ? "kohya" : "diffusers", pairs };
}

function matrixless(t: Tensor, key: string): number {
  const v = toF32(t).data[0]!;
  if (!Number.isFinite(v)) throw bad(`LoRA key ${key}: alpha is not finite`);
  return v;
}

const isOriginal = (module: string): boolean => ORIGINAL_ROOTS.some((r) => module.startsWith(r));

function unknownKey(key: string, label: string, module?: string): FarmError {
  return bad(
    `${label}: unknown key ${key}` +
      (module !== undefined ? ` (${module} is no Linear of this bundle's transformer)` : "") +
      ": expected transformer.<module>.lora_A/lora_B.weight (diffusers), the same under diffusion_model., or lora_unet_<module>.lora_down/lora_up.weight and .alpha (musubi-tuner/kohya), <module> a Linear of the FramePack transformer",
  );
}

/** Original HunyuanVideo module names whose diffusers counterparts this bundle has (for kohya names). */
function originalModuleNames(targets: LoraTargets): string[] {
  const count = (re: RegExp): number =>
    Object.keys(targets.modules).reduce((n, m) => Math.max(n, Number(re.exec(m)?.[1] ?? -1) + 1), 0);
  const doubles = count(/^transformer_blocks\.(\d+)\./);
  const singles = count(/^single_transformer_blocks\.(\d+)\./);
  const refiners = count(/^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\./);
  const out = [
    "time_in.mlp.0",
    "time_in.mlp.2",
    "guidance_in.mlp.0",
    "guidance_in.mlp.2",
    "vector_in.in_layer",
    "vector_in.out_layer",
    "txt_in.input_embedder",
    "txt_in.t_embedder.mlp.0",
    "txt_in.t_embedder.mlp.2",
    "txt_in.c_embedder.linear_1",
    "txt_in.c_embedder.linear_2",
    "final_layer.linear",
    "final_layer.adaLN_modulation.1",
  ];
  for (let i = 0; i < doubles; i++)
    for (const s of ["img", "txt"])
      for (const m of ["mod.linear", "attn_qkv", "attn_proj", "mlp.fc1", "mlp.fc2"])
        out.push(`double_blocks.${i}.${s}_${m}`);
  for (let i = 0; i < singles; i++)
    for (const m of ["linear1", "linear2", "modulation.linear"]) out.push(`single_blocks.${i}.${m}`);
  for (let i = 0; i < refiners; i++)
    for (const m of ["self_attn_qkv", "self_attn_proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1"])
      out.push(`txt_in.individual_token_refiner.blocks.${i}.${m}`);
  return out;
}
