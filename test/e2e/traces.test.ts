/**
 * Traces on a farm of real processes: `framefarm cluster --otlp-endpoint` (nats-server, s3rver, the
 * coordinator in the cluster process, a text/image/VAE node and a denoise node as processes of
 * their own) exports to an OTLP/HTTP receiver started here. Each of two jobs must give exactly one
 * trace, whose spans form one tree from its SubmitJob span (the root, or a child of the caller's
 * traceparent) through every task's dispatch, its run on a node and its result, across processes.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { readFile } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import path from "node:path";
import { credentials, Metadata } from "@grpc/grpc-js";
import { JobServiceClient, SamplingMode, type Job, type SubmitJobRequest } from "../../proto/gen/framefarm/v1/jobs.js";
import { NatsBus } from "../../shared/bus/nats-bus.js";
import { readJob, type JobRecord } from "../../coordinator/dispatch/job-record.js";
import { JOBS_BUCKET } from "../../shared/farm/protocol.js";
import { cliPath } from "../support/paths.js";
import { referenceDir } from "../support/reference.js";
import { until } from "../support/wait.js";
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from "../support/otlp-receiver.js";

let receiver: OtlpReceiver;
let cluster: ChildProcess;
let client: JobServiceClient;
let bus: NatsBus;

before(async () => {
  receiver = await startOtlpReceiver();
  // Only this test's settings: an OTEL_* variable of the caller's must not redirect the spans.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("OTEL_")));
  cluster = spawn(
    process.execPath,
    [
      cliPath(),
      "cluster",
      "--http-port",
      "0",
      "--nodes",
      "1",
      "--denoise-nodes",
      "1",
      "--otlp-endpoint",
      receiver.endpoint,
    ],
    {
      stdio: ["ignore", "pipe", "inherit"],
      env: {
        ...env,
        FRAMEFARM_LOG_LEVEL: process.env["FRAMEFARM_LOG_LEVEL"] ?? "warn",
        // Batches go out every 200 ms instead of 5 s, so the test need not wait long for them.
        OTEL_BSP_SCHEDULE_DELAY: "200",
      },
    },
  );
  let out = "";
  const addresses = await new Promise<{ grpc: string; nats: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`cluster did not start: ${out}`)), 30_000);
    cluster.stdout!.on("data", (b: Buffer) => {
      out += b.toString();
      const grpc = /gRPC listening on (\S+)/.exec(out);
      const servers = /NATS on (\S+), S3 on (\S+)/.exec(out);
      if (grpc && servers) {
        clearTimeout(timer);
        resolve({ grpc: grpc[1]!, nats: servers[1]! });
      }
    });
    cluster.once("exit", (code) => reject(new Error(`cluster exited ${code}: ${out}`)));
  });
  client = new JobServiceClient(addresses.grpc, credentials.createInsecure());
  bus = await NatsBus.connect(addresses.nats);
});

after(async () => {
  client?.close();
  await bus?.close();
  if (cluster !== undefined && cluster.exitCode === null) {
    const exited = new Promise((r) => cluster.once("exit", r));
    cluster.kill("SIGTERM");
    await exited;
  }
  await receiver?.stop();
});

const str = (s: ReceivedSpan, key: string): string | undefined => {
  const v = s.attributes[key];
  return typeof v === "string" ? v : undefined;
};

/** Spans of the job's tasks by kind: dispatch, run on a node, result, per task id. */
function taskSpans(spans: ReceivedSpan[], taskId: string): Record<"dispatch" | "task" | "result", ReceivedSpan[]> {
  const of = (prefix: string) =>
    spans.filter((s) => s.name.startsWith(`${prefix} `) && str(s, "framefarm.task.id") === taskId);
  return { dispatch: of("dispatch"), task: of("task"), result: of("result") };
}

test("a cluster run gives each job one connected trace, SubmitJob to mux, across processes", async () => {
  const image = await readFile(path.join(referenceDir(), "cases", "vanilla_3sec_first.png"));
  const request = (i: number): SubmitJobRequest => ({
    image: { source: { $case: "data", value: image } },
    keyframes: [],
    settings: {
      prompt: `traced job ${i}`,
      // Two sections each: a denoise after a denoise, a decode beside the next denoise.
      length: { $case: "numFrames", value: 60 },
      mode: i === 0 ? SamplingMode.SAMPLING_MODE_VANILLA : SamplingMode.SAMPLING_MODE_INVERTED_ANTI_DRIFTING,
      steps: 2,
      seed: BigInt(i),
      height: 64,
      width: 64,
    },
    bundle: "",
    priority: 0,
    idempotencyKey: "",
  });
  // The second job's caller is itself traced: its SubmitJob span continues the caller's trace.
  const callerTrace = randomBytes(16).toString("hex");
  const callerSpan = randomBytes(8).toString("hex");
  const metadata = (i: number): Metadata => {
    const m = new Metadata();
    if (i === 1) m.set("traceparent", `00-${callerTrace}-${callerSpan}-01`);
    return m;
  };
  const jobs = await Promise.all(
    [0, 1].map(
      (i) =>
        new Promise<Job>((resolve, reject) =>
          client.submitJob(request(i), metadata(i), (e, r) => (e ? reject(e) : resolve(r.job!))),
        ),
    ),
  );

  const kv = await bus.kv(JOBS_BUCKET);
  const records: JobRecord[] = [];
  for (const job of jobs) {
    let r = (await readJob(kv, job.id))!.record;
    const deadline = Date.now() + 240_000;
    while (r.state !== "SUCCEEDED" && r.state !== "FAILED" && Date.now() < deadline) {
      await new Promise((res) => setTimeout(res, 200));
      r = (await readJob(kv, job.id))!.record;
    }
    assert.equal(r.state, "SUCCEEDED", r.error);
    assert.ok(r.trace?.["traceparent"] !== undefined, "the job record keeps its trace context");
    records.push(r);
  }

  // Spans arrive in batches from three processes: wait until every task's three spans are in.
  await until(
    "every task's dispatch, run and result spans exported",
    async () =>
      records.every((r) =>
        r.tasks.every((t) => {
          const s = taskSpans(receiver.spans, t.id);
          return s.dispatch.length > 0 && s.task.length > 0 && s.result.length > 0;
        }),
      ),
    30_000,
  );
  assert.deepEqual(receiver.refused, []);

  for (const [i, r] of records.entries()) {
    const jobId = r.spec.jobId;
    const mine = receiver.spans.filter((s) => str(s, "framefarm.job.id") === jobId);
    const traceIds = new Set(mine.map((s) => s.traceId));
    assert.equal(traceIds.size, 1, `job ${i}: its spans are in ${traceIds.size} traces`);
    const traceId = [...traceIds][0]!;
    const spans = receiver.spans.filter((s) => s.traceId === traceId);
    // No span of another job in this trace.
    assert.deepEqual(
      spans.filter((s) => str(s, "framefarm.job.id") !== undefined && str(s, "framefarm.job.id") !== jobId),
      [],
    );

    // One tree: span ids unique, one root, every other span's parent in the trace, all reachable.
    const byId = new Map(spans.map((s) => [s.spanId, s]));
    assert.equal(byId.size, spans.length, `job ${i}: span ids are unique`);
    const roots = spans.filter((s) => !byId.has(s.parentSpanId));
    assert.deepEqual(
      roots.map((s) => s.name),
      ["framefarm.v1.JobService/SubmitJob"],
      `job ${i}: one root, SubmitJob`,
    );
    const root = roots[0]!;
    if (i === 0) assert.equal(root.parentSpanId, "", "without a caller's traceparent SubmitJob starts the trace");
    else {
      assert.equal(traceId, callerTrace, "the caller's traceparent: its trace");
      assert.equal(root.parentSpanId, callerSpan, "the caller's traceparent: its span is SubmitJob's parent");
    }
    assert.equal(str(root, "rpc.method"), "SubmitJob");
    assert.equal(r.trace!["traceparent"]!.split("-")[2], root.spanId, "the record keeps SubmitJob's context");
    const children = new Map<string, ReceivedSpan[]>();
    for (const s of spans) children.set(s.parentSpanId, [...(children.get(s.parentSpanId) ?? []), s]);
    const reached = new Set<string>();
    for (const queue = [root]; queue.length > 0;) {
      const s = queue.pop()!;
      reached.add(s.spanId);
      queue.push(...(children.get(s.spanId) ?? []));
    }
    assert.equal(reached.size, spans.length, `job ${i}: every span hangs from SubmitJob`);

    // Every task: dispatched under SubmitJob, run on a node under its dispatch, its result taken in under that run.
    const nodes = new Set<string>();
    for (const t of r.tasks) {
      const s = taskSpans(spans, t.id);
      for (const d of s.dispatch) {
        assert.equal(d.parentSpanId, root.spanId, `${t.id}: dispatch under SubmitJob`);
        assert.equal(d.resource["service.name"], "framefarm-coordinator");
      }
      const runs = s.task.filter((x) => str(x, "framefarm.task.outcome") === "done");
      assert.equal(runs.length, 1, `${t.id}: one successful run`);
      const run = runs[0]!;
      assert.equal(run.name, `task ${t.kind}`);
      assert.ok(
        s.dispatch.some((d) => d.spanId === run.parentSpanId),
        `${t.id}: its run is a child of its dispatch`,
      );
      assert.equal(run.resource["service.name"], "framefarm-node");
      const node = str(run, "framefarm.node.id")!;
      assert.equal(run.resource["service.instance.id"], node, `${t.id}: the span comes from node ${node}'s process`);
      nodes.add(node);
      assert.equal(str(run, "framefarm.stage"), t.kind);
      if (t.section !== undefined) assert.equal(run.attributes["framefarm.section"], t.section);
      for (const key of ["framefarm.bytes_read", "framefarm.bytes_written", "framefarm.model_ms"])
        assert.equal(typeof run.attributes[key], "number", `${t.id}: ${key}`);
      // Reads may all come from the node's cache (what it wrote itself); outputs are stored.
      if (t.kind === "decode") assert.ok((run.attributes["framefarm.bytes_read"] as number) > 0, `${t.id}: read`);
      if (t.kind === "denoise" || t.kind === "decode" || t.kind === "mux")
        assert.ok((run.attributes["framefarm.bytes_written"] as number) > 0, `${t.id}: wrote its outputs`);
      if (t.kind === "denoise") assert.ok((run.attributes["framefarm.model_ms"] as number) > 0);
      assert.ok(
        s.result.some((x) => x.parentSpanId === run.spanId),
        `${t.id}: the coordinator took its result in under its run`,
      );
    }
    assert.deepEqual([...nodes].sort(), ["denoise-0", "node-0"], `job ${i}: tasks ran on both node processes`);
    // mux, the last task: its phases as child spans, and the result that ended the job.
    const mux = r.tasks.find((t) => t.kind === "mux")!;
    const muxRun = taskSpans(spans, mux.id).task[0]!;
    const phases = spans.filter((s) => s.parentSpanId === muxRun.spanId).map((s) => s.name);
    assert.ok(phases.includes("phase encode"), `mux phases: ${phases.join(", ")}`);
    assert.ok(
      taskSpans(spans, mux.id).result.some((s) => s.attributes["framefarm.job.state"] === "SUCCEEDED"),
      "mux's result ended the job",
    );
  }
});
