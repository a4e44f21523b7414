/**
 * The gpu-node side of the gpu-step benchmark: the transformer step that torch_step.py timed in
 * PyTorch, run through framefarm's own runtime path (OnnxModel on an onnxruntime-node execution
 * provider) on the same inputs; prints both side by side with the ratio.
 *
 *   node dist/test/bench/gpu-step/main.js --dir DIR [--ep webgpu] [--reps 5]
 */
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { parseArgs } from "node:util";
import { OnnxModel, type Feed } from "../../../gpu-node/runtime/onnx-model.js";
import { parseExecutionProvider } from "../../../gpu-node/runtime/execution-provider.js";
import { decodeSafetensors } from "../../../shared/tensor/safetensors.js";
import { relL2 } from "../../../shared/tensor/ops.js";
import type { F32 } from "../../../shared/tensor/tensor.js";
import { COMPONENT_IO } from "../../../shared/bundle/manifest.js";

const { values } = parseArgs({ options: { dir: { type: "string" }, ep: { type: "string" }, reps: { type: "string" }, opt: { type: "string" } } });
const graphOptimization = (values.opt ?? "all") as "disabled" | "basic" | "extended" | "all";
const dir = values.dir ?? ".";
const ep = parseExecutionProvider(values.ep ?? "webgpu");
const reps = Number(values.reps ?? 5);

const torch = JSON.parse(await readFile(path.join(dir, "torch.json"), "utf8")) as Record<string, number | string>;
const { tensors } = decodeSafetensors(await readFile(path.join(dir, "step.safetensors")));
const feeds: Record<string, Feed> = {};
for (const name of COMPONENT_IO.transformer.inputs) feeds[name] = tensors.get(name) as Feed;

const loadStart = performance.now();
const model = await OnnxModel.load("transformer", path.join(dir, "transformer.onnx"), { ep, graphOptimization });
const loadMs = performance.now() - loadStart;
let out: F32 | undefined;
const times: number[] = [];
for (let i = 0; i < reps + 2; i++) {
  const t = performance.now();
  out = (await model.run(feeds)).noise_pred!;
  if (i >= 2) times.push(performance.now() - t); // two warm-up runs
}
times.sort((a, b) => a - b);
const ms = times[Math.floor(times.length / 2)]!;
const torchMs = Number(torch["torch_bf16_step_ms"]);
const flops = Number(torch["step_flops"]);
const result = {
  device: torch["device"],
  ep,
  node_step_ms: ms,
  node_step_ms_all: times,
  session_load_ms: loadMs,
  node_tflops: flops / (ms / 1e3) / 1e12,
  ratio_vs_pytorch: ms / torchMs,
  rel_l2_vs_torch_fp16: relL2(out!, tensors.get("torch_fp16_out")!),
  rel_l2_vs_torch_bf16: relL2(out!, tensors.get("torch_bf16_out")!),
};
await writeFile(path.join(dir, `gpu-step-${ep}-${graphOptimization}.json`), JSON.stringify({ torch, node: { ...result, graphOptimization } }, null, 1));
const row = (a: string, b: string, c: string): string => `| ${a.padEnd(44)} | ${b.padStart(16)} | ${c.padStart(22)} |`;
console.log(`\ngpu-step: FramePack transformer, real width, ${JSON.stringify(torch["config"])}, latent ${JSON.stringify(torch["latent"])}`);
console.log(`device: ${String(torch["device"])}; tokens: ${torch["tokens_image"]} image + ${torch["tokens_text"]} text; ${(flops / 1e12).toFixed(1)} TFLOP per step`);
console.log(row("", "PyTorch bf16 SDPA", `ort-node ${ep} fp16 (${graphOptimization})`));
console.log(row("---", "---", "---"));
console.log(row("step (median ms)", torchMs.toFixed(1), ms.toFixed(1)));
console.log(row("achieved TFLOP/s", Number(torch["torch_tflops"]).toFixed(0), result.node_tflops.toFixed(1)));
console.log(row("bf16 matmul ceiling TFLOP/s (measured)", Number(torch["bf16_matmul_ceiling_tflops"]).toFixed(0), ""));
console.log(row("peak GPU memory GiB", Number(torch["torch_peak_gib"]).toFixed(1), "n/a"));
console.log(row("relative L2 vs PyTorch fp16 output", "", result.rel_l2_vs_torch_fp16.toExponential(2)));
console.log(`ratio_vs_pytorch: ${result.ratio_vs_pytorch.toFixed(1)}`);
await model.release();
