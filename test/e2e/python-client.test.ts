/**
 * The Python client as a user runs it: `framefarm cluster` (nats-server, s3rver, coordinator, a
 * text/image/VAE node and a denoise node, all real processes) and the client's example script,
 * shared/clients/python/example.py, run by Debian's python3 with python3-grpcio and
 * python3-protobuf (deploy/local/install-python.sh). The script submits, prints progress and
 * downloads the MP4 by its presigned URL; the file must be the farm's video, byte for byte, and
 * decode to frames of the job's size.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { credentials } from "@grpc/grpc-js";
import { JobServiceClient, JobState, type Job } from "../../proto/gen/framefarm/v1/jobs.js";
import { S3ObjectStore } from "../../shared/store/s3-store.js";
import { readMp4Frames } from "../../shared/video/mp4.js";
import { cliPath, repoRoot } from "../support/paths.js";

const run = promisify(execFile);
/** Debian's interpreter, whose dist-packages hold python3-grpcio and python3-protobuf. */
const PYTHON = process.env["FRAMEFARM_PYTHON"] ?? "/usr/bin/python3";
const EXAMPLE = path.join(repoRoot(), "shared", "clients", "python", "example.py");
const IMAGE = path.join(repoRoot(), "test", "fixtures", "images", "demo.png");

let cluster: ChildProcess;
let address: string;
let client: JobServiceClient;
let store: S3ObjectStore;
let tmp: string;

before(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-python-"));
  cluster = spawn(
    process.execPath,
    [cliPath(), "cluster", "--http-port", "0", "--nodes", "1", "--denoise-nodes", "1"],
    {
      stdio: ["ignore", "pipe", "inherit"],
      env: { ...process.env, FRAMEFARM_LOG_LEVEL: process.env["FRAMEFARM_LOG_LEVEL"] ?? "warn" },
    },
  );
  let out = "";
  const s3 = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`cluster did not start: ${out}`)), 30_000);
    cluster.stdout!.on("data", (b: Buffer) => {
      out += b.toString();
      const grpc = /gRPC listening on (\S+)/.exec(out);
      const servers = /S3 on (\S+)/.exec(out);
      if (grpc && servers) {
        clearTimeout(timer);
        address = grpc[1]!;
        resolve(servers[1]!);
      }
    });
    cluster.once("exit", (code) => reject(new Error(`cluster exited ${code}: ${out}`)));
  });
  client = new JobServiceClient(address, credentials.createInsecure());
  const [host, port] = s3.split(":");
  store = await S3ObjectStore.open({
    endpoint: host!,
    port: Number(port),
    useSSL: false,
    accessKey: "S3RVER",
    secretKey: "S3RVER",
    bucket: "framefarm",
  });
});

after(async () => {
  client?.close();
  if (cluster !== undefined && cluster.exitCode === null) {
    const exited = new Promise((r) => cluster.once("exit", r));
    cluster.kill("SIGTERM");
    await exited;
  }
  if (tmp !== undefined) await rm(tmp, { recursive: true, force: true });
});

const example = (args: string[]) =>
  run(PYTHON, [EXAMPLE, "--server", address, "--image", IMAGE, "--prompt", "A lighthouse on a cliff", ...args], {
    env: { ...process.env, PYTHONDONTWRITEBYTECODE: "1" },
    timeout: 180_000,
  });

test("the Python example submits, shows progress and downloads the farm's MP4", async () => {
  const output = path.join(tmp, "out.mp4");
  const { stdout, stderr } = await example([
    "--frames",
    "20",
    "--steps",
    "2",
    "--resolution",
    "64",
    "--seed",
    "7",
    "-o",
    output,
  ]);
  const jobId = stdout.trim();
  assert.match(jobId, /^[0-9a-f-]{36}$/, stdout);
  // Progress lines as the job went: running with section and step, then done.
  assert.match(stderr, /RUNNING +\d+%  section 1\/\d+  step \d+\/2/, stderr);
  assert.match(stderr, /SUCCEEDED 100%/, stderr);
  assert.match(stderr, /wrote .*out\.mp4: 64x48, 20 frames requested/, stderr);

  const job = await new Promise<Job>((resolve, reject) =>
    client.getJob({ id: jobId }, (e, r) => (e ? reject(e) : resolve(r.job!))),
  );
  assert.equal(job.state, JobState.JOB_STATE_SUCCEEDED);
  const mp4 = await readFile(output);
  assert.equal(mp4.subarray(4, 8).toString(), "ftyp");
  assert.ok(mp4.equals(Buffer.from(await store.get(job.videoKey))), "the download is the farm's video, byte for byte");
  const frames = await readMp4Frames(output, job.width, job.height);
  assert.deepEqual(frames.shape.slice(1), [job.height, job.width, 3]);
  assert.ok(frames.shape[0]! >= job.numFrames, `${frames.shape[0]} frames decoded, ${job.numFrames} requested`);
  assert.deepEqual(readdirSync(tmp), ["out.mp4"], "no temporary file left beside the video");
});

test("a refused submission exits 1 with the gRPC status and writes nothing", async () => {
  const output = path.join(tmp, "refused.mp4");
  await assert.rejects(example(["--frames", "20", "--steps", "0", "-o", output]), (e: unknown) => {
    const err = e as { code?: number; stderr?: string };
    return err.code === 1 && /^error: INVALID_ARGUMENT: .*steps/m.test(err.stderr ?? "");
  });
  assert.equal(existsSync(output), false);
});
