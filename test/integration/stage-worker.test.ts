/**
 * A whole job run as planned stage tasks through an object store gives exactly the frames of the
 * embedded render, and retrying a task changes nothing that was committed.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { openNodeModels, type NodeModels } from "../../gpu-node/main.js";
import { loadReferenceCase } from "../../coordinator/cli/parity/reference-case.js";
import { pixelsFor, readImageFile } from "../../coordinator/cli/embedded/inputs.js";
import { renderJob } from "../../gpu-node/stages/render-job.js";
import { planJob, readyTasks } from "../../coordinator/planner/job-plan.js";
import { validateRenderParams, usesTrueCfg } from "../../shared/job/render-params.js";
import { toJobSpec } from "../../shared/job/job-spec.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import { LocalObjectStore } from "../../shared/store/local-store.js";
import { runStageTask } from "../../gpu-node/handlers/index.js";
import { assembleFrames } from "../../gpu-node/handlers/mux.js";
import type { WorkerContext } from "../../gpu-node/handlers/task-io.js";
import { referenceDir } from "../support/reference.js";
import { tinyBundleDir } from "../support/paths.js";
import { jobKeys } from "../../shared/farm/keys.js";
import type { StageTask } from "../../shared/farm/protocol.js";

let embedded: NodeModels;
let tmp: string;
before(async () => {
  embedded = await openNodeModels(tinyBundleDir(), "cpu");
  tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-worker-"));
});
after(async () => {
  await embedded.close();
  await rm(tmp, { recursive: true, force: true });
});

for (const name of ["inverted_endframe_2sec", "vanilla_cfg_window5"]) {
  test(`${name}: stage tasks through the store reproduce the embedded render bit for bit`, async () => {
    const refCase = await loadReferenceCase(path.join(referenceDir(), "cases", `${name}.json`));
    const m = embedded.runtime.bundle.manifest;
    const params = validateRenderParams(refCase.params, {
      samplingType: m.sampling_type,
      latentWindowSize: m.framepack.default_latent_window_size,
    });
    const size = "height" in params.size ? params.size : { height: 0, width: 0 };
    const first = await pixelsFor(await readImageFile(refCase.firstImage!, "image"), size);
    const last =
      refCase.lastImage === null ? null : await pixelsFor(await readImageFile(refCase.lastImage, "end image"), size);
    const expected = await renderJob(embedded, { params, firstPixels: first, lastPixels: last });

    const store = new LocalObjectStore(path.join(tmp, name));
    const ctx: WorkerContext = { ...embedded, store };
    const spec = toJobSpec(`job-${name.replace(/_/g, "-")}`, params, size);
    const keys = jobKeys(spec.jobId);
    await store.put(keys.firstImage, await readFile(refCase.firstImage!));
    if (refCase.lastImage !== null) await store.put(keys.lastImage, await readFile(refCase.lastImage));
    const tasks = planJob({
      jobId: spec.jobId,
      seed: params.seed,
      sections: sectionPlanFor(params, m),
      hasEndImage: params.hasEndImage,
      trueCfg: usesTrueCfg(params),
      latent: { channels: m.vae.latent_channels, height: size.height / 8, width: size.width / 8 },
    });
    const done = new Set<string>();
    let wave: StageTask[];
    while ((wave = readyTasks(tasks, done, new Set())).length > 0) {
      for (const t of wave) {
        await runStageTask(ctx, t, spec);
        done.add(t.id);
      }
    }
    assert.equal(done.size, tasks.length);
    const mux = tasks.find((t) => t.kind === "mux")!;
    const frames = await assembleFrames(ctx, mux, spec);
    assert.deepEqual(frames.shape, expected.shape);
    assert.ok(Buffer.from(frames.data).equals(Buffer.from(expected.data)), "frames differ from the embedded render");
    assert.ok((await store.head(keys.video))!.size > 0, "the MP4 was stored");

    // A retried denoise task (say its node died after writing) leaves committed objects as they were.
    const denoise1 = tasks.find((t) => t.id.endsWith("denoise.1"))!;
    const before = await store.get(denoise1.outputs["history"]!);
    await runStageTask(ctx, denoise1, spec);
    assert.ok(Buffer.from(await store.get(denoise1.outputs["history"]!)).equals(Buffer.from(before)));
  });
}
