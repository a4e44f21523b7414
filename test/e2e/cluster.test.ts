/**
 * The farm as users run it: `framefarm cluster` (nats-server, s3rver, coordinator, one
 * text/image/VAE node and two denoise nodes, all real processes) renders every public reference
 * case submitted over gRPC. Frames must equal embedded mode bit for bit and the reference within
 * its tolerance; the MP4 must decode.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { readFile } from "node:fs/promises";
import { readdirSync } from "node:fs";
import path from "node:path";
import { credentials } from "@grpc/grpc-js";
import {
  JobServiceClient,
  JobState,
  SamplingMode,
  type Job,
  type SubmitJobRequest,
} from "../../proto/gen/framefarm/v1/jobs.js";
import { openNodeModels, type NodeModels } from "../../gpu-node/main.js";
import { loadReferenceCase, submitRequestFor } from "../../coordinator/cli/parity/reference-case.js";
import { renderInputsFor } from "../../coordinator/cli/check-reference.js";
import { pixelsFor, readImageFile } from "../../coordinator/cli/embedded/inputs.js";
import { renderJob } from "../../gpu-node/stages/render-job.js";
import { compareTensor } from "../../coordinator/cli/parity/compare.js";
import { validateRenderParams } from "../../shared/job/render-params.js";
import { S3ObjectStore } from "../../shared/store/s3-store.js";
import { storedVideoFrames } from "../support/video.js";
import { until } from "../support/wait.js";
import { readJob } from "../../coordinator/dispatch/job-record.js";
import type { NatsBus } from "../../shared/bus/nats-bus.js";
import { connectClusterNats, natsUsersFileIn } from "../support/cluster-nats.js";
import { cliPath, repoRoot, tinyBundleDir } from "../support/paths.js";
import { referenceDir } from "../support/reference.js";
import { JOBS_BUCKET } from "../../shared/farm/protocol.js";

let cluster: ChildProcess;
let client: JobServiceClient;
let embedded: NodeModels;
let store: S3ObjectStore;
let bus: NatsBus;

before(async () => {
  cluster = spawn(
    process.execPath,
    [cliPath(), "cluster", "--http-port", "0", "--nodes", "1", "--denoise-nodes", "2"],
    {
      stdio: ["ignore", "pipe", "inherit"],
      // Task-level logs of three processes would drown the test report.
      env: { ...process.env, FRAMEFARM_LOG_LEVEL: process.env["FRAMEFARM_LOG_LEVEL"] ?? "warn" },
    },
  );
  let out = "";
  const addresses = await new Promise<{ grpc: string; nats: string; s3: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`cluster did not start: ${out}`)), 30_000);
    cluster.stdout!.on("data", (b: Buffer) => {
      out += b.toString();
      const grpc = /gRPC listening on (\S+)/.exec(out);
      const servers = /NATS on (\S+), S3 on (\S+)/.exec(out);
      if (grpc && servers) {
        clearTimeout(timer);
        resolve({ grpc: grpc[1]!, nats: servers[1]!, s3: servers[2]! });
      }
    });
    cluster.once("exit", (code) => reject(new Error(`cluster exited ${code}: ${out}`)));
  });
  client = new JobServiceClient(addresses.grpc, credentials.createInsecure());
  embedded = await openNodeModels(tinyBundleDir(), "cpu");
  const [host, port] = addresses.s3.split(":");
  store = await S3ObjectStore.open({
    endpoint: host!,
    port: Number(port),
    useSSL: false,
    accessKey: "S3RVER",
    secretKey: "S3RVER",
    bucket: "framefarm",
  });
  bus = await connectClusterNats(addresses.nats, natsUsersFileIn(out)!);
});

after(async () => {
  client?.close();
  await bus?.close();
  await embedded?.close();
  if (cluster !== undefined && cluster.exitCode === null) {
    const exited = new Promise((r) => cluster.once("exit", r));
    cluster.kill("SIGTERM");
    await exited;
  }
});

const jsonIn = (dir: string, pick: (f: string) => boolean = () => true): string[] =>
  readdirSync(dir)
    .filter((f) => f.endsWith(".json") && pick(f))
    .sort()
    .map((f) => path.join(dir, f));
const cases = [
  ...jsonIn(path.join(referenceDir(), "cases")),
  // framefarm's own cases of lllyasviel's sampler, of prompts that change over time, of
  // MagCache (its split graphs on the denoise nodes), of keyframes, of extending a video and of
  // LoRAs (fused by each denoise node from the files the coordinator stored).
  ...jsonIn(path.join(repoRoot(), "test", "fixtures", "reference-cases"), (f) =>
    /^(unipc|timed_prompts|section_prompts|magcache|keyframes|video|lora)_/.test(f),
  ),
];

test("every public reference case, and the unipc, timed-prompt, MagCache, keyframe, video and LoRA cases, render on the cluster as in embedded mode", async () => {
  const m = () => embedded.runtime.bundle.manifest;
  const submitted = await Promise.all(
    cases.map(async (file) => {
      const refCase = await loadReferenceCase(file);
      const req = await submitRequestFor(refCase);
      const res = await new Promise<Job>((resolve, reject) =>
        client.submitJob(req, (e, r) => (e ? reject(e) : resolve(r.job!))),
      );
      return { refCase, job: res };
    }),
  );

  const kv = await bus.kv(JOBS_BUCKET);
  for (const { refCase, job } of submitted) {
    let state = job.state;
    const deadline = Date.now() + 300_000;
    while (state !== JobState.JOB_STATE_SUCCEEDED && state !== JobState.JOB_STATE_FAILED && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      state = (
        await new Promise<Job>((resolve, reject) =>
          client.getJob({ id: job.id }, (e, r) => (e ? reject(e) : resolve(r.job!))),
        )
      ).state;
    }
    assert.equal(state, JobState.JOB_STATE_SUCCEEDED, `${refCase.name}`);

    const expected = await renderJob(embedded, await renderInputsFor(refCase, m()));
    const record = (await readJob(kv, job.id))!.record;
    // The farm's own output: the lossless MP4 it stored, decoded.
    const frames = await storedVideoFrames(
      store,
      record.tasks.find((t) => t.kind === "mux")!.outputs["video"]!,
      record.spec.width,
      record.spec.height,
    );
    assert.ok(
      Buffer.from(frames.data).equals(Buffer.from(expected.data)),
      `${refCase.name}: cluster frames differ from embedded mode`,
    );
    const vsReference = compareTensor("frames_uint8", frames, refCase.expected.get("frames_uint8")!);
    assert.ok(vsReference.ok, `${refCase.name}: ${vsReference.measured}`);
    await until(
      "a finished job's intermediates removed",
      async () => (await store.list(`jobs/${job.id}/sections/`)).length === 0,
      10_000,
    );
  }
});

test("a job with VAE tiling above 256 px renders on the cluster as in embedded mode, and tiled", async () => {
  // 352x272: 44 x 34 latents, each decode call cut into 2 x 2 spatial tiles; two sections, so
  // the decode task and the mux (which decodes the last section) must tile as the job says.
  const [H, W] = [272, 352];
  const image = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));
  const input = { prompt: "a lighthouse", numFrames: 17, latentWindowSize: 3, steps: 1, seed: 3n, height: H, width: W };
  const req: SubmitJobRequest = {
    image: { source: { $case: "data", value: image } },
    settings: {
      prompt: input.prompt,
      length: { $case: "numFrames", value: input.numFrames },
      mode: SamplingMode.SAMPLING_MODE_UNSPECIFIED,
      steps: input.steps,
      seed: input.seed,
      latentWindowSize: input.latentWindowSize,
      height: H,
      width: W,
      lossless: true,
      vaeTiling: true,
    },
    bundle: "",
    priority: 0,
    idempotencyKey: "",
    keyframes: [],
    loras: [],
  };
  const submitted = await new Promise<Job>((resolve, reject) =>
    client.submitJob(req, (e, r) => (e ? reject(e) : resolve(r.job!))),
  );
  assert.equal(submitted.settings!.vaeTiling, true, "GetJob shows the job's tiling");
  const kv = await bus.kv(JOBS_BUCKET);
  let record = (await readJob(kv, submitted.id))!.record;
  const deadline = Date.now() + 300_000;
  while (record.state !== "SUCCEEDED" && record.state !== "FAILED" && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    record = (await readJob(kv, submitted.id))!.record;
  }
  assert.equal(record.state, "SUCCEEDED", record.error);
  assert.ok(record.tasks.filter((t) => t.kind === "decode").length >= 1, "a section decoded by a decode task");
  assert.ok(
    Object.keys(record.tasks.find((t) => t.kind === "mux")!.inputs).some((k) => k.startsWith("latents")),
    "a section decoded by the mux",
  );
  const frames = await storedVideoFrames(
    store,
    record.tasks.find((t) => t.kind === "mux")!.outputs["video"]!,
    record.spec.width,
    record.spec.height,
  );
  const m = embedded.runtime.bundle.manifest;
  const pixels = await pixelsFor(
    await readImageFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"), "image"),
    {
      height: H,
      width: W,
    },
  );
  const render = async (vaeTiling: boolean) =>
    renderJob(embedded, {
      params: validateRenderParams(
        { ...input, seed: String(input.seed), vaeTiling },
        { samplingType: m.sampling_type, latentWindowSize: m.framepack.default_latent_window_size },
      ),
      firstPixels: pixels,
      lastPixels: null,
    });
  const same = (a: { data: Uint8Array }, b: { data: Uint8Array }) => Buffer.from(a.data).equals(Buffer.from(b.data));
  assert.ok(same(frames, await render(true)), "cluster frames equal embedded mode's for a tiled job");
  assert.ok(!same(frames, await render(false)), "and they are tiled: the untiled render differs");
});

test("8 jobs at once all finish; each job's sections run in order and decodes overlap the next denoise", async () => {
  const image = await readFile(path.join(referenceDir(), "cases", "vanilla_3sec_first.png"));
  const jobs = await Promise.all(
    Array.from({ length: 8 }, (_, i) => {
      const req: SubmitJobRequest = {
        image: { source: { $case: "data", value: image } },
        settings: {
          prompt: `job ${i}`,
          length: { $case: "numFrames", value: 60 + 30 * (i % 3) },
          mode: i % 2 === 0 ? SamplingMode.SAMPLING_MODE_VANILLA : SamplingMode.SAMPLING_MODE_INVERTED_ANTI_DRIFTING,
          steps: 3,
          seed: BigInt(i),
          height: 64,
          width: 64,
        },
        bundle: "",
        priority: 0,
        idempotencyKey: "",
        keyframes: [],
        loras: [],
      };
      return new Promise<Job>((resolve, reject) => client.submitJob(req, (e, r) => (e ? reject(e) : resolve(r.job!))));
    }),
  );
  const kv = await bus.kv(JOBS_BUCKET);
  const deadline = Date.now() + 180_000;
  for (const job of jobs) {
    let r = (await readJob(kv, job.id))!.record;
    while (r.state !== "SUCCEEDED" && r.state !== "FAILED" && Date.now() < deadline) {
      await new Promise((res) => setTimeout(res, 100));
      r = (await readJob(kv, job.id))!.record;
    }
    assert.equal(r.state, "SUCCEEDED", r.error);
  }
  let overlaps = 0;
  for (const job of jobs) {
    const log = (await readJob(kv, job.id))!.record.taskLog!.filter((e) => e.ok);
    const span = (id: string) => {
      const e = log.find((x) => x.taskId === `${job.id}.${id}`)!;
      return [Date.parse(e.startedAt), Date.parse(e.finishedAt)] as const;
    };
    const sections = log.filter((e) => e.taskId.includes(".denoise.")).length;
    assert.ok(sections >= 2);
    for (let k = 0; k + 1 < sections; k++) {
      assert.ok(
        span(`denoise.${k}`)[1] <= span(`denoise.${k + 1}`)[0],
        `${job.id}: denoise ${k + 1} started before ${k} finished`,
      );
      const [ds, de] = span(`decode.${k}`);
      const [ns, ne] = span(`denoise.${k + 1}`);
      if (ds < ne && ns < de) overlaps++;
    }
  }
  assert.ok(overlaps > 0, "some decode[k] overlapped denoise[k+1] on another node");
});

test("check-reference --server runs a case through the farm and passes", async () => {
  const { execFile } = await import("node:child_process");
  const { promisify } = await import("node:util");
  const addr = (client.getChannel().getTarget() as string).replace(/^dns:/, "");
  const { stdout } = await promisify(execFile)(process.execPath, [
    cliPath(),
    "check-reference",
    path.join(referenceDir(), "cases", "inverted_endframe_2sec.json"),
    "--server",
    addr,
  ]);
  assert.match(stdout, /frames_uint8 .* max\|d\| \d/);
  assert.match(stdout, /PASS/);
});
