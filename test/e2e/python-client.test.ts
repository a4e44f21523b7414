/**
 * The Python client as a user runs it: `framefarm cluster` (nats-server, s3rver, coordinator, a
 * text/image/VAE node and a denoise node, all real processes) and the client's example script,
 * shared/clients/python/example.py, run by Debian's python3 with python3-grpcio and
 * python3-protobuf (deploy/local/install-python.sh). The script submits, prints progress and
 * downloads the MP4 by its presigned URL; the file must be the farm's video, byte for byte, and
 * decode to frames of the job's size. It also renders with lllyasviel's sampler (--sampler unipc)
 * and renders that job's downloaded recipe again (--recipe), which must give the same MP4 bytes,
 * with TeaCache, with MagCache (--cache magcache and its parameters) and with keyframes, and
 * extends a video (--video, --context-frames), whose recipe renders the same MP4 bytes again from
 * the same video.
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
const VIDEO = path.join(repoRoot(), "test", "fixtures", "reference-cases", "video_extend_vanilla_video.mp4");

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

const PROMPT = ["--prompt", "A lighthouse on a cliff"];
const example = (args: string[], prompt = PROMPT, start = ["--image", IMAGE]) =>
  run(PYTHON, [EXAMPLE, "--server", address, ...start, ...prompt, ...args], {
    env: { ...process.env, PYTHONDONTWRITEBYTECODE: "1" },
    timeout: 180_000,
  });

const getJob = (id: string) =>
  new Promise<Job>((resolve, reject) => client.getJob({ id }, (e, r) => (e ? reject(e) : resolve(r.job!))));

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

  const job = await getJob(jobId);
  assert.equal(job.state, JobState.JOB_STATE_SUCCEEDED);
  const mp4 = await readFile(output);
  assert.equal(mp4.subarray(4, 8).toString(), "ftyp");
  assert.ok(mp4.equals(Buffer.from(await store.get(job.videoKey))), "the download is the farm's video, byte for byte");
  const frames = await readMp4Frames(output, job.width, job.height);
  assert.deepEqual(frames.shape.slice(1), [job.height, job.width, 3]);
  assert.ok(frames.shape[0]! >= job.numFrames, `${frames.shape[0]} frames decoded, ${job.numFrames} requested`);
  const recipe = await readFile(path.join(tmp, "out.recipe.json"));
  assert.ok(recipe.equals(Buffer.from(await store.get(job.recipeKey))), "the recipe beside it is the farm's");
  assert.deepEqual(readdirSync(tmp).sort(), ["out.mp4", "out.recipe.json"], "no temporary file left beside them");
});

test("a refused submission exits 1 with the gRPC status and writes nothing", async () => {
  const output = path.join(tmp, "refused.mp4");
  await assert.rejects(example(["--frames", "20", "--steps", "0", "-o", output]), (e: unknown) => {
    const err = e as { code?: number; stderr?: string };
    return err.code === 1 && /^error: INVALID_ARGUMENT: .*steps/m.test(err.stderr ?? "");
  });
  assert.equal(existsSync(output), false);
});

test("--sampler unipc --cache teacache --vae-tiling renders, and --recipe renders its downloaded recipe again to the same MP4 bytes", async () => {
  const dir = await mkdtemp(path.join(tmp, "recipe-"));
  const first = path.join(dir, "unipc.mp4");
  const settings = ["--frames", "20", "--steps", "2", "--resolution", "64", "--seed", "11"];
  const one = await example([...settings, "--sampler", "unipc", "--cache", "teacache", "--vae-tiling", "-o", first]);
  assert.match(one.stderr, /SUCCEEDED 100%/, one.stderr);
  const job = await getJob(one.stdout.trim());
  assert.equal(job.state, JobState.JOB_STATE_SUCCEEDED);
  assert.equal(job.settings!.vaeTiling, true, "the client's vae_tiling reached the job");
  const recipeFile = path.join(dir, "unipc.recipe.json");
  const recipe = JSON.parse(await readFile(recipeFile, "utf8")) as {
    sampler: string;
    seed: string;
    cache: string;
    cache_threshold: number;
    vae_tiling: boolean;
  };
  assert.equal(recipe.sampler, "unipc");
  assert.equal(recipe.vae_tiling, true);
  assert.deepEqual([recipe.cache, recipe.cache_threshold], ["teacache", 0.15]);
  assert.equal(recipe.seed, "11");

  // With a recipe the settings come from it: the client refuses others before any call.
  const refused = path.join(dir, "refused.mp4");
  await assert.rejects(example(["--recipe", recipeFile, "--seed", "3", "-o", refused], []), (e: unknown) => {
    const err = e as { code?: number; stderr?: string };
    return err.code === 1 && /^error: seed comes from the recipe/m.test(err.stderr ?? "");
  });
  assert.equal(existsSync(refused), false);

  const again = path.join(dir, "again.mp4");
  const two = await example(["--recipe", recipeFile, "-o", again], []);
  assert.match(two.stderr, /SUCCEEDED 100%/, two.stderr);
  assert.notEqual(two.stdout.trim(), one.stdout.trim(), "a new job");
  assert.ok((await readFile(again)).equals(await readFile(first)), "the recipe renders the same MP4, byte for byte");
  assert.ok(
    (await readFile(path.join(dir, "again.recipe.json"))).equals(await readFile(recipeFile)),
    "and carries the same recipe",
  );
});

test("--cache magcache with its parameters renders; the recipe records them and renders again to the same MP4 bytes", async () => {
  const dir = await mkdtemp(path.join(tmp, "magcache-"));
  const first = path.join(dir, "mag.mp4");
  const settings = ["--frames", "20", "--steps", "6", "--resolution", "64", "--seed", "5", "--sampler", "unipc"];
  const mag = ["--cache", "magcache", "--cache-threshold", "0.15", "--magcache-k", "3", "--magcache-retention", "0.2"];
  const one = await example([...settings, ...mag, "-o", first]);
  assert.match(one.stderr, /SUCCEEDED 100%/, one.stderr);
  const recipeFile = path.join(dir, "mag.recipe.json");
  const recipe = JSON.parse(await readFile(recipeFile, "utf8")) as Record<string, unknown>;
  assert.deepEqual(
    [recipe["cache"], recipe["cache_threshold"], recipe["magcache_k"], recipe["magcache_retention"]],
    ["magcache", 0.15, 3, 0.2],
  );
  const again = path.join(dir, "again.mp4");
  const two = await example(["--recipe", recipeFile, "-o", again], []);
  assert.match(two.stderr, /SUCCEEDED 100%/, two.stderr);
  assert.ok((await readFile(again)).equals(await readFile(first)), "the recipe renders the same MP4, byte for byte");

  // Out of range: the farm's INVALID_ARGUMENT, naming the parameter.
  await assert.rejects(
    example([...settings, "--cache", "magcache", "--magcache-k", "0", "-o", path.join(dir, "no.mp4")]),
    (e: unknown) => /INVALID_ARGUMENT: .*MagCache's K/m.test((e as { stderr?: string }).stderr ?? ""),
  );
});

test("--keyframe renders; the recipe records the keyframes and, given them again, renders the same MP4 bytes", async () => {
  const dir = await mkdtemp(path.join(tmp, "keyframes-"));
  const first = path.join(dir, "keys.mp4");
  const key = path.join(repoRoot(), "test", "fixtures", "reference-cases", "keyframes_unipc_inverted_keyframe0.png");
  // Window 9 at 30 fps: sections of 1.2 s; 40 frames (1.33 s) are 2 sections.
  const settings = ["--frames", "40", "--steps", "2", "--resolution", "64", "--seed", "9", "--mode", "inverted"];
  const keyframes = ["--keyframe", `0.5:${key}`, "--keyframe", `1.25s:${IMAGE}`];
  const one = await example([...settings, ...keyframes, "-o", first]);
  assert.match(one.stderr, /SUCCEEDED 100%/, one.stderr);
  const recipeFile = path.join(dir, "keys.recipe.json");
  const recipe = JSON.parse(await readFile(recipeFile, "utf8")) as {
    images: { keyframes: { time_seconds: number }[] };
  };
  assert.deepEqual(
    recipe.images.keyframes.map((k) => k.time_seconds),
    [0.5, 1.25],
  );
  assert.deepEqual((await getJob(one.stdout.trim())).keyframeTimes, [0.5, 1.25]);
  const again = path.join(dir, "again.mp4");
  const two = await example(["--recipe", recipeFile, ...keyframes, "-o", again], []);
  assert.match(two.stderr, /SUCCEEDED 100%/, two.stderr);
  assert.ok((await readFile(again)).equals(await readFile(first)), "the recipe renders the same MP4, byte for byte");
  // Without them: the farm's INVALID_ARGUMENT naming what is missing.
  await assert.rejects(example(["--recipe", recipeFile, "-o", path.join(dir, "no.mp4")], []), (e: unknown) =>
    /INVALID_ARGUMENT: the recipe was rendered with 2 keyframes/m.test((e as { stderr?: string }).stderr ?? ""),
  );
});

test("--video extends a video (its frames first, at its fps); its recipe renders again from the same video to the same MP4 bytes", async () => {
  const dir = await mkdtemp(path.join(tmp, "video-"));
  const first = path.join(dir, "longer.mp4");
  const settings = ["--frames", "20", "--steps", "2", "--resolution", "64", "--mode", "vanilla", "--seed", "3"];
  const one = await example([...settings, "--context-frames", "3", "-o", first], PROMPT, ["--video", VIDEO]);
  assert.match(one.stderr, /SUCCEEDED 100%/, one.stderr);
  const job = await getJob(one.stdout.trim());
  assert.equal(job.settings!.contextFrames, 3);
  assert.equal(job.settings!.fps, 30, "the video's frame rate");
  // 50 frames of input, then one section of window 9: 36 more.
  assert.equal((await readMp4Frames(first, 64, 64)).shape[0], 50 + 36);
  const recipeFile = path.join(dir, "longer.recipe.json");
  const recipe = JSON.parse(await readFile(recipeFile, "utf8")) as Record<string, unknown>;
  assert.equal(recipe["context_frames"], 3);
  const again = path.join(dir, "again.mp4");
  const two = await example(["--recipe", recipeFile, "-o", again], [], ["--video", VIDEO]);
  assert.match(two.stderr, /SUCCEEDED 100%/, two.stderr);
  assert.ok((await readFile(again)).equals(await readFile(first)), "the recipe renders the same MP4, byte for byte");

  // The client refuses context frames without a video; the farm, out of range.
  await assert.rejects(example([...settings, "--context-frames", "3", "-o", path.join(dir, "no.mp4")]), (e: unknown) =>
    /^error: context_frames needs a video/m.test((e as { stderr?: string }).stderr ?? ""),
  );
  await assert.rejects(
    example(["--frames", "20", "--context-frames", "12", "-o", path.join(dir, "no.mp4")], PROMPT, ["--video", VIDEO]),
    (e: unknown) =>
      /INVALID_ARGUMENT: context frames must be an integer from 2 to 10/m.test((e as { stderr?: string }).stderr ?? ""),
  );
});
