/**
 * LoRA files against the tiny bundle's targets (shared/lora/lora-file.ts): each format's keys and
 * scale, HunyuanVideo's original names split as diffusers splits them, PEFT's patterns; the fused
 * weight against a plain product (gpu-node/runtime/lora-fusion.ts); and the node's transformer
 * variants: one fused graph per bundle + LoRAs + weights on disk, at most liveVariants sessions.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createHash } from "node:crypto";
import { loraTargetsOf, originalToDiffusers, parseLora, type LoraPair } from "../../shared/lora/lora-file.js";
import { fuseWeight } from "../../gpu-node/runtime/lora-fusion.js";
import { openBundle } from "../../gpu-node/runtime/bundle.js";
import { ModelRuntime } from "../../gpu-node/runtime/model-runtime.js";
import { parseExecutionProvider } from "../../gpu-node/runtime/execution-provider.js";
import { decodeSafetensors, encodeSafetensors } from "../../shared/tensor/safetensors.js";
import { Tensor } from "../../shared/tensor/tensor.js";
import { FarmError } from "../../shared/errors.js";
import { tinyBundleDir } from "../support/paths.js";
import { diffusersLora, goodLora, kohyaLora, values } from "../support/lora.js";
import { readFile } from "node:fs/promises";
import type { Feed } from "../../gpu-node/runtime/onnx-model.js";
import { repoRoot } from "../support/paths.js";

/** Section 0's transformer inputs of a reference case that holds them all. */
async function transformerFeeds(): Promise<Record<string, Feed>> {
  const file = path.join(repoRoot(), "test", "fixtures", "reference-cases", "teacache_unipc_vanilla.safetensors");
  const feeds: Record<string, Feed> = {};
  for (const [k, v] of decodeSafetensors(await readFile(file)).tensors)
    if (k.startsWith("section0.transformer_in.")) feeds[k.slice("section0.transformer_in.".length)] = v as Feed;
  const mask = feeds["encoder_attention_mask"]!;
  feeds["encoder_attention_mask"] = new Tensor("float32", mask.shape, Float32Array.from(mask.data, Number));
  return feeds;
}

const bundle = await openBundle(tinyBundleDir());
const targets = loraTargetsOf(bundle.manifest);
const HIDDEN = 20;
const parse = (bytes: Uint8Array) => parseLora(bytes, targets, HIDDEN, "LoRA 1");
const byModule = (pairs: LoraPair[]) => new Map(pairs.map((p) => [p.module, p]));
const status = (code: string, message: RegExp) => (err: unknown) =>
  err instanceof FarmError && err.status === code && message.test(err.message);

test("the tiny bundle's manifest names all 42 Linears of its transformer", () => {
  assert.equal(Object.keys(targets.modules).length, 42);
  assert.deepEqual(targets.modules["transformer_blocks.0.attn.to_q"], {
    initializer: targets.modules["transformer_blocks.0.attn.to_q"]!.initializer,
    layout: "in_out",
    out: 20,
    in: 20,
  });
  assert.equal(targets.modules["norm_out.linear"]!.layout, "out_in");
});

test("diffusers keys: scale 1 without metadata; PEFT's lora_alpha / r with rank and alpha patterns", () => {
  const plain = parse(goodLora());
  assert.equal(plain.format, "diffusers");
  assert.deepEqual(
    plain.pairs.map((p) => [p.module, p.rank, p.scale]),
    [
      ["transformer_blocks.0.attn.to_q", 4, 1],
      ["transformer_blocks.0.attn.to_v", 4, 1],
    ],
  );
  const meta = {
    lora_adapter_metadata: JSON.stringify({
      "transformer.r": 4,
      "transformer.lora_alpha": 8,
      "transformer.rank_pattern": { "^proj_out": 2 },
      "transformer.alpha_pattern": { "attn.to_k": 2, "^proj_out": 1 },
    }),
  };
  const withMeta = byModule(
    parse(
      encodeSafetensors(
        {
          ...tensorsOf(
            diffusersLora({
              "transformer_blocks.0.attn.to_k": [20, 20],
              "single_transformer_blocks.0.proj_out": [20, 100],
            }),
          ),
          ...tensorsOf(diffusersLora({ proj_out: [16, 20] }, 2)),
        },
        meta,
      ),
    ).pairs,
  );
  assert.equal(withMeta.get("transformer_blocks.0.attn.to_k")!.scale, 0.5); // alpha_pattern 2 / r 4
  assert.equal(withMeta.get("single_transformer_blocks.0.proj_out")!.scale, 2); // 8 / 4: ^proj_out is the top one only
  assert.equal(withMeta.get("proj_out")!.scale, 0.5); // 1 / 2
  // The metadata's rank must be the tensors'.
  assert.throws(
    () => parse(diffusersLora({ proj_out: [16, 20] }, 4, 1, meta)),
    status("INVALID_ARGUMENT", /rank 4, but the file's adapter metadata gives this module rank 2/),
  );
});

test("musubi/kohya keys: FramePack and original names, scale alpha / rank (none or 0: 1)", () => {
  const framepack = parse(kohyaLora({ "transformer_blocks.0.ff.net.0.proj": [80, 20] }, 4, 1, 2));
  assert.equal(framepack.format, "kohya");
  assert.deepEqual(
    framepack.pairs.map((p) => [p.module, p.scale]),
    [["transformer_blocks.0.ff.net.0.proj", 0.5]],
  );
  assert.equal(parse(kohyaLora({ proj_out: [16, 20] })).pairs[0]!.scale, 1);
  assert.equal(parse(kohyaLora({ proj_out: [16, 20] }, 4, 1, 0)).pairs[0]!.scale, 1);
  // single_blocks.0.linear1: lora_up split into q, k, v (hidden rows each) and proj_mlp, lora_down shared.
  const bytes = kohyaLora({ "single_blocks.0.linear1": [140, 20] }, 4, 3, 8);
  const pairs = byModule(parse(bytes).pairs);
  assert.deepEqual(
    [...pairs.keys()],
    [
      "single_transformer_blocks.0.attn.to_q",
      "single_transformer_blocks.0.attn.to_k",
      "single_transformer_blocks.0.attn.to_v",
      "single_transformer_blocks.0.proj_mlp",
    ],
  );
  const up = tensorsOf(bytes)["lora_unet_single_blocks_0_linear1.lora_up.weight"]!.data as Float32Array;
  assert.deepEqual(pairs.get("single_transformer_blocks.0.attn.to_k")!.up, up.slice(20 * 4, 40 * 4));
  assert.deepEqual(pairs.get("single_transformer_blocks.0.proj_mlp")!.up, up.slice(60 * 4));
  for (const p of pairs.values()) assert.equal(p.scale, 2);
});

test("original HunyuanVideo names convert as diffusers' _convert_hunyuan_video_lora_to_diffusers does", () => {
  const one = (n: string) => originalToDiffusers(n, HIDDEN).map((p) => p.module);
  assert.deepEqual(one("double_blocks.0.img_attn_qkv"), [
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_k",
    "transformer_blocks.0.attn.to_v",
  ]);
  assert.deepEqual(one("double_blocks.0.txt_attn_qkv"), [
    "transformer_blocks.0.attn.add_q_proj",
    "transformer_blocks.0.attn.add_k_proj",
    "transformer_blocks.0.attn.add_v_proj",
  ]);
  assert.deepEqual(one("double_blocks.0.txt_mlp.fc2"), ["transformer_blocks.0.ff_context.net.2"]);
  assert.deepEqual(one("double_blocks.0.img_mod.linear"), ["transformer_blocks.0.norm1.linear"]);
  assert.deepEqual(one("single_blocks.0.linear2"), ["single_transformer_blocks.0.proj_out"]);
  assert.deepEqual(one("single_blocks.0.modulation.linear"), ["single_transformer_blocks.0.norm.linear"]);
  assert.deepEqual(one("txt_in.individual_token_refiner.blocks.0.mlp.fc1"), [
    "context_embedder.token_refiner.refiner_blocks.0.ff.net.0.proj",
  ]);
  assert.deepEqual(one("txt_in.individual_token_refiner.blocks.0.adaLN_modulation.1"), [
    "context_embedder.token_refiner.refiner_blocks.0.norm_out.linear",
  ]);
  assert.deepEqual(one("txt_in.c_embedder.linear_1"), ["context_embedder.time_text_embed.text_embedder.linear_1"]);
  assert.deepEqual(one("txt_in.input_embedder"), ["context_embedder.proj_in"]);
  assert.deepEqual(one("vector_in.in_layer"), ["time_text_embed.text_embedder.linear_1"]);
  assert.deepEqual(one("final_layer.linear"), ["proj_out"]);
  // final_layer's modulation: (shift, scale) -> (scale, shift), lora_up's halves swapped.
  const t = tensorsOf(
    encodeSafetensors({
      "diffusion_model.final_layer.adaLN_modulation.1.lora_A.weight": new Tensor("float32", [2, 20], values(40, 5)),
      "diffusion_model.final_layer.adaLN_modulation.1.lora_B.weight": new Tensor("float32", [40, 2], values(80, 6)),
    }),
  );
  const pair = parse(encodeSafetensors(t)).pairs[0]!;
  const up = t["diffusion_model.final_layer.adaLN_modulation.1.lora_B.weight"]!.data as Float32Array;
  assert.equal(pair.module, "norm_out.linear");
  assert.deepEqual(pair.up, Float32Array.from([...up.slice(40), ...up.slice(0, 40)]));
});

test("bad files name the key: unknown, wrong shape, missing half, duplicates, LoRA bias", () => {
  const bad = (bytes: Uint8Array, message: RegExp) =>
    assert.throws(() => parse(bytes), status("INVALID_ARGUMENT", message));
  bad(
    diffusersLora({ "transformer_blocks.1.attn.to_q": [20, 20] }),
    /unknown key transformer.transformer_blocks.1.attn.to_q.lora_A.weight/,
  );
  bad(
    diffusersLora({ "transformer_blocks.0.attn.to_q": [21, 20] }),
    /lora_B.weight: shape \[21, 4\] does not fit transformer_blocks.0.attn.to_q \(out 20\)/,
  );
  bad(
    kohyaLora({ "double_blocks.3.img_attn_qkv": [60, 20] }),
    /unknown key lora_unet_double_blocks_3_img_attn_qkv.lora_down.weight/,
  );
  bad(
    encodeSafetensors({
      ...tensorsOf(goodLora()),
      "transformer.transformer_blocks.0.attn.to_q.lora_B.bias": new Tensor("float32", [20], new Float32Array(20)),
    }),
    /is a LoRA bias, which is not supported/,
  );
  bad(
    encodeSafetensors({
      ...tensorsOf(kohyaLora({ "transformer_blocks.0.attn.to_q": [20, 20] })),
      ...tensorsOf(kohyaLora({ "double_blocks.0.img_attn_qkv": [60, 20] })),
    }),
    /both target transformer_blocks.0.attn.to_q/,
  );
  bad(encodeSafetensors({}), /holds no tensors/);
});

test("the fused weight is W + sum(w s B A) in the stored layout, to float32 rounding", async () => {
  for (const layout of ["in_out", "out_in"] as const) {
    const target = { initializer: "w", layout, out: 6, in: 5 };
    const base = values(30, 11);
    const pair = (rank: number, seed: number, scale: number): LoraPair => ({
      module: "m",
      key: "k",
      rank,
      down: values(rank * 5, seed),
      up: values(6 * rank, seed + 1),
      scale,
    });
    const a = pair(2, 21, 0.5);
    const b = pair(3, 31, 2);
    const fused = await fuseWeight(base, target, [
      { pair: a, factor: 0.8 * a.scale },
      { pair: b, factor: -1.5 * b.scale },
    ]);
    for (let o = 0; o < 6; o++)
      for (let i = 0; i < 5; i++) {
        let d = 0;
        for (const [p, f] of [
          [a, 0.8 * a.scale],
          [b, -1.5 * b.scale],
        ] as const)
          for (let r = 0; r < p.rank; r++) d += f * p.up[o * p.rank + r]! * p.down[r * 5 + i]!;
        const at = layout === "out_in" ? o * 5 + i : i * 6 + o;
        assert.ok(Math.abs(fused[at]! - (base[at]! + d)) < 1e-6, `${layout} [${o}, ${i}]`);
      }
  }
});

test("transformer variants: fused graphs on disk by bundle + LoRAs + weights, one live weight set at a time", async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-lora-unit-"));
  const runtime = new ModelRuntime(
    bundle,
    { ep: parseExecutionProvider("cpu") },
    {
      cacheDir: dir,
      cacheBytes: 2 ** 30,
      liveVariants: 1,
    },
  );
  try {
    const file = goodLora(9);
    const sha256 = createHash("sha256").update(file).digest("hex");
    const reads: number[] = [];
    const source = async () => {
      reads.push(1);
      return file;
    };
    const feeds = await transformerFeeds();
    const base = (await (await runtime.model("transformer")).run(feeds))["noise_pred"]!;
    const withLora = await runtime.withLoras([{ name: "a", sha256, weight: 1 }], source);
    const fused = (await (await withLora.model("transformer")).run(feeds))["noise_pred"]!;
    assert.equal(runtime.liveVariantKeys().length, 1, "the bundle's own transformer was released");
    assert.ok(!runtime.liveVariantKeys().includes(""));
    let diff = 0;
    for (let i = 0; i < base.numel; i++) diff = Math.max(diff, Math.abs(base.data[i]! - fused.data[i]!));
    assert.ok(diff > 1e-3, `the LoRA changes the output (max |d| ${diff})`);
    // Weight 0 is the bundle's own weights (another variant, same numbers).
    const zero = await runtime.withLoras([{ name: "a", sha256, weight: 0 }], source);
    const same = (await (await zero.model("transformer")).run(feeds))["noise_pred"]!;
    assert.deepEqual(
      [...same.data].map((v, i) => Math.abs(v - base.data[i]!) < 1e-6),
      new Array(base.numel).fill(true),
    );
    assert.equal((await readdir(dir)).length, 2, "two variants on disk");
    assert.equal(reads.length, 2);
    // The first variant again: built already, its file is not read.
    const again = await runtime.withLoras([{ name: "a", sha256, weight: 1 }], source);
    const out = (await (await again.model("transformer")).run(feeds))["noise_pred"]!;
    assert.deepEqual(out.data, fused.data);
    assert.equal(reads.length, 2);
    // The step caches' graphs get the same LoRA: a computed call is the fused transformer.
    const computed = await (
      await again.model("transformer_residual")
    ).runTimed(feeds, undefined, {
      keep: ["residual"],
    });
    computed.kept["residual"]!.release();
    let split = 0;
    const cachedPred = computed.outputs["noise_pred"]!;
    for (let i = 0; i < out.numel; i++) split = Math.max(split, Math.abs(cachedPred.data[i]! - out.data[i]!));
    assert.ok(split < 1e-5, `transformer_residual with the LoRA = the single graph (max |d| ${split})`);
    // A file that is not the named one is DATA_LOSS.
    const wrong = await runtime.withLoras([{ name: "b", sha256: "f".repeat(64), weight: 1 }], source);
    await assert.rejects(wrong.model("transformer"), status("DATA_LOSS", /LoRA 1 \(b\): the file read has SHA-256/));
  } finally {
    await runtime.close();
    await rm(dir, { recursive: true, force: true });
  }
});

function tensorsOf(bytes: Uint8Array): Record<string, Tensor> {
  return Object.fromEntries(decodeSafetensors(bytes).tensors);
}
