/**
 * The gpu-node side of the gpu-step benchmark: the transformer step that torch_step.py timed in
 * PyTorch, run through framefarm's own runtime path (OnnxModel on an onnxruntime-node execution
 * provider) on the same inputs, then a whole section through the gpu-node's denoise stage
 * (history packing + every step), and, with --resident, the same section with the tensors kept
 * on the GPU between steps (onnxruntime-node IO binding: outputs as 'gpu-buffer' tensors fed back
 * as inputs). Prints the result beside PyTorch's with the ratio and writes it as JSON.
 *
 *   node dist/test/bench/gpu-step/main.js --dir DIR [--ep webgpu] [--reps 5] [--steps 25]
 *     [--opt all|extended|basic|disabled] [--resident] [--no-section] [--section-budget-s 150] [--micro]
 *     [--latents-out FILE] [--latents-ref FILE]
 *
 * A section runs `--steps` steps unless that would take longer than --section-budget-s at the
 * measured step time; then it runs fewer, and the JSON and table say how many (every step of a
 * section costs the same: same shapes, only the timestep differs). --micro also times the step's
 * two kinds of heavy work alone on the provider (matmul.onnx, mha.onnx from torch_step.py) and
 * the step with WebGPU validation disabled.
 */
import { readFile, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import ort from "onnxruntime-node";
import { OnnxModel, type Feed } from "../../../gpu-node/runtime/onnx-model.js";
import { parseExecutionProvider } from "../../../gpu-node/runtime/execution-provider.js";
import { denoiseSection } from "../../../gpu-node/stages/denoise-section.js";
import { decodeSafetensors, encodeSafetensors } from "../../../shared/tensor/safetensors.js";
import { relL2 } from "../../../shared/tensor/ops.js";
import { Tensor, type F32 } from "../../../shared/tensor/tensor.js";
import { COMPONENT_IO, type SchedulerConfig } from "../../../shared/bundle/manifest.js";
import { planSections } from "../../../shared/framepack/plan.js";
import { appendSection, sectionInputs, type History } from "../../../shared/framepack/history.js";
import { flowMatchSchedule } from "../../../shared/sampler/flow-match.js";
import { TorchGenerator } from "../../../shared/sampler/torch-rng.js";
import { toFloat16 } from "../../../shared/tensor/half.js";

const { values } = parseArgs({
  options: {
    dir: { type: "string" },
    ep: { type: "string" },
    reps: { type: "string" },
    steps: { type: "string" },
    opt: { type: "string" },
    resident: { type: "boolean" },
    "no-section": { type: "boolean" },
    "section-budget-s": { type: "string" },
    micro: { type: "boolean" },
    "latents-out": { type: "string" },
    "latents-ref": { type: "string" },
  },
});
const graphOptimization = (values.opt ?? "all") as "disabled" | "basic" | "extended" | "all";
const dir = values.dir ?? ".";
const ep = parseExecutionProvider(values.ep ?? "webgpu");
const reps = Number(values.reps ?? 5);
const requestedSteps = Number(values.steps ?? 25);
const sectionBudgetMs = Number(values["section-budget-s"] ?? 150) * 1000;

const torch = JSON.parse(await readFile(path.join(dir, "torch.json"), "utf8")) as Record<string, unknown>;
const num = (k: string): number => Number(torch[k]);
const { tensors } = decodeSafetensors(await readFile(path.join(dir, "step.safetensors")));
const feeds: Record<string, Feed> = {};
for (const name of COMPONENT_IO.transformer.inputs) feeds[name] = tensors.get(name) as Feed;
const f32 = (name: string): F32 => tensors.get(name) as F32;
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const log = (msg: string): void => console.log(`[${new Date().toISOString()}] ${msg}`);

// 1. One step, the gpu-node's OnnxModel as the denoise stage calls it (float32 in and out of host memory).
const t0 = performance.now();
const model = await OnnxModel.load("transformer", path.join(dir, "transformer.onnx"), { ep, graphOptimization });
const loadMs = performance.now() - t0;
log(`session created in ${loadMs.toFixed(0)} ms`);
let out: F32 | undefined;
const stepTimes: number[] = [];
const warmup: number[] = [];
for (let i = 0; i < reps + 2; i++) {
  const t = performance.now();
  out = (await model.run(feeds)).noise_pred!;
  (i >= 2 ? stepTimes : warmup).push(performance.now() - t);
  log(`step ${i}: ${(performance.now() - t).toFixed(1)} ms${i < 2 ? " (warm-up)" : ""}`);
}
const stepMs = median(stepTimes);
const steps = Math.max(2, Math.min(requestedSteps, Math.floor(sectionBudgetMs / stepMs)));
if (steps < requestedSteps)
  log(`section: ${steps} of ${requestedSteps} steps fit the ${sectionBudgetMs / 1000} s budget`);

// 2. A whole section through the denoise stage: a middle section of an inverted-sampling video at
// this latent size, history packing (sectionInputs before, appendSection after) and `steps` steps.
const [, channels, window, lh, lw] = f32("hidden_states").shape as [number, number, number, number, number];
const scheduler: SchedulerConfig = {
  class: "FlowMatchEulerDiscreteScheduler",
  num_train_timesteps: 1000,
  shift: 7,
  use_dynamic_shifting: false,
};
const schedule = flowMatchSchedule(scheduler, steps, 0);
const plan = planSections({
  samplingType: "inverted_anti_drifting",
  numFrames: 4 * (window - 1) * 4 + 1,
  latentWindowSize: window,
  hasEndImage: false,
});
const section = plan.sections[1]!;
const gen = new TorchGenerator(7n);
const imageLatents = gen.randn([1, channels, 1, lh, lw]);
const history: History = { latents: gen.randn([1, channels, 19 + window, lh, lw]), generated: window };
const noise = gen.randn([1, channels, window, lh, lw]);
const prompt = {
  embeds: f32("encoder_hidden_states"),
  mask: f32("encoder_attention_mask"),
  pooled: f32("pooled_projections"),
};

interface SectionResult {
  ms: number;
  packMs: number;
  latents: F32;
}
async function hostSection(): Promise<SectionResult> {
  const start = performance.now();
  const context = sectionInputs(plan, section, history, imageLatents, null);
  const packA = performance.now() - start;
  const runtime = { model: () => Promise.resolve(model) };
  const latents = await denoiseSection(runtime, {
    noise,
    prompt,
    trueCfgScale: 1,
    imageEmbeds: f32("image_embeds"),
    context,
    guidanceScale: 10,
    schedule,
  });
  const b = performance.now();
  appendSection(plan, section, history, latents, imageLatents);
  const end = performance.now();
  return { ms: end - start, packMs: packA + (end - b), latents };
}

let host: SectionResult | undefined;
// --latents-out keeps the section's latents; --latents-ref compares with ones kept so (e.g. a
// quantized transformer's section against the fp16 one's, test/bench/quantized).
let sectionRelL2VsRef: number | null = null;
if (values["no-section"] !== true) {
  host = await hostSection();
  log(`section (host I/O): ${host.ms.toFixed(0)} ms for ${steps} steps, packing ${host.packMs.toFixed(1)} ms`);
  if (values["latents-out"] !== undefined)
    await writeFile(values["latents-out"], encodeSafetensors({ latents: host.latents }));
  if (values["latents-ref"] !== undefined) {
    const ref = decodeSafetensors(await readFile(values["latents-ref"])).tensors.get("latents") as F32;
    sectionRelL2VsRef = relL2(host.latents, ref);
    log(`section latents vs ${values["latents-ref"]}: rel L2 ${sectionRelL2VsRef.toExponential(3)}`);
  }
}
await model.release();

// 3. The same section with tensors resident on the GPU between steps (WebGPU IO binding).
let resident: (SectionResult & { loadMs: number; stepMs: number; relL2VsHost: number | null }) | undefined;
let residentError: string | undefined;
if (values.resident === true && ep === "webgpu" && existsSync(path.join(dir, "euler.onnx"))) {
  try {
    resident = await residentSection();
    log(
      `section (GPU-resident): ${resident.ms.toFixed(0)} ms, ${resident.stepMs.toFixed(1)} ms per step, rel L2 vs host ${resident.relL2VsHost}`,
    );
  } catch (err) {
    residentError = (err as Error).message;
    log(`section (GPU-resident) failed: ${residentError}`);
  }
}

// 4. Where the time goes: the heavy ops alone, and the step under other provider settings.
const micro: Record<string, unknown> = {};
if (values.micro === true && ep === "webgpu") {
  const tokens = num("tokens_image") + num("tokens_text");
  const width = 3072;
  const randomHalf = (n: number): Uint16Array => {
    const g = new TorchGenerator(3n);
    return toFloat16(g.randn([n]).data);
  };
  const timeGraph = async (
    file: string,
    feedsOf: () => Record<string, ort.Tensor>,
    flop: number,
    runs = 3,
  ): Promise<Record<string, number>> => {
    // Outputs come back to host memory, so a run's time includes waiting for the GPU (and one
    // [tokens, width] fp16 download, small beside the work).
    const session = await ort.InferenceSession.create(path.join(dir, file), {
      executionProviders: ["webgpu"],
      logSeverityLevel: 3,
    });
    const f = feedsOf();
    const times: number[] = [];
    for (let i = 0; i < runs + 1; i++) {
      const t = performance.now();
      await session.run(f);
      if (i > 0) times.push(performance.now() - t);
    }
    await session.release();
    const ms = median(times);
    return { ms, tflops: flop / (ms / 1e3) / 1e12 };
  };
  try {
    const x = randomHalf(tokens * width);
    micro.matmul = await timeGraph(
      "matmul.onnx",
      () => ({ x: new ort.Tensor("float16", x, [1, tokens, width]) }),
      8 * 2 * tokens * width * 4 * width,
    );
    log(`micro matmul: ${JSON.stringify(micro.matmul)}`);
    micro.mha = await timeGraph(
      "mha.onnx",
      () => ({
        q: new ort.Tensor("float16", x, [1, tokens, width]),
        k: new ort.Tensor("float16", x, [1, tokens, width]),
        v: new ort.Tensor("float16", x, [1, tokens, width]),
      }),
      3 * 4 * tokens * tokens * width,
    );
    log(`micro mha: ${JSON.stringify(micro.mha)}`);
  } catch (err) {
    micro.error = (err as Error).message;
    log(`micro failed: ${micro.error as string}`);
  }
  for (const [label, provider] of [["validation disabled", { name: "webgpu", validationMode: "disabled" }]] as const) {
    try {
      const session = await ort.InferenceSession.create(path.join(dir, "transformer.onnx"), {
        executionProviders: [provider],
        graphOptimizationLevel: graphOptimization,
        logSeverityLevel: 3,
      });
      const cpuFeeds: Record<string, ort.Tensor> = {};
      for (const [k, t] of Object.entries(feeds))
        cpuFeeds[k] = t.is("int64")
          ? new ort.Tensor("int64", t.data, [...t.shape])
          : new ort.Tensor("float32", t.data as Float32Array, [...t.shape]);
      const times: number[] = [];
      for (let i = 0; i < 4; i++) {
        const t = performance.now();
        await session.run(cpuFeeds);
        if (i > 0) times.push(performance.now() - t);
      }
      await session.release();
      micro[label] = { step_ms: median(times), all: times };
      log(`step with ${label}: ${median(times).toFixed(1)} ms`);
    } catch (err) {
      micro[label] = { error: (err as Error).message };
    }
  }
}

async function residentSection(): Promise<
  SectionResult & { loadMs: number; stepMs: number; relL2VsHost: number | null }
> {
  const gpuOut = {
    executionProviders: ["webgpu"],
    graphOptimizationLevel: graphOptimization,
    preferredOutputLocation: "gpu-buffer" as const,
    logSeverityLevel: 3 as const,
  };
  const l0 = performance.now();
  const transformer = await ort.InferenceSession.create(path.join(dir, "transformer.onnx"), gpuOut);
  const loadMs = performance.now() - l0;
  const upload = await ort.InferenceSession.create(path.join(dir, "upload.onnx"), gpuOut);
  const euler = await ort.InferenceSession.create(path.join(dir, "euler.onnx"), gpuOut);
  const eulerToHost = await ort.InferenceSession.create(path.join(dir, "euler.onnx"), {
    ...gpuOut,
    preferredOutputLocation: "cpu" as const,
  });
  const cpu = (t: Tensor): ort.Tensor =>
    t.is("int64")
      ? new ort.Tensor("int64", t.data, [...t.shape])
      : new ort.Tensor("float32", t.data as Float32Array, [...t.shape]);
  const scalar = (v: number): ort.Tensor => new ort.Tensor("float32", Float32Array.of(v), [1]);

  const start = performance.now();
  const context = sectionInputs(plan, section, history, imageLatents, null);
  const packA = performance.now() - start;
  // Everything constant over the section goes up once.
  const perSection: Record<string, Tensor> = {
    encoder_hidden_states: prompt.embeds,
    encoder_attention_mask: prompt.mask,
    pooled_projections: prompt.pooled,
    image_embeds: f32("image_embeds"),
    guidance: Tensor.f32([1], [Math.fround(10 * 1000)]),
    latents_clean: context.latentsClean,
    latents_history_2x: context.history2x,
    latents_history_4x: context.history4x,
  };
  const up = await upload.run(Object.fromEntries(upload.inputNames.map((n) => [n, cpu(perSection[n]!)])));
  const constant: Record<string, ort.Tensor> = {
    indices_latents: cpu(context.indicesLatents),
    indices_latents_clean: cpu(context.indicesClean),
    indices_latents_history_2x: cpu(context.indices2x),
    indices_latents_history_4x: cpu(context.indices4x),
  };
  for (const n of upload.inputNames) constant[n] = up[`${n}_gpu`]!;
  let latents: ort.Tensor = cpu(noise);
  let final: F32 | undefined;
  for (let i = 0; i < steps; i++) {
    const pred = (
      await transformer.run({ ...constant, hidden_states: latents, timestep: scalar(schedule.timesteps[i]!) })
    ).noise_pred!;
    const last = i === steps - 1;
    const dt = Math.fround(Math.fround(schedule.sigmas[i + 1]!) - Math.fround(schedule.sigmas[i]!));
    const next = (await (last ? eulerToHost : euler).run({ latents, noise_pred: pred, dt: scalar(dt) })).latents_out!;
    pred.dispose();
    if (latents.location === "gpu-buffer") latents.dispose();
    latents = next;
    if (last) final = new Tensor("float32", latents.dims.map(Number), latents.data as Float32Array);
  }
  const b = performance.now();
  appendSection(plan, section, history, final!, imageLatents);
  const end = performance.now();
  for (const v of Object.values(up)) v.dispose();
  await Promise.all([transformer.release(), upload.release(), euler.release(), eulerToHost.release()]);
  // Runs with GPU outputs return before the GPU finishes; the last step's download waits for all
  // of them, so only the section total is a GPU time (stepMs is that total over the steps).
  return {
    ms: end - start,
    packMs: packA + (end - b),
    latents: final!,
    loadMs,
    stepMs: (b - start - packA) / steps,
    relL2VsHost: host ? relL2(final!, host.latents) : null,
  };
}

const torchMs = num("torch_bf16_step_ms");
const flops = num("step_flops");
const tflops = (ms: number): number => flops / (ms / 1e3) / 1e12;
const result = {
  device: torch["device"],
  ep,
  graphOptimization,
  attention: torch["attention"],
  node_step_ms: stepMs,
  node_step_ms_all: stepTimes,
  node_warmup_ms: warmup,
  session_load_ms: loadMs,
  node_tflops: tflops(stepMs),
  ratio_vs_pytorch: stepMs / torchMs,
  rel_l2_vs_torch_fp16: relL2(out!, f32("torch_fp16_out")),
  rel_l2_vs_torch_bf16: relL2(out!, f32("torch_bf16_out")),
  steps_requested: requestedSteps,
  section_steps: steps,
  section_host_ms: host?.ms ?? null,
  section_host_packing_ms: host?.packMs ?? null,
  section_rel_l2_vs_ref: sectionRelL2VsRef,
  resident,
  resident_error: residentError ?? null,
  micro,
};
const { latents: _l, ...residentSummary } = resident ?? { latents: undefined };
await writeFile(
  path.join(dir, `gpu-step-${ep}-${graphOptimization}.json`),
  JSON.stringify({ torch, node: { ...result, resident: resident ? residentSummary : null } }, null, 1),
);

const row = (a: string, b: string, c: string): string => `| ${a.padEnd(46)} | ${b.padStart(18)} | ${c.padStart(28)} |`;
console.log(
  `\ngpu-step: FramePack transformer, real width, ${JSON.stringify(torch["config"])}, latent ${JSON.stringify(torch["latent"])}`,
);
console.log(
  `device: ${String(torch["device"])}; tokens: ${String(torch["tokens_image"])} image + ${String(torch["tokens_text"])} text; ${(flops / 1e12).toFixed(1)} TFLOP per step`,
);
console.log(row("", "PyTorch bf16 SDPA", `ort-node ${ep} fp16, ${String(torch["attention"])} attn`));
console.log(row("---", "---", "---"));
console.log(row("step (median ms)", torchMs.toFixed(1), stepMs.toFixed(1)));
console.log(row("achieved TFLOP/s", num("torch_tflops").toFixed(0), result.node_tflops.toFixed(1)));
console.log(row("bf16 matmul ceiling TFLOP/s (measured)", num("bf16_matmul_ceiling_tflops").toFixed(0), ""));
console.log(row("peak GPU memory GiB", num("torch_peak_gib").toFixed(1), "see nvidia-smi log"));
if (host)
  console.log(
    row(`section, ${steps} steps + packing (ms)`, num("torch_bf16_section_ms").toFixed(0), host.ms.toFixed(0)),
  );
if (resident)
  console.log(row(`section, GPU-resident (ms)`, "", `${resident.ms.toFixed(0)} (step ${resident.stepMs.toFixed(1)})`));
console.log(row("relative L2 vs PyTorch fp16 output", "", result.rel_l2_vs_torch_fp16.toExponential(2)));
console.log(`ratio_vs_pytorch: ${result.ratio_vs_pytorch.toFixed(2)}`);
