/**
 * Jobs advanced by the dispatcher over a bus, stages run by separate node loops through an object
 * store: the in-process bus + local store (embedded wiring), and real nats-server + s3rver. The
 * frames must equal the embedded render bit for bit.
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
import { planJob } from "../../coordinator/planner/job-plan.js";
import { Dispatcher } from "../../coordinator/dispatch/dispatcher.js";
import { validateRenderParams, usesTrueCfg } from "../../shared/job/render-params.js";
import { toJobSpec } from "../../shared/job/job-spec.js";
import { sectionPlanFor } from "../../shared/job/section-plan.js";
import type { Bus } from "../../shared/bus/bus.js";
import { MemoryBus } from "../../shared/bus/memory-bus.js";
import { NatsBus } from "../../shared/bus/nats-bus.js";
import type { ObjectStore } from "../../shared/store/object-store.js";
import { LocalObjectStore } from "../../shared/store/local-store.js";
import { S3ObjectStore } from "../../shared/store/s3-store.js";
import {
  startNatsServer,
  startS3Server,
  S3_ACCESS_KEY,
  S3_SECRET_KEY,
  type LocalServer,
} from "../../coordinator/cli/local-servers.js";
import { storedVideoFrames } from "../support/video.js";
import { until } from "../support/wait.js";
import { NodeLoop } from "../../gpu-node/worker/node-loop.js";
import { referenceDir } from "../support/reference.js";
import { tinyBundleDir } from "../support/paths.js";
import { jobKeys } from "../../shared/farm/keys.js";

let embedded: NodeModels;
let tmp: string;
const servers: LocalServer[] = [];
before(async () => {
  embedded = await openNodeModels(tinyBundleDir(), "cpu");
  tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-dispatch-"));
});
after(async () => {
  await embedded.close();
  await Promise.all(servers.map((s) => s.stop()));
  await rm(tmp, { recursive: true, force: true });
});

async function runCases(bus: Bus, store: ObjectStore, names: string[], decodeConcurrency = 1): Promise<void> {
  const ctx = { ...embedded, store };
  const dispatcher = await Dispatcher.start(bus, store);
  // Two nodes as in a small farm: one for encoders and VAE, one for denoise; mux on the first.
  const nodeA = await NodeLoop.start(bus, ctx, {
    nodeId: "node-a",
    stages: ["encode_text", "encode_image", "vae_encode", "decode", "mux"],
    decodeConcurrency,
  });
  const nodeB = await NodeLoop.start(bus, ctx, { nodeId: "node-b", stages: ["denoise"] });
  try {
    const m = embedded.runtime.bundle.manifest;
    const jobs = await Promise.all(
      names.map(async (name, i) => {
        const refCase = await loadReferenceCase(path.join(referenceDir(), "cases", `${name}.json`));
        // Lossless, so the stored MP4 can be compared frame for frame.
        const params = validateRenderParams(
          { ...refCase.params, lossless: true },
          { samplingType: m.sampling_type, latentWindowSize: m.framepack.default_latent_window_size },
        );
        const size = "height" in params.size ? params.size : { height: 0, width: 0 };
        const first = await pixelsFor(await readImageFile(refCase.firstImage!, "image"), size);
        const last =
          refCase.lastImage === null
            ? null
            : await pixelsFor(await readImageFile(refCase.lastImage, "end image"), size);
        const expected = await renderJob(embedded, { params, firstPixels: first, lastPixels: last });
        const spec = toJobSpec(`job${i}-${Date.now()}`, params, size);
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
        await dispatcher.submit(spec, tasks);
        return { spec, tasks, expected };
      }),
    );
    for (const { spec, tasks, expected } of jobs) {
      const deadline = Date.now() + 60_000;
      let state = "QUEUED";
      while (state !== "SUCCEEDED" && state !== "FAILED" && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
        state = (await dispatcher.job(spec.jobId))!.state;
      }
      assert.equal(state, "SUCCEEDED", (await dispatcher.job(spec.jobId))?.error);
      const frames = await storedVideoFrames(store, jobKeys(spec.jobId).video, spec.width, spec.height);
      assert.ok(
        Buffer.from(frames.data).equals(Buffer.from(expected.data)),
        `${spec.jobId}: frames differ from the embedded render`,
      );
      // Removed just after the job is marked done (never before: a crash in between would re-run mux without them).
      await until(
        "a finished job's intermediates removed",
        async () => (await store.list(`jobs/${spec.jobId}/sections/`)).length === 0,
        10_000,
      );
      assert.ok((await store.list(`jobs/${spec.jobId}/previews/`)).length > 0, "previews stay");
    }
  } finally {
    await nodeA.stop();
    await nodeB.stop();
    await dispatcher.stop();
  }
}

test("in-process bus and local store: jobs succeed with the embedded frames", async () => {
  await runCases(new MemoryBus(), new LocalObjectStore(path.join(tmp, "local")), [
    "inverted_endframe_2sec",
    "vanilla_cfg_window5",
  ]);
});

test("NATS JetStream and S3 (real servers), two decodes at once: jobs succeed with the embedded frames", async () => {
  const nats = await startNatsServer(path.join(tmp, "nats"));
  const s3 = await startS3Server(path.join(tmp, "s3"));
  servers.push(nats, s3);
  const bus = await NatsBus.connect(`nats://${nats.host}:${nats.port}`);
  const store = await S3ObjectStore.open({
    endpoint: s3.host,
    port: s3.port,
    useSSL: false,
    accessKey: S3_ACCESS_KEY,
    secretKey: S3_SECRET_KEY,
    bucket: "framefarm",
  });
  try {
    await runCases(bus, store, ["inverted_3sec", "vanilla_cfg_window5"], 2);
  } finally {
    await bus.close();
  }
});
