/**
 * Memory admission on a node: what a job needs here (shared/job/memory-estimate.ts, from the
 * bundle's shapes and the job's size) against what this node has, refused with RESOURCE_EXHAUSTED
 * before any work when it cannot fit. What the node has: FRAMEFARM_MEMORY_MB when set (the way to
 * state a GPU's memory, which onnxruntime does not report); on the CPU provider this process's
 * resident memory plus what the kernel can still give it (MemAvailable, or the cgroup limit).
 * On other providers without FRAMEFARM_MEMORY_MB nothing is checked.
 */
import { readFileSync, statSync } from "node:fs";
import { readFields, fieldString, int64s } from "./onnx-proto.js";
import { COMPONENT_NAMES, STEP_CACHE_COMPONENT_NAMES } from "../../shared/bundle/manifest.js";
import { estimateJobMemory, admitMemory, gib, type MemoryEstimate } from "../../shared/job/memory-estimate.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { renderParamsOf, type JobSpec } from "../../shared/job/job-spec.js";
import type { ModelRuntime } from "./model-runtime.js";
import type { GpuStats } from "../../proto/gen/framefarm/v1/node.js";
import { FarmError } from "../../shared/errors.js";
import { skipsSteps } from "../../shared/job/render-params.js";

function readNumber(file: string, pattern?: RegExp): number | null {
  try {
    const text = readFileSync(file, "utf8");
    const m = pattern === undefined ? /^\s*(\d+)\s*$/.exec(text) : pattern.exec(text);
    return m === null ? null : Number(m[1]);
  } catch {
    return null;
  }
}

/**
 * Bytes this process could hold in all, and where that number comes from; null: unknown. On CUDA
 * that is the memory of the GPU this process runs on as nvidia-smi last reported it (`gpus`, the
 * node's sampler), since onnxruntime does not report it.
 */
export function availableMemory(
  ep: string,
  env: NodeJS.ProcessEnv = process.env,
  gpus: readonly GpuStats[] = [],
): { bytes: number; what: string; gpu?: true } | null {
  const mb = env["FRAMEFARM_MEMORY_MB"];
  if (mb !== undefined && mb !== "" && Number.isFinite(Number(mb)) && Number(mb) > 0)
    return { bytes: Number(mb) * 2 ** 20, what: "this node (FRAMEFARM_MEMORY_MB)" };
  const gpu = gpus[0];
  if (ep === "cuda" && gpu !== undefined)
    return {
      bytes: gpu.memoryTotalMib * 2 ** 20,
      what: `GPU ${gpu.index} (${gpu.name}, ${gpu.memoryTotalMib} MiB as nvidia-smi reports it)`,
      gpu: true,
    };
  if (ep !== "cpu") return null;
  const rss = process.memoryUsage.rss();
  const memAvailable = readNumber("/proc/meminfo", /MemAvailable:\s+(\d+) kB/);
  let bytes = memAvailable === null ? null : rss + memAvailable * 1024;
  const limit = readNumber("/sys/fs/cgroup/memory.max");
  const used = readNumber("/sys/fs/cgroup/memory.current");
  if (limit !== null && used !== null) bytes = Math.min(bytes ?? Infinity, rss + Math.max(0, limit - used));
  return bytes === null ? null : { bytes, what: "this machine (its free memory and this process's own)" };
}

/** The channels of the VAE decoder's last convolution's input (its widest full-resolution tensor). */
function decoderChannels(file: string): number | undefined {
  try {
    const graph = readFields(readFileSync(file)).find((f) => f.no === 7);
    if (graph === undefined) return undefined;
    let channels: number | undefined;
    for (const f of readFields(graph.payload)) {
      if (f.no !== 5) continue;
      const fields = readFields(f.payload);
      const name = fields.find((g) => g.no === 8);
      const dims = int64s(fields, 1);
      if (name !== undefined && /conv_out.*weight/.test(fieldString(name)) && dims.length === 5)
        channels = Number(dims[1]);
    }
    return channels;
  } catch {
    return undefined;
  }
}

const channelsByFile = new Map<string, number | undefined>();

export function estimateForRuntime(runtime: ModelRuntime, spec: JobSpec): MemoryEstimate {
  const bundle = runtime.bundle;
  // A TeaCache or MagCache job loads the step-cache graphs too (transformer_residual holds a second copy of the weights).
  const stepCache = skipsSteps(spec.params.cache);
  const components = stepCache ? [...COMPONENT_NAMES, ...STEP_CACHE_COMPONENT_NAMES] : COMPONENT_NAMES;
  // A large graph keeps its weights in an external data file beside it: count both.
  const weightBytes = components.reduce((sum, c) => {
    const entry = bundle.manifest.components[c];
    const files =
      entry === undefined ? [] : [entry.file, ...(entry.external_data !== null ? [entry.external_data] : [])];
    for (const f of files) {
      try {
        sum += statSync(bundle.file(f)).size;
      } catch {
        // absent: the bundle check reports it
      }
    }
    return sum;
  }, 0);
  const decoderFile = bundle.componentPath("vae_decoder");
  if (!channelsByFile.has(decoderFile)) channelsByFile.set(decoderFile, decoderChannels(decoderFile));
  const channels = channelsByFile.get(decoderFile);
  return estimateJobMemory({
    manifest: bundle.manifest,
    plan: sectionPlanFor(renderParamsOf(spec), bundle.manifest),
    height: spec.height,
    width: spec.width,
    weightBytes,
    attentionBlockBytes: runtime.settingsFor("vae_decoder").attentionBlockBytes ?? null,
    vaeTiling: spec.params.vaeTiling === true,
    ...(channels !== undefined ? { decoderChannels: channels } : {}),
  });
}

/**
 * Refuses (RESOURCE_EXHAUSTED) a job this node cannot hold in memory; a no-op where that is unknown.
 * `gpus`: the node's last nvidia-smi sample (CUDA nodes).
 */
export function admitJob(
  runtime: ModelRuntime,
  spec: JobSpec,
  env: NodeJS.ProcessEnv = process.env,
  gpus: readonly GpuStats[] = [],
): void {
  const available = availableMemory(runtime.settings.ep, env, gpus);
  if (available === null) return;
  const estimate = estimateForRuntime(runtime, spec);
  if (available.gpu === true) {
    // The activation model is the CPU provider's (attention scores in full); fused attention on a
    // GPU never holds them. Only the weights are certain: past the GPU's memory no job fits.
    if (estimate.weights > available.bytes)
      throw new FarmError(
        "RESOURCE_EXHAUSTED",
        `bundle ${runtime.bundle.dir} has ${gib(estimate.weights)} of weights but ${available.what} has ${gib(available.bytes)}: use a bundle with 8- or 4-bit transformer weights (python -m framefarm_export.quantize --bits 8|4) or a GPU with more memory`,
      );
    return;
  }
  admitMemory(estimate, available, { height: spec.height, width: spec.width, frames: spec.params.numFrames });
}
