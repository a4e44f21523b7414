/**
 * Peak resident memory of an embedded render (`framefarm render`, CPU provider, tiny bundle)
 * against resolution and video length, beside the admission check's estimate
 * (gpu-node/runtime/memory-admission.ts). Peak RSS must be flat in length: a section costs the
 * same memory whatever the video's length.
 *
 *   npm run bench:memory [-- --grid 256:1,2,4;384:1,2,4;640:1,2 --steps 1 --cap-gb 10]
 *
 * Each render is its own process, watched: one growing past --cap-gb is SIGKILLed and reported,
 * so the bench cannot take the machine down. Results: test/bench/memory/RESULTS.md.
 */
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { openNodeModels } from "../../../gpu-node/main.js";
import { estimateForRuntime } from "../../../gpu-node/runtime/memory-admission.js";
import { validateRenderParams } from "../../../shared/job/render-params.js";
import { toJobSpec } from "../../../shared/job/job-spec.js";
import { findNearestBucket } from "../../../shared/framepack/buckets.js";
import { cliPath, repoRoot, tinyBundleDir } from "../../support/paths.js";

const { values } = parseArgs({
  options: { grid: { type: "string" }, steps: { type: "string" }, "cap-gb": { type: "string" } },
});
const GRID = (values.grid ?? "256:1,2,4;384:1,2,4;640:1,2").split(";").map((cell) => {
  const [res, secs] = cell.split(":");
  return { resolution: Number(res), seconds: secs!.split(",").map(Number) };
});
const STEPS = Number(values.steps ?? 1);
const CAP = Number(values["cap-gb"] ?? 10) * 2 ** 30;
const IMAGE = path.join(repoRoot(), "test", "fixtures", "images", "demo.png");
const GIB = 2 ** 30;

interface Row {
  resolution: number;
  size: string;
  seconds: number;
  sections: number;
  peakGiB: number | null;
  estimateGiB: number;
  wallS: number;
  outcome: string;
}

function vmRss(pid: number): Promise<number> {
  return readFile(`/proc/${pid}/status`, "utf8").then(
    (s) => Number(/VmRSS:\s+(\d+) kB/.exec(s)?.[1] ?? 0) * 1024,
    () => 0,
  );
}

async function render(
  resolution: number,
  seconds: number,
  dir: string,
): Promise<{ peak: number | null; wallS: number; outcome: string }> {
  const peakFile = path.join(dir, `peak-${resolution}-${seconds}`);
  const preload = path.join(repoRoot(), "dist", "test", "bench", "memory", "peak-rss.js");
  const args = [
    "--import",
    preload,
    cliPath(),
    "render",
    "--image",
    IMAGE,
    "--prompt",
    "memory bench",
    "--seconds",
    String(seconds),
    "--resolution",
    String(resolution),
    "--steps",
    String(STEPS),
    "-o",
    path.join(dir, `out-${resolution}-${seconds}.mp4`),
  ];
  const started = Date.now();
  const child = spawn(process.execPath, args, {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, FRAMEFARM_PEAK_RSS_FILE: peakFile },
  });
  let err = "";
  child.stderr!.on("data", (b: Buffer) => (err = (err + b.toString()).slice(-2000)));
  let killed = false;
  const watch = setInterval(() => {
    void vmRss(child.pid!).then((rss) => {
      if (rss > CAP && !killed) {
        killed = true;
        child.kill("SIGKILL");
      }
    });
  }, 250);
  const code = await new Promise<number | null>((r) => child.once("exit", (c) => r(c)));
  clearInterval(watch);
  const wallS = (Date.now() - started) / 1000;
  if (killed) return { peak: null, wallS, outcome: `killed above the ${CAP / GIB} GiB cap` };
  const peak = await readFile(peakFile, "utf8").then(
    (s) => Number(s) * 1024,
    () => null,
  );
  const last = err.trim().split("\n").pop() ?? "";
  return { peak, wallS, outcome: code === 0 ? "ok" : `exit ${code}: ${last.replace(/\|/g, "/").slice(0, 160)}` };
}

async function main(): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-bench-memory-"));
  const embedded = await openNodeModels(tinyBundleDir(), "cpu");
  const m = embedded.runtime.bundle.manifest;
  const rows: Row[] = [];
  try {
    for (const { resolution, seconds } of GRID) {
      for (const s of seconds) {
        // The render's own size: the bucket nearest the demo image (320x240) for this resolution.
        const size = findNearestBucket(240, 320, resolution);
        const params = validateRenderParams(
          { prompt: "memory bench", seconds: s, steps: STEPS, height: size.height, width: size.width },
          { samplingType: m.sampling_type, latentWindowSize: m.framepack.default_latent_window_size },
        );
        const estimate = estimateForRuntime(embedded.runtime, toJobSpec("bench", params, size));
        const sections = Math.max(1, Math.ceil(params.numFrames / ((params.latentWindowSize - 1) * 4 + 1)));
        const r = await render(resolution, s, dir);
        const row: Row = {
          resolution,
          size: `${size.width}x${size.height}`,
          seconds: s,
          sections,
          peakGiB: r.peak === null ? null : r.peak / GIB,
          estimateGiB: estimate.peak / GIB,
          wallS: r.wallS,
          outcome: r.outcome,
        };
        rows.push(row);
        process.stderr.write(`${JSON.stringify(row)}\n`);
      }
    }
  } finally {
    await embedded.close();
    await rm(dir, { recursive: true, force: true });
  }
  const cpu = os.cpus();
  process.stdout.write(
    `Machine: ${cpu[0]?.model ?? "unknown cpu"}, ${cpu.length} cores, ${(os.totalmem() / GIB).toFixed(1)} GiB RAM, ${os.type()} ${os.release()}, Node ${process.version}\n`,
  );
  process.stdout.write(
    `Embedded render, CPU provider, tiny bundle, ${STEPS} step(s) per section, peak RSS from getrusage\n\n`,
  );
  process.stdout.write(
    "| resolution | size | seconds | sections | peak RSS GiB | estimate GiB | wall s | outcome |\n|---|---|---|---|---|---|---|---|\n",
  );
  for (const r of rows)
    process.stdout.write(
      `| ${r.resolution} | ${r.size} | ${r.seconds} | ${r.sections} | ${r.peakGiB === null ? "-" : r.peakGiB.toFixed(2)} | ${r.estimateGiB.toFixed(2)} | ${r.wallS.toFixed(0)} | ${r.outcome} |\n`,
    );
}

await main();
