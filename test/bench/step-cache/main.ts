/**
 * Step-cache benchmark: the same job rendered without a cache, with TeaCache (--cache teacache)
 * and with MagCache (--cache magcache), on one bundle and execution provider, printing per section how many transformer
 * calls ran the blocks and the section's denoise wall time, and how far the cached render's
 * latents and frames are from the uncached one's. Results: test/bench/step-cache/RESULTS.md.
 *
 *   node dist/test/bench/step-cache/main.js [--bundle DIR] [--ep cpu] [--steps 25] [--seconds 2]
 *     [--height 64] [--width 64] [--threshold 0.15] [--sampler unipc] [--mode vanilla] [--reps 3]
 *     [--magcache-threshold 0.1] [--magcache-k 2] [--magcache-retention 0.25]
 *
 * Each configuration renders --reps times after one untimed warm-up; a section's time is the
 * median over the reps of the wall time from its noise to its denoised latents (the decode is
 * the same either way and is left out). A second table gives each transformer graph's calls in
 * the timed renders: the median wall time of a call as the sampler waits for it, and of
 * session.run alone (the rest is moving the tensors to and from the session), and all its calls'
 * wall time per render.
 */
import os from "node:os";
import { parseArgs } from "node:util";
import { openNodeModels } from "../../../gpu-node/main.js";
import { renderJob } from "../../../gpu-node/stages/render-job.js";
import { pixelsFor, readImageFile } from "../../../coordinator/cli/embedded/inputs.js";
import { defaultBundleDir } from "../../../coordinator/cli/defaults.js";
import { validateRenderParams, type RenderParamsInput } from "../../../shared/job/render-params.js";
import { relL2 } from "../../../shared/tensor/ops.js";
import type { F32, Tensor } from "../../../shared/tensor/tensor.js";
import type { OnnxModel } from "../../../gpu-node/runtime/onnx-model.js";
import { repoRoot } from "../../support/paths.js";
import path from "node:path";

const { values } = parseArgs({
  options: {
    bundle: { type: "string" },
    ep: { type: "string" },
    steps: { type: "string" },
    seconds: { type: "string" },
    height: { type: "string" },
    width: { type: "string" },
    threshold: { type: "string" },
    "magcache-threshold": { type: "string" },
    "magcache-k": { type: "string" },
    "magcache-retention": { type: "string" },
    sampler: { type: "string" },
    mode: { type: "string" },
    reps: { type: "string" },
    image: { type: "string" },
  },
});
const ep = values.ep ?? "cpu";
const reps = Number(values.reps ?? 3);
const imagePath = values.image ?? path.join(repoRoot(), "test", "fixtures", "images", "demo.png");

interface Run {
  computed: number[][];
  sectionMs: number[];
  latents: F32[];
  frames: Tensor<"uint8">;
}

const models = await openNodeModels(values.bundle ?? defaultBundleDir(), ep);
/** Per transformer graph, each timed call's wall and session.run milliseconds (while `timing` is set). */
let timing: Map<string, { wall: number[]; run: number[] }> | undefined;
const load = models.runtime.model.bind(models.runtime);
models.runtime.model = async (name) => {
  const m = await load(name);
  if (!name.startsWith("transformer")) return m;
  return Object.assign(Object.create(m) as OnnxModel, {
    runTimed: async (...args: Parameters<OnnxModel["runTimed"]>) => {
      const started = performance.now();
      const result = await m.runTimed(...args);
      if (timing !== undefined) {
        const t = timing.get(name) ?? { wall: [], run: [] };
        t.wall.push(performance.now() - started);
        t.run.push(result.runMs);
        timing.set(name, t);
      }
      return result;
    },
  });
};
try {
  const manifest = models.runtime.bundle.manifest;
  const base: RenderParamsInput = {
    prompt: "A lighthouse on a cliff, waves crashing, seagulls circling",
    seconds: Number(values.seconds ?? 2),
    steps: Number(values.steps ?? 25),
    height: Number(values.height ?? 64),
    width: Number(values.width ?? 64),
    sampler: values.sampler ?? "unipc",
    samplingType: values.mode ?? "vanilla",
    seed: "31337",
  };
  const render = async (cache: RenderParamsInput): Promise<Run> => {
    const params = validateRenderParams(
      { ...base, ...cache },
      {
        samplingType: manifest.sampling_type,
        latentWindowSize: manifest.framepack.default_latent_window_size,
      },
    );
    const image = await readImageFile(imagePath, "image");
    const first = await pixelsFor(image, { height: Number(base.height), width: Number(base.width) });
    const run: Run = { computed: [], sectionMs: [], latents: [], frames: undefined as unknown as Tensor<"uint8"> };
    const started: number[] = [];
    run.frames = await renderJob(
      models,
      { params, firstPixels: first, lastPixels: null },
      {
        probe: (name, t) => {
          const m = /^section(\d+)\.(noise|latents|teacache_computed|magcache_computed)$/.exec(name);
          if (m === null) return;
          const k = Number(m[1]);
          if (m[2] === "noise") started[k] = performance.now();
          else if (m[2] === "latents") {
            run.sectionMs[k] = performance.now() - started[k]!;
            run.latents[k] = t as F32;
          } else run.computed[k] = Array.from(t.data as Float32Array);
        },
      },
    );
    return run;
  };
  // FramePack-Studio's MagCache defaults unless given.
  const mag = {
    threshold: Number(values["magcache-threshold"] ?? 0.1),
    k: Number(values["magcache-k"] ?? 2),
    retention: Number(values["magcache-retention"] ?? 0.25),
  };
  const configs: [string, RenderParamsInput][] = [
    ["none", { cache: "none" }],
    [`teacache ${values.threshold ?? 0.15}`, { cache: "teacache", cacheThreshold: Number(values.threshold ?? 0.15) }],
    [
      `magcache ${mag.threshold}/K${mag.k}/R${mag.retention}`,
      { cache: "magcache", cacheThreshold: mag.threshold, magcacheK: mag.k, magcacheRetention: mag.retention },
    ],
  ];
  const results = new Map<string, Run[]>();
  const graphTimes = new Map<string, Map<string, { wall: number[]; run: number[] }>>();
  // Each render is a whole job (a 640 bucket on a GPU takes tens of seconds): say where it is.
  const timedRender = async (label: string, what: string, cache: RenderParamsInput): Promise<Run> => {
    const started = performance.now();
    const run = await render(cache);
    console.error(`step-cache: ${label}, ${what}: ${((performance.now() - started) / 1000).toFixed(1)} s`);
    return run;
  };
  for (const [label, cache] of configs) {
    await timedRender(label, "warm-up", cache); // sessions loaded, arenas grown
    const runs: Run[] = [];
    timing = new Map();
    for (let r = 0; r < reps; r++) runs.push(await timedRender(label, `run ${r + 1} of ${reps}`, cache));
    graphTimes.set(label, timing);
    timing = undefined;
    results.set(label, runs);
  }
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const cpu = os.cpus();
  console.log(
    `machine: ${cpu[0]?.model ?? "unknown CPU"} x${cpu.length}, ${os.platform()} ${os.arch()}, node ${process.version}; ep ${ep}`,
  );
  console.log(
    `job: ${base.seconds} s, ${base.height}x${base.width}, ${base.steps} steps, sampler ${base.sampler}, mode ${base.samplingType}, bundle ${values.bundle ?? "tiny"}; median of ${reps} renders after a warm-up`,
  );
  const plain = results.get("none")![0]!;
  console.log("| cache | section | blocks ran (calls) | denoise ms (median) | speed-up | latents relL2 vs none |");
  console.log("|---|---|---|---|---|---|");
  for (const [label] of configs) {
    const runs = results.get(label)!;
    const first = runs[0]!;
    let total = 0;
    let plainTotal = 0;
    for (let k = 0; k < first.sectionMs.length; k++) {
      const ms = median(runs.map((r) => r.sectionMs[k]!));
      const plainMs = median(results.get("none")!.map((r) => r.sectionMs[k]!));
      total += ms;
      plainTotal += plainMs;
      const calls = first.computed[k];
      const ran =
        calls === undefined ? `${base.steps}/${base.steps}` : `${calls.filter((c) => c === 1).length}/${calls.length}`;
      console.log(
        `| ${label} | ${k} | ${ran} | ${ms.toFixed(1)} | ${(plainMs / ms).toFixed(2)}x | ${relL2(first.latents[k]!, plain.latents[k]!).toExponential(2)} |`,
      );
    }
    console.log(`| ${label} | all | | ${total.toFixed(1)} | ${(plainTotal / total).toFixed(2)}x | |`);
  }
  console.log("| cache | graph | calls | ms a call (median) | session.run ms (median) | ms a render (all calls) |");
  console.log("|---|---|---|---|---|---|");
  for (const [label] of configs)
    for (const [graph, t] of graphTimes.get(label)!)
      console.log(
        `| ${label} | ${graph} | ${t.wall.length} | ${median(t.wall).toFixed(1)} | ${median(t.run).toFixed(1)} | ${(t.wall.reduce((a, b) => a + b, 0) / reps).toFixed(0)} |`,
      );
  const b = plain.frames.data;
  for (const [label] of configs.slice(1)) {
    const a = results.get(label)![0]!.frames.data;
    let maxd = 0;
    let sum = 0;
    for (let i = 0; i < a.length; i++) {
      const d = Math.abs(a[i]! - b[i]!);
      maxd = Math.max(maxd, d);
      sum += d;
    }
    console.log(`frames, ${label} vs none: max|d| ${maxd}, mean|d| ${(sum / a.length).toFixed(3)} (uint8)`);
  }
} finally {
  await models.close();
}
