/**
 * `framefarm check-reference <case.json>`: runs a reference case through the same code path as
 * `render` and compares every stage with diffusers' tensors. Exit 0 only if all are in tolerance.
 */
import { parseArgs } from "node:util";
import { FarmError } from "../../shared/errors.js";
import type { Tensor } from "../../shared/tensor/tensor.js";
import { validateRenderParams } from "../../shared/job/render-params.js";
import { openEmbedded } from "../embedded/open.js";
import { pixelsFor, readImageFile } from "../embedded/inputs.js";
import { renderJob } from "../embedded/render-job.js";
import { loadReferenceCase } from "../parity/reference-case.js";
import { compareRun, formatTable, type StageResult } from "../parity/compare.js";
import { defaultBundleDir } from "./defaults.js";

export interface ReferenceCheck {
  name: string;
  results: StageResult[];
  passed: boolean;
}

/** Runs one case embedded and compares it; used by the CLI and by the parity tests. */
export async function checkReferenceCase(caseFile: string, bundleDir: string, ep = "cpu"): Promise<ReferenceCheck> {
  const refCase = await loadReferenceCase(caseFile, { requireTensors: true });
  const embedded = await openEmbedded(bundleDir, ep);
  try {
    const manifest = embedded.runtime.bundle.manifest;
    const params = validateRenderParams(refCase.params, {
      samplingType: manifest.sampling_type,
      latentWindowSize: manifest.framepack.default_latent_window_size,
    });
    const size = "height" in params.size ? params.size : { height: 0, width: 0 };
    const first = await pixelsFor(await readImageFile(refCase.firstImage, "first_image"), size);
    const last = refCase.lastImage === null ? null : await pixelsFor(await readImageFile(refCase.lastImage, "last_image"), size);
    const got = new Map<string, Tensor>();
    await renderJob(embedded, { params, firstPixels: first, lastPixels: last }, { probe: (k, t) => got.set(k, t) });
    const results = compareRun(got, refCase.expected);
    return { name: refCase.name, results, passed: results.every((r) => r.ok) };
  } finally {
    await embedded.close();
  }
}

export async function checkReferenceCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    strict: true,
    allowPositionals: true,
    options: { bundle: { type: "string" }, ep: { type: "string" }, help: { type: "boolean", short: "h" } },
  });
  if (values.help === true) {
    process.stdout.write("framefarm check-reference <case.json> [--bundle DIR] [--ep cpu|webgpu|cuda]\n");
    return 0;
  }
  if (positionals.length !== 1) throw new FarmError("INVALID_ARGUMENT", "give exactly one case file: framefarm check-reference <case.json>");
  const check = await checkReferenceCase(positionals[0]!, values.bundle ?? defaultBundleDir(), values.ep ?? "cpu");
  process.stdout.write(`${check.name}\n${formatTable(check.results)}\n`);
  const failed = check.results.filter((r) => !r.ok).length;
  process.stdout.write(check.passed ? `PASS: ${check.results.length} stages within tolerance\n` : `FAIL: ${failed} of ${check.results.length} stages out of tolerance\n`);
  return check.passed ? 0 : 1;
}
