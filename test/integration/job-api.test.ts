/**
 * The public gRPC API end to end in one process: a real @grpc/grpc-js server and client, the
 * dispatcher, two node loops, in-process bus and local store. Submit, watch to completion, fetch,
 * deduplicate, cancel, and bad input answered with the right status codes.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { credentials, Metadata, status, type ServiceError } from "@grpc/grpc-js";
import {
  JobServiceClient,
  JobState,
  type SubmitJobRequest,
  type SubmitJobResponse,
  type WatchJobResponse,
} from "../../proto/gen/framefarm/v1/jobs.js";
import { openNodeModels, type NodeModels } from "../../gpu-node/main.js";
import { Dispatcher } from "../../coordinator/dispatch/dispatcher.js";
import { JobService } from "../../coordinator/api/job-service.js";
import { startApiServer, type ApiServer } from "../../coordinator/api/server.js";
import { MemoryBus } from "../../shared/bus/memory-bus.js";
import { LocalObjectStore } from "../../shared/store/local-store.js";
import { NodeLoop } from "../../gpu-node/worker/node-loop.js";
import { repoRoot, tinyBundleDir } from "../support/paths.js";

let embedded: NodeModels;
let tmp: string;
let server: ApiServer;
let client: JobServiceClient;
let dispatcher: Dispatcher;
let bus: MemoryBus;
let nodes: NodeLoop[];
let store: LocalObjectStore;
const image = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));

before(async () => {
  embedded = await openNodeModels(tinyBundleDir(), "cpu");
  tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-api-"));
  bus = new MemoryBus();
  store = new LocalObjectStore(tmp);
  dispatcher = await Dispatcher.start(bus, store);
  const ctx = { ...embedded, store };
  nodes = [
    await NodeLoop.start(bus, ctx, {
      nodeId: "a",
      stages: ["encode_text", "encode_image", "vae_encode", "decode", "mux"],
    }),
    await NodeLoop.start(bus, ctx, { nodeId: "b", stages: ["denoise"] }),
  ];
  const service = new JobService({
    bus,
    store,
    dispatcher,
    manifest: embedded.runtime.bundle.manifest,
    bundleName: "tiny",
  });
  server = await startApiServer(service, "127.0.0.1", 0);
  client = new JobServiceClient(`127.0.0.1:${server.port}`, credentials.createInsecure());
});

after(async () => {
  client.close();
  await server.stop();
  for (const n of nodes) await n.stop();
  await dispatcher.stop();
  await embedded.close();
  await rm(tmp, { recursive: true, force: true });
});

const submit = (req: Partial<SubmitJobRequest>): Promise<SubmitJobResponse> =>
  new Promise((resolve, reject) =>
    client.submitJob(
      { bundle: "", priority: 0, idempotencyKey: "", keyframes: [], loras: [], ...req } as SubmitJobRequest,
      (err, res) => (err ? reject(err) : resolve(res)),
    ),
  );

const settings = (over: object = {}) => ({
  prompt: "a lighthouse",
  length: { $case: "numFrames" as const, value: 20 },
  mode: 0,
  steps: 2,
  resolution: 64,
  ...over,
});

function rejectsWith(p: Promise<unknown>, code: status, pattern: RegExp): Promise<void> {
  return assert.rejects(
    p,
    (e: unknown) => (e as ServiceError).code === code && pattern.test((e as ServiceError).details),
  );
}

test("submit, watch to completion, fetch the video through its URL", async () => {
  // Two sections (a window spans 33 frames), so that one section has a preview of its own.
  const { job } = await submit({
    image: { source: { $case: "data", value: image } },
    settings: settings({ length: { $case: "numFrames", value: 40 } }),
  });
  assert.ok(job !== undefined && job.id.length > 0);
  const events: WatchJobResponse[] = [];
  await new Promise<void>((resolve, reject) => {
    const stream = client.watchJob({ id: job.id });
    stream.on("data", (e: WatchJobResponse) => events.push(e));
    stream.on("end", resolve);
    stream.on("error", reject);
  });
  const last = events.at(-1)!.job!;
  assert.equal(last.state, JobState.JOB_STATE_SUCCEEDED, last.error);
  assert.ok(events.length >= 3, `progress was streamed (${events.length} events)`);
  assert.deepEqual(
    events.map((e) => e.sequence),
    events.map((_, i) => BigInt(i + 1)),
  );
  assert.equal(last.progress!.sectionsDone, last.progress!.sectionsTotal);
  assert.ok(
    events.some((e) => e.event?.$case === "progress" && e.event.value.currentStep > 0),
    "denoise steps were streamed",
  );
  assert.equal(events[0]!.event?.$case, "state");
  // One preview per section decoded by a decode task (the last one is decoded by the mux, whose
  // video follows), each a playable MP4 object that the job names as its latest.
  const previews = events.flatMap((e) => (e.event?.$case === "previewKey" ? [e.event.value] : []));
  assert.equal(last.progress!.sectionsTotal, 2);
  assert.equal(previews.length, 1, `a preview per section but the last: ${previews.join(", ")}`);
  assert.equal(new Set(previews).size, previews.length);
  for (const key of previews)
    assert.equal(
      Buffer.from(await store.get(key))
        .subarray(4, 8)
        .toString(),
      "ftyp",
      key,
    );
  assert.equal(last.previewKey, previews.at(-1));
  assert.ok(last.previewUrl.length > 0);
  const got = await new Promise<SubmitJobResponse["job"]>((resolve, reject) =>
    client.getJob({ id: job.id }, (err, res) => (err ? reject(err) : resolve(res.job))),
  );
  assert.ok(got!.videoUrl.startsWith("file:"));
  const mp4 = await readFile(fileURLToPath(got!.videoUrl));
  assert.equal(mp4.subarray(4, 8).toString(), "ftyp");
  assert.deepEqual([got!.width, got!.height], [64, 48]);
});

test("an idempotency key returns the first job", async () => {
  const a = await submit({
    image: { source: { $case: "data", value: image } },
    settings: settings(),
    idempotencyKey: "client-42:retry",
  });
  const b = await submit({
    image: { source: { $case: "data", value: image } },
    settings: settings(),
    idempotencyKey: "client-42:retry",
  });
  assert.equal(b.job!.id, a.job!.id);
  assert.equal(b.deduplicated, true);
});

test("cancel stops a job and removes its objects", async () => {
  const { job } = await submit({
    image: { source: { $case: "data", value: image } },
    settings: settings({ length: { $case: "numFrames", value: 200 } }),
  });
  const res = await new Promise<SubmitJobResponse["job"]>((resolve, reject) =>
    client.cancelJob({ id: job!.id }, (err, r) => (err ? reject(err) : resolve(r.job))),
  );
  assert.equal(res!.state, JobState.JOB_STATE_CANCELLED);
  // A task that was running at cancellation finishes or aborts, then its outputs are removed too.
  const deadline = Date.now() + 10_000;
  while ((await store.list(`jobs/${job!.id}/`)).length > 0 && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(await store.list(`jobs/${job!.id}/`), []);
});

test("bad requests get the right status and a message naming the problem", async () => {
  const img = { image: { source: { $case: "data" as const, value: image } } };
  await rejectsWith(submit({ settings: settings() }), status.INVALID_ARGUMENT, /image is missing/);
  await rejectsWith(submit({ ...img }), status.INVALID_ARGUMENT, /settings are missing/);
  await rejectsWith(
    submit({ image: { source: { $case: "data", value: Buffer.from("not an image") } }, settings: settings() }),
    status.INVALID_ARGUMENT,
    /not a readable image/,
  );
  await rejectsWith(submit({ ...img, settings: settings({ steps: 0 }) }), status.INVALID_ARGUMENT, /steps/);
  await rejectsWith(
    submit({ ...img, settings: settings({ length: undefined }) }),
    status.INVALID_ARGUMENT,
    /length is missing/,
  );
  await rejectsWith(
    submit({ ...img, settings: settings({ prompt: "x".repeat(20_000) }) }),
    status.INVALID_ARGUMENT,
    /limit is 16384 bytes/,
  );
  await rejectsWith(
    submit({ ...img, settings: settings(), idempotencyKey: "bad key with spaces" }),
    status.INVALID_ARGUMENT,
    /idempotency key/,
  );
  await rejectsWith(submit({ ...img, settings: settings(), bundle: "other" }), status.NOT_FOUND, /unknown bundle/);
  await rejectsWith(
    submit({ image: { source: { $case: "objectKey", value: "../etc/passwd" } }, settings: settings() }),
    status.INVALID_ARGUMENT,
    /invalid object key/,
  );
  await rejectsWith(
    submit({ image: { source: { $case: "objectKey", value: "jobs/x/inputs/first-image" } }, settings: settings() }),
    status.PERMISSION_DENIED,
    /uploads/,
  );
  await rejectsWith(
    new Promise((res, rej) => client.getJob({ id: "no-such-job" }, (e, r) => (e ? rej(e) : res(r)))),
    status.NOT_FOUND,
    /does not exist/,
  );
  await rejectsWith(
    new Promise((res, rej) => client.getJob({ id: "../x" }, (e, r) => (e ? rej(e) : res(r)))),
    status.INVALID_ARGUMENT,
    /invalid job id/,
  );
});

test("health checking answers SERVING and reflection lists the JobService", async () => {
  const { loadSync } = await import("@grpc/proto-loader");
  const grpc = await import("@grpc/grpc-js");
  const healthProto = path.join(
    repoRoot(),
    "node_modules",
    "grpc-health-check",
    "proto",
    "health",
    "v1",
    "health.proto",
  );
  const def = grpc.loadPackageDefinition(loadSync(healthProto, { enums: String })) as unknown as {
    grpc: {
      health: {
        v1: {
          Health: new (
            a: string,
            c: unknown,
          ) => { check(r: object, cb: (e: unknown, r: { status: string }) => void): void; close(): void };
        };
      };
    };
  };
  const health = new def.grpc.health.v1.Health(`127.0.0.1:${server.port}`, credentials.createInsecure());
  const res = await new Promise<{ status: string }>((resolve, reject) =>
    health.check({ service: "framefarm.v1.JobService" }, (e, r) => (e ? reject(e) : resolve(r))),
  );
  health.close();
  assert.equal(res.status, "SERVING");
  const reflProto = path.join(
    repoRoot(),
    "node_modules",
    "@grpc",
    "reflection",
    "build",
    "proto",
    "grpc",
    "reflection",
    "v1",
    "reflection.proto",
  );
  const rdef = grpc.loadPackageDefinition(loadSync(reflProto)) as unknown as {
    grpc: {
      reflection: {
        v1: {
          ServerReflection: new (
            a: string,
            c: unknown,
          ) => {
            serverReflectionInfo(): NodeJS.ReadWriteStream & { write(m: object): void; end(): void };
            close(): void;
          };
        };
      };
    };
  };
  const refl = new rdef.grpc.reflection.v1.ServerReflection(`127.0.0.1:${server.port}`, credentials.createInsecure());
  const services = await new Promise<string[]>((resolve, reject) => {
    const call = refl.serverReflectionInfo();
    call.on("data", (m: { listServicesResponse?: { service: { name: string }[] } }) =>
      resolve((m.listServicesResponse?.service ?? []).map((s) => s.name)),
    );
    call.on("error", reject);
    call.write({ listServices: "*" });
    call.end();
  });
  refl.close();
  assert.ok(services.includes("framefarm.v1.JobService"), services.join(", "));
});

/** A local store whose writes take 300 ms: a submission is still storing its image when its deadline passes. */
class SlowWritingStore extends LocalObjectStore {
  override async put(key: string, data: Uint8Array): ReturnType<LocalObjectStore["put"]> {
    await new Promise((r) => setTimeout(r, 300));
    return super.put(key, data);
  }
}

test("a submission whose deadline passes while the server works on it is not created", async () => {
  const slowStore = new SlowWritingStore(tmp);
  const slow = await startApiServer(
    new JobService({
      bus,
      store: slowStore,
      dispatcher,
      manifest: embedded.runtime.bundle.manifest,
      bundleName: "tiny",
    }),
    "127.0.0.1",
    0,
  );
  const slowClient = new JobServiceClient(`127.0.0.1:${slow.port}`, credentials.createInsecure());
  try {
    const jobCount = (): Promise<number> =>
      new Promise((resolve, reject) =>
        client.listJobs({ states: [], pageSize: 500, pageToken: "" }, (err, res) =>
          err ? reject(err) : resolve(res.jobs.length),
        ),
      );
    const jobsBefore = await jobCount();
    const objectsBefore = new Set(await store.list("jobs/"));
    const req = {
      image: { source: { $case: "data" as const, value: image } },
      settings: settings(),
      bundle: "",
      priority: 0,
      idempotencyKey: "deadline-test",
      keyframes: [],
      loras: [],
    } as SubmitJobRequest;
    await assert.rejects(
      new Promise((resolve, reject) =>
        slowClient.submitJob(req, new Metadata(), { deadline: Date.now() + 150 }, (err, res) =>
          err ? reject(err) : resolve(res),
        ),
      ),
      (e: unknown) => (e as ServiceError).code === status.DEADLINE_EXCEEDED,
    );
    await new Promise((r) => setTimeout(r, 1000)); // the server has finished its write and its clean-up by now
    assert.equal(await jobCount(), jobsBefore, "no job was created");
    // A submission writes only its inputs (other tests' jobs may still be writing their outputs).
    assert.deepEqual(
      (await store.list("jobs/")).filter((k) => !objectsBefore.has(k) && k.includes("/inputs/")),
      [],
      "the stored image was removed again",
    );
    // The idempotency key was not taken either: the same key now makes a fresh job.
    const { deduplicated } = await submit({
      image: { source: { $case: "data", value: image } },
      settings: settings(),
      idempotencyKey: "deadline-test",
    });
    assert.equal(deduplicated, false);
  } finally {
    slowClient.close();
    await slow.stop();
  }
});
