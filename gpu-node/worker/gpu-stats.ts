/**
 * A CUDA node's GPU utilisation and memory, read from nvidia-smi for the registry heartbeat (the
 * dashboard plots them). Only on the CUDA provider and only where nvidia-smi is installed: CPU and
 * WebGPU nodes report no GPU at all rather than an estimate. nvidia-smi runs on its own timer with a
 * timeout (a wedged driver can hang it), never inside a heartbeat; a failed or hung run clears the
 * numbers instead of repeating old ones.
 */
import { execFile } from "node:child_process";
import { access, constants } from "node:fs/promises";
import path from "node:path";
import type { GpuStats } from "../../proto/gen/framefarm/v1/node.js";
import { timestampOf } from "../../shared/nodes/node-registry.js";

export const NVIDIA_SMI_FIELDS = ["index", "name", "utilization.gpu", "memory.used", "memory.total"] as const;
const QUERY = [`--query-gpu=${NVIDIA_SMI_FIELDS.join(",")}`, "--format=csv,noheader,nounits"];
const DEFAULT_TIMEOUT_MS = 5000;

/** A whole non-negative number of nvidia-smi's, or undefined for its "[N/A]", "[Not Supported]" and the like. */
function count(field: string | undefined): number | undefined {
  const t = field?.trim() ?? "";
  return /^\d+(\.\d+)?$/.test(t) ? Math.round(Number(t)) : undefined;
}

/**
 * nvidia-smi's `--query-gpu=index,name,utilization.gpu,memory.used,memory.total
 * --format=csv,noheader,nounits` output -> one entry per GPU line. A line without an index or memory
 * figures is skipped (no number is made up); a utilisation the GPU does not report (MIG) is left out.
 */
export function parseNvidiaSmi(output: string, sampledAtMs: number): GpuStats[] {
  const out: GpuStats[] = [];
  for (const line of output.split(/\r?\n/)) {
    const fields = line.split(",");
    if (fields.length < NVIDIA_SMI_FIELDS.length) continue;
    // The name sits between the index and the three numbers: a comma in it stays in it.
    const [index, used, total] = [count(fields[0]), count(fields.at(-2)), count(fields.at(-1))];
    if (index === undefined || used === undefined || total === undefined) continue;
    const utilization = count(fields.at(-3));
    out.push({
      index,
      name: fields.slice(1, -3).join(",").trim(),
      ...(utilization !== undefined ? { utilizationPercent: Math.min(100, utilization) } : {}),
      memoryUsedMib: used,
      memoryTotalMib: total,
      sampledAt: timestampOf(sampledAtMs),
    });
  }
  return out;
}

/**
 * The GPU this process runs on as nvidia-smi names it: onnxruntime's CUDA provider takes device 0,
 * the first of CUDA_VISIBLE_DEVICES (an index or a GPU UUID) or index 0. MIG instances and other
 * forms nvidia-smi's --id does not take: none (every GPU nvidia-smi sees is reported).
 */
export function gpuOfProcess(env: NodeJS.ProcessEnv): string | undefined {
  const visible = env["CUDA_VISIBLE_DEVICES"]?.split(",")[0]?.trim();
  if (visible === undefined || visible === "") return "0";
  return /^(\d+|GPU-[0-9a-fA-F-]+)$/.test(visible) ? visible : undefined;
}

/** The first executable `name` on PATH, or undefined. */
export async function findOnPath(name: string, env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  for (const dir of (env["PATH"] ?? "").split(path.delimiter)) {
    if (dir === "") continue;
    const file = path.join(dir, name);
    try {
      await access(file, constants.X_OK);
      return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Runs nvidia-smi once; rejects on a non-zero exit, a timeout (the process is killed) or unusable output. */
export function readNvidiaSmi(
  binary: string,
  gpu: string | undefined,
  timeoutMs = DEFAULT_TIMEOUT_MS,
): Promise<GpuStats[]> {
  const args = [...QUERY, ...(gpu !== undefined ? [`--id=${gpu}`] : [])];
  return new Promise((resolve, reject) =>
    execFile(binary, args, { timeout: timeoutMs, killSignal: "SIGKILL", maxBuffer: 1 << 16 }, (err, stdout) => {
      if (err !== null) return reject(err);
      const gpus = parseNvidiaSmi(stdout, Date.now());
      if (gpus.length === 0) return reject(new Error(`nvidia-smi printed no GPU line: ${stdout.slice(0, 200)}`));
      resolve(gpus);
    }),
  );
}

export interface GpuSamplerOptions {
  binary: string;
  intervalMs: number;
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  /** A run failed (after a success, or the first run): called once per change from working to failing. */
  onError?: (err: unknown) => void;
}

/** Samples nvidia-smi every intervalMs (never two runs at once) and keeps the latest answer. */
export class GpuSampler {
  private gpus: GpuStats[] = [];
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private failing = false;
  private readonly gpu: string | undefined;

  private constructor(private readonly o: GpuSamplerOptions) {
    this.gpu = gpuOfProcess(o.env ?? process.env);
  }

  /** Starts sampling; the first sample is taken before this returns. */
  static async start(o: GpuSamplerOptions): Promise<GpuSampler> {
    const s = new GpuSampler(o);
    await s.sample();
    s.timer = setInterval(() => void s.sample(), o.intervalMs);
    s.timer.unref();
    return s;
  }

  /** The latest sample; empty while nvidia-smi fails. */
  latest(): GpuStats[] {
    return this.gpus;
  }

  sample(): Promise<void> {
    this.running ??= readNvidiaSmi(this.o.binary, this.gpu, this.o.timeoutMs)
      .then(
        (gpus) => {
          this.gpus = gpus;
          this.failing = false;
        },
        (err: unknown) => {
          this.gpus = [];
          if (!this.failing) this.o.onError?.(err);
          this.failing = true;
        },
      )
      .finally(() => (this.running = undefined));
    return this.running;
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }
}

/**
 * A sampler for a node on this execution provider: only "cuda" with nvidia-smi on PATH (or
 * FRAMEFARM_NVIDIA_SMI) gets one; any other node reports no GPU.
 */
export async function gpuSamplerFor(ep: string, o: Omit<GpuSamplerOptions, "binary">): Promise<GpuSampler | undefined> {
  if (ep !== "cuda") return undefined;
  const env = o.env ?? process.env;
  const binary = env["FRAMEFARM_NVIDIA_SMI"] ?? (await findOnPath("nvidia-smi", env));
  return binary === undefined ? undefined : GpuSampler.start({ ...o, binary });
}
