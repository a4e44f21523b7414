/**
 * Server reflection as a new user meets it: buf curl (the npm @bufbuild/buf binary) given nothing
 * but the address of a farm on real servers (nats-server, s3rver, node loops with the tiny bundle)
 * lists the service and its methods and calls every JobService RPC, its schema learned from the
 * server alone. The README's example is this test's first calls.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { repoRoot } from "../support/paths.js";
import { startTestFarm, type TestFarm } from "../support/farm.js";

const run = promisify(execFile);
const BUF = path.join(repoRoot(), "node_modules", ".bin", "buf");
const SERVICE = "framefarm.v1.JobService";

let farm: TestFarm;

before(async () => {
  farm = await startTestFarm({ nodes: true });
});

after(async () => {
  await farm?.stop();
});

/** Runs buf curl against the farm, the request (if any) on stdin as the README shows; resolves stdout. */
async function bufCurl(args: string[], request?: object): Promise<string> {
  const child = run(BUF, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", ...args], {
    maxBuffer: 16 * 1024 * 1024,
    timeout: 60_000,
  });
  if (request !== undefined) child.child.stdin!.end(JSON.stringify(request));
  else child.child.stdin!.end();
  return (await child).stdout;
}

/** Calls JobService.method by reflection with a JSON request; the JSON replies (several for a stream). */
async function call(method: string, request: object): Promise<Array<Record<string, unknown>>> {
  const out = await bufCurl(["-d", "@-", `http://${farm.address}/${SERVICE}/${method}`], request);
  // buf curl prints each message as indented JSON; top-level objects start at column 0.
  return out
    .split(/\n(?=\{)/)
    .filter((s) => s.trim().length > 0)
    .map((s) => JSON.parse(s) as Record<string, unknown>);
}

type JobJson = {
  id: string;
  state: string;
  videoUrl?: string;
  progress?: { sectionsTotal?: number; sectionsDone?: number };
};

test("buf curl lists JobService and its methods by reflection", async () => {
  const services = (await bufCurl(["--list-services", `http://${farm.address}`])).split("\n");
  assert.ok(services.includes(SERVICE), services.join(", "));
  const methods = (await bufCurl(["--list-methods", `http://${farm.address}`])).split("\n").filter(Boolean).sort();
  assert.deepEqual(
    methods,
    ["CancelJob", "GetJob", "ListJobs", "SubmitJob", "WatchJob"].map((m) => `${SERVICE}/${m}`),
  );
});

test("buf curl calls every JobService RPC by reflection", async () => {
  const image = (await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"))).toString("base64");
  // Two sections: a progress event needs a task to end while the watch is open, and a one-section
  // job has only its mux (a state change) after its denoise (the mux decodes its only section).
  const settings = { prompt: "a lighthouse", numFrames: 40, steps: 2, resolution: 64, seed: "7" };

  const [submitted] = await call("SubmitJob", { image: { data: image }, settings, idempotencyKey: "reflection-test" });
  const job = submitted!["job"] as JobJson;
  assert.match(job.id, /^[0-9a-f-]{36}$/);
  assert.equal(job.state, "JOB_STATE_QUEUED");

  const events = await call("WatchJob", { id: job.id });
  const last = events.at(-1)!["job"] as JobJson;
  assert.equal(last.state, "JOB_STATE_SUCCEEDED", JSON.stringify(last));
  assert.ok(
    events.some((e) => e["progress"] !== undefined),
    "progress events came through",
  );
  assert.ok(events.every((e) => e["jobId"] === job.id));

  const [got] = await call("GetJob", { id: job.id });
  const done = got!["job"] as JobJson;
  assert.equal(done.state, "JOB_STATE_SUCCEEDED");
  assert.ok((done.videoUrl ?? "").startsWith("http://"), done.videoUrl);
  assert.equal(done.progress!.sectionsDone, done.progress!.sectionsTotal);

  const [listed] = await call("ListJobs", { states: ["JOB_STATE_SUCCEEDED"], pageSize: 100 });
  assert.ok((listed!["jobs"] as JobJson[]).some((j) => j.id === job.id));

  const [long] = await call("SubmitJob", { image: { data: image }, settings: { ...settings, numFrames: 200 } });
  const [cancelled] = await call("CancelJob", { id: (long!["job"] as JobJson).id });
  assert.equal((cancelled!["job"] as JobJson).state, "JOB_STATE_CANCELLED");

  // Errors come back as gRPC statuses, named by buf curl.
  await assert.rejects(call("GetJob", { id: "no-such-job" }), (e: unknown) =>
    /not_found/.test(String((e as { stderr?: string }).stderr)),
  );
});
