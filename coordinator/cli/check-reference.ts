/**
 * `framefarm check-reference <case.json>`: runs a reference case as `render` does and through the
 * probed section loop, compares every stage with diffusers' tensors and the two runs' frames with
 * each other. Exit 0 only if all are in tolerance. With --server, a case through a farm.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { JobState, jobStateToJSON, type Job } from "../../proto/gen/framefarm/v1/jobs.js";
import { readMp4Frames } from "../../shared/video/mp4.js";
import { FarmError } from "../../shared/errors.js";
import type { Tensor } from "../../shared/tensor/tensor.js";
import { validateRenderParams, type RenderParamsInput } from "../../shared/job/render-params.js";
import type { BundleManifest } from "../../shared/bundle/manifest.js";
import { openNodeModels, type NodeModels } from "../../gpu-node/main.js";
import { startEmbeddedFarm } from "./embedded/embedded-farm.js";
import { pixelsFor, readImageFile, readVideoBytes } from "./embedded/inputs.js";
import { inspectVideo } from "../../shared/video/video-input.js";
import { renderJob, type RenderInputs } from "../../gpu-node/stages/render-job.js";
import { loadReferenceCase, submitRequestFor, type ReferenceCase } from "./parity/reference-case.js";
import { compareRun, compareTensor, formatTable, type StageResult } from "./parity/compare.js";
import { defaultBundleDir } from "./defaults.js";
import { fetchVideo } from "./submit.js";
import { CLIENT_OPTIONS, connectJobService, fromGrpc, type ClientOptions } from "./client.js";
import { jobKeys } from "../../shared/farm/keys.js";

export interface ReferenceCheck {
  name: string;
  results: StageResult[];
  passed: boolean;
}

/**
 * Runs one case embedded and compares it; used by the CLI and by the parity tests. Twice: once
 * through the section loop with a probe at every stage (compared with diffusers' tensors), and
 * once as `render` runs it (the in-process farm, lossless video), whose frames must be identical.
 */
export async function checkReferenceCase(caseFile: string, bundleDir: string, ep = "cpu"): Promise<ReferenceCheck> {
  const refCase = await loadReferenceCase(caseFile, { requireTensors: true });
  const embedded = await openNodeModels(bundleDir, ep);
  try {
    const inputs = await renderInputsFor(refCase, embedded.runtime.bundle.manifest);
    const got = new Map<string, Tensor>();
    const probed = await renderJob(embedded, inputs, { probe: (k, t) => got.set(k, t) });
    const results = compareRun(got, refCase.expected);
    results.push(
      compareTensor(
        "frames_uint8 of render = probed run",
        await renderOnEmbeddedFarm(embedded, refCase),
        probed,
        "exact",
      ),
    );
    return { name: refCase.name, results, passed: results.every((r) => r.ok) };
  } finally {
    await embedded.close();
  }
}

/** A case's parameters (validated as a farm does) and inputs at its render size. */
export async function renderInputsFor(
  refCase: ReferenceCase,
  manifest: BundleManifest,
  extra: Partial<RenderParamsInput> = {},
): Promise<RenderInputs> {
  const video = refCase.video === null ? null : await readVideoBytes(refCase.video, "video");
  const params = validateRenderParams(
    { ...refCase.params, ...extra, ...(video !== null ? { inputVideo: await inspectVideo(video) } : {}) },
    {
      samplingType: manifest.sampling_type,
      latentWindowSize: manifest.framepack.default_latent_window_size,
      temporalCompression: manifest.vae.temporal_compression_ratio,
    },
  );
  const size = "height" in params.size ? params.size : { height: 0, width: 0 };
  const first =
    refCase.firstImage === null ? null : await pixelsFor(await readImageFile(refCase.firstImage, "first_image"), size);
  const last =
    refCase.lastImage === null ? null : await pixelsFor(await readImageFile(refCase.lastImage, "last_image"), size);
  const keyframePixels = await Promise.all(
    refCase.keyframes.map(async (k, i) => pixelsFor(await readImageFile(k.image, `keyframe ${i + 1}`), size)),
  );
  return { params, firstPixels: first, lastPixels: last, keyframePixels, ...(video !== null ? { video } : {}) };
}

/** The case's frames as `render` makes them: the in-process farm, lossless MP4, decoded. */
async function renderOnEmbeddedFarm(embedded: NodeModels, refCase: ReferenceCase): Promise<Tensor<"uint8">> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-check-"));
  const farm = await startEmbeddedFarm(embedded, path.join(dir, "store"));
  try {
    const { job } = await farm.service.submit(await submitRequestFor(refCase));
    const record = await farm.waitFor(job.id);
    if (record.state !== "SUCCEEDED")
      throw new FarmError("INTERNAL", `the render ended ${record.state}: ${record.error ?? ""}`);
    const file = path.join(dir, "video.mp4");
    await writeFile(file, await farm.store.get(jobKeys(job.id).video));
    return await readMp4Frames(file, job.width, job.height);
  } finally {
    await farm.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Runs one case on a farm: submits it with a lossless video, waits, decodes the MP4 and compares
 * the frames (the only stage a farm's API exposes) with the reference.
 */
export async function checkReferenceOnFarm(
  caseFile: string,
  farm: ClientOptions & { server: string },
  timeoutMs = 30 * 60_000,
): Promise<ReferenceCheck> {
  const refCase = await loadReferenceCase(caseFile, { requireTensors: true });
  const expected = refCase.expected.get("frames_uint8");
  if (expected === undefined)
    throw new FarmError("FAILED_PRECONDITION", `${caseFile} has no frames_uint8 to compare with`);
  const client = connectJobService(farm);
  const get = (id: string): Promise<Job> =>
    new Promise((resolve, reject) => client.getJob({ id }, (e, r) => (e ? reject(fromGrpc(e)) : resolve(r.job!))));
  try {
    const req = await submitRequestFor(refCase);
    let job = await new Promise<Job>((resolve, reject) =>
      client.submitJob(req, (e, r) => (e ? reject(fromGrpc(e)) : resolve(r.job!))),
    );
    const deadline = Date.now() + timeoutMs;
    while (
      job.state !== JobState.JOB_STATE_SUCCEEDED &&
      job.state !== JobState.JOB_STATE_FAILED &&
      job.state !== JobState.JOB_STATE_CANCELLED
    ) {
      if (Date.now() > deadline)
        throw new FarmError("DEADLINE_EXCEEDED", `job ${job.id} did not finish within ${timeoutMs / 1000} s`);
      await new Promise((r) => setTimeout(r, 200));
      job = await get(job.id);
    }
    if (job.state !== JobState.JOB_STATE_SUCCEEDED)
      throw new FarmError("INTERNAL", `job ${job.id} ended ${jobStateToJSON(job.state)}: ${job.error}`);
    const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-check-"));
    try {
      const file = path.join(dir, "video.mp4");
      await writeFile(file, await fetchVideo(job.videoUrl));
      const frames = await readMp4Frames(file, job.width, job.height);
      const results = [compareTensor("frames_uint8", frames, expected)];
      return {
        name: `${refCase.name} (farm ${farm.server}, job ${job.id})`,
        results,
        passed: results.every((r) => r.ok),
      };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  } finally {
    client.close();
  }
}

export async function checkReferenceCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    strict: true,
    allowPositionals: true,
    options: {
      bundle: { type: "string" },
      ep: { type: "string" },
      ...CLIENT_OPTIONS,
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help === true) {
    process.stdout.write(
      "framefarm check-reference <case.json> [--bundle DIR] [--ep cpu|webgpu|cuda] | [--server HOST:PORT [--token T] [--tls | --ca FILE]]\n",
    );
    return 0;
  }
  if (positionals.length !== 1)
    throw new FarmError("INVALID_ARGUMENT", "give exactly one case file: framefarm check-reference <case.json>");
  const check =
    values.server !== undefined
      ? await checkReferenceOnFarm(positionals[0]!, { ...values, server: values.server })
      : await checkReferenceCase(positionals[0]!, values.bundle ?? defaultBundleDir(), values.ep ?? "cpu");
  process.stdout.write(`${check.name}\n${formatTable(check.results)}\n`);
  const failed = check.results.filter((r) => !r.ok).length;
  process.stdout.write(
    check.passed
      ? `PASS: ${check.results.length} stages within tolerance\n`
      : `FAIL: ${failed} of ${check.results.length} stages out of tolerance\n`,
  );
  return check.passed ? 0 : 1;
}
