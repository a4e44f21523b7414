/**
 * The gpu-node side of the VAE benchmark: one section's decode through the decode stage's own
 * path (temporalTiledDecode over the bundle-form vae_decoder graph on OnnxModel), beside the
 * PyTorch decode torch_vae.py timed.
 *
 *   node dist/test/bench/gpu-step/vae.js --dir DIR [--ep webgpu] [--frames N] [--cache-mode disabled|...]
 *     [--repeat R] [--graph FILE]
 *
 * --frames decodes only the first N latent frames (one tile for N <= 5); --cache-mode sets the
 * WebGPU provider's storageBufferCacheMode; --repeat decodes R times and reports the fastest (and
 * makes the last runs' kernels identical, which test/bench/gpu-step/vae-kernels.sh relies on);
 * --graph decodes with another decoder graph than DIR/vae_decoder.onnx (a bundle's, or a variant).
 */
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { parseArgs } from "node:util";
import { OnnxModel } from "../../../gpu-node/runtime/onnx-model.js";
import { parseExecutionProvider } from "../../../gpu-node/runtime/execution-provider.js";
import { decodeSafetensors } from "../../../shared/tensor/safetensors.js";
import { narrow, relL2 } from "../../../shared/tensor/ops.js";
import type { F32 } from "../../../shared/tensor/tensor.js";
import { temporalTiledDecode, type TemporalTiling } from "../../../shared/framepack/vae-tiling.js";

const { values } = parseArgs({
  options: {
    dir: { type: "string" },
    ep: { type: "string" },
    frames: { type: "string" },
    "cache-mode": { type: "string" },
    repeat: { type: "string" },
    graph: { type: "string" },
  },
});
const repeat = Number(values.repeat ?? 1);
const cacheMode = values["cache-mode"];
const dir = values.dir ?? ".";
const ep = parseExecutionProvider(values.ep ?? "webgpu");
const torch = JSON.parse(await readFile(path.join(dir, "vae.json"), "utf8")) as Record<string, unknown>;
const { tensors } = decodeSafetensors(await readFile(path.join(dir, "vae.safetensors")));
const all = tensors.get("latents") as F32;
const latents = values.frames === undefined ? all : narrow(all, 2, 0, Number(values.frames));
const log = (msg: string): void => console.log(`[${new Date().toISOString()}] ${msg}`);

let t = performance.now();
const model = await OnnxModel.load("vae_decoder", values.graph ?? path.join(dir, "vae_decoder.onnx"), {
  ep,
  ...(cacheMode ? { providerOptions: { storageBufferCacheMode: cacheMode } } : {}),
});
const loadMs = performance.now() - t;
log(`session created in ${loadMs.toFixed(0)} ms`);
const tile0 = narrow(latents, 2, 0, Math.min(5, latents.shape[2]!));
t = performance.now();
const first = (await model.run({ latents: tile0 })).sample!;
const warmupMs = performance.now() - t;
log(`first tile (warm-up) ${warmupMs.toFixed(0)} ms`);
const tiling: TemporalTiling = {
  temporal_compression_ratio: 4,
  ...(torch["tiling"] as Omit<TemporalTiling, "temporal_compression_ratio">),
};
let tileMs: number[] = [];
let decodeMs = Infinity;
let video: F32 | undefined;
for (let r = 0; r < repeat; r++) {
  const times: number[] = [];
  t = performance.now();
  video = await temporalTiledDecode(latents, tiling, async (tile) => {
    const s = performance.now();
    const out = (await model.run({ latents: tile })).sample!;
    times.push(performance.now() - s);
    return out;
  });
  const ms = performance.now() - t;
  if (ms < decodeMs) [decodeMs, tileMs] = [ms, times];
}
await model.release();
const torchMs = Number(torch["torch_fp16_vae_decode_ms"]);
const result = {
  device: torch["device"],
  ep,
  latents: latents.shape,
  video: video!.shape,
  graph: values.graph ?? "vae_decoder.onnx",
  repeat,
  session_load_ms: loadMs,
  first_tile_ms: warmupMs,
  decode_ms: decodeMs,
  tile_ms: tileMs,
  blend_and_copy_ms: decodeMs - tileMs.reduce((a, b) => a + b, 0),
  ratio_vs_pytorch: values.frames === undefined ? decodeMs / torchMs : null,
  storage_buffer_cache_mode: cacheMode ?? "default",
  rel_l2_tile0_vs_torch_fp16: tile0.shape[2] === 5 ? relL2(first, tensors.get("torch_fp16_tile0")!) : null,
};
const variant = values.graph === undefined ? "" : `-${path.basename(values.graph, ".onnx")}`;
await writeFile(
  path.join(dir, `vae-${ep}-${latents.shape[2]}f-${cacheMode ?? "default"}${variant}.json`),
  JSON.stringify({ torch, node: result }, null, 1),
);
log(JSON.stringify(result));
console.log(
  `VAE decode of ${latents.shape.join("x")} latents: PyTorch fp16 (all ${all.shape[2]} frames) ${torchMs.toFixed(0)} ms, ort-node ${ep} ${decodeMs.toFixed(0)} ms (ratio ${result.ratio_vs_pytorch?.toFixed(2) ?? "n/a: not the whole section"})`,
);
