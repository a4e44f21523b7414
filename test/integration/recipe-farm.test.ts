/**
 * Recipes, WebM and saved frames on a farm (nats-server, s3rver, the coordinator's API and nodes):
 * `submit --wait -o out.webm --save-frames DIR` downloads the video, its recipe beside it and the
 * PNGs; the Job names them; `submit --recipe` on the farm and `render --recipe` in embedded mode
 * give the very frames of the first render; bad recipes are refused over gRPC and store nothing.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, readFile, readdir, rm } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import sharp from "sharp";
import { credentials, status, type ServiceError } from "@grpc/grpc-js";
import {
  JobServiceClient,
  JobState,
  VideoFormat,
  type Job,
  type SubmitJobRequest,
} from "../../proto/gen/framefarm/v1/jobs.js";
import { readMp4Frames } from "../../shared/video/mp4.js";
import { readVideoComment } from "../../shared/video/probe.js";
import { parseRecipe } from "../../shared/job/recipe.js";
import { startTestFarm, type TestFarm } from "../support/farm.js";
import { cliPath, repoRoot, testOutputDir } from "../support/paths.js";

const run = promisify(execFile);
const demoImage = path.join(repoRoot(), "test", "fixtures", "images", "demo.png");
const dir = path.join(testOutputDir(), "integration-recipe-farm");
const file = (name: string): string => path.join(dir, name);
const [W, H] = [64, 48];

let farm: TestFarm;
let client: JobServiceClient;

before(async () => {
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  farm = await startTestFarm({ nodes: true });
  client = new JobServiceClient(farm.address, credentials.createInsecure());
});

after(async () => {
  client?.close();
  await farm?.stop();
});

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [cliPath(), ...args], { maxBuffer: 16 << 20 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

const getJob = (id: string): Promise<Job> =>
  new Promise((resolve, reject) => client.getJob({ id }, (err, res) => (err ? reject(err) : resolve(res.job!))));
const submit = (req: SubmitJobRequest): Promise<Job> =>
  new Promise((resolve, reject) => client.submitJob(req, (err, res) => (err ? reject(err) : resolve(res.job!))));

async function pngFrames(folder: string): Promise<Buffer> {
  const names = (await readdir(folder)).sort();
  return Buffer.concat(await Promise.all(names.map((n) => sharp(path.join(folder, n)).raw().toBuffer())));
}

test("submit --wait -o out.webm --save-frames DIR brings back the WebM, its recipe and the PNG frames", async () => {
  const r = await cli([
    "submit",
    "--server",
    farm.address,
    "--image",
    demoImage,
    "--prompt",
    "a lighthouse",
    "--frames",
    "20",
    "--resolution",
    "64",
    "--steps",
    "2",
    "--seed",
    "7",
    "--lossless",
    "--wait",
    "-o",
    file("farm.webm"),
    "--save-frames",
    file("frames"),
  ]);
  assert.equal(r.code, 0, r.stderr);
  const id = r.stdout.trim().split("\n")[0]!.split(" ")[0]!;
  const job = await getJob(id);
  assert.equal(job.state, JobState.JOB_STATE_SUCCEEDED);
  assert.match(job.videoKey, /output\/video\.webm$/);
  assert.match(job.recipeKey, /output\/recipe\.json$/);
  assert.match(job.framesKey, /output\/frames\.tar$/);
  assert.notEqual(job.recipeUrl, "");
  assert.notEqual(job.framesUrl, "");
  assert.equal(job.settings!.format, VideoFormat.VIDEO_FORMAT_WEBM);
  assert.equal(job.settings!.saveFrames, true);

  const sidecar = await readFile(file("farm.recipe.json"), "utf8");
  assert.equal(await readVideoComment(file("farm.webm")), sidecar, "the WebM's COMMENT tag is the recipe");
  assert.equal(
    new TextDecoder().decode(await farm.store.get(job.recipeKey)),
    sidecar,
    "the stored recipe is the downloaded one",
  );
  const recipe = parseRecipe(sidecar);
  assert.deepEqual(recipe.video, { format: "webm", crf: 16, lossless: true });
  assert.equal(recipe.seed, "7");

  const frames = await readMp4Frames(file("farm.webm"), W, H);
  assert.equal(frames.shape[0], 37);
  assert.ok(
    (await pngFrames(file("frames"))).equals(Buffer.from(frames.data)),
    "the PNGs hold exactly the lossless WebM's frames",
  );
});

test("a farm's recipe renders the same frames on the farm again and in embedded mode", async () => {
  const original = await readMp4Frames(file("farm.webm"), W, H);
  const again = await cli([
    "submit",
    "--server",
    farm.address,
    "--recipe",
    file("farm.webm"),
    "--image",
    demoImage,
    "--wait",
    "-o",
    file("again.webm"),
  ]);
  assert.equal(again.code, 0, again.stderr);
  assert.ok(
    Buffer.from((await readMp4Frames(file("again.webm"), W, H)).data).equals(Buffer.from(original.data)),
    "farm re-render: identical frames",
  );
  assert.equal(await readFile(file("again.recipe.json"), "utf8"), await readFile(file("farm.recipe.json"), "utf8"));

  const embedded = await cli([
    "render",
    "--recipe",
    file("farm.recipe.json"),
    "--image",
    demoImage,
    "-o",
    file("embedded.webm"),
  ]);
  assert.equal(embedded.code, 0, embedded.stderr);
  assert.ok(
    Buffer.from((await readMp4Frames(file("embedded.webm"), W, H)).data).equals(Buffer.from(original.data)),
    "embedded re-render of a farm's recipe: identical frames",
  );
});

const loraFile = (name: string): string => path.join(repoRoot(), "test", "fixtures", "reference-cases", name);
const KOHYA = loraFile("lora_kohya_vanilla_lora0.safetensors");
const DIFFUSERS = loraFile("lora_diffusers_inverted_endframe_cfg_lora0.safetensors");

test("LoRAs on a farm: the recipe names them by SHA-256 and weight and renders the same frames again, on the farm and embedded", async () => {
  const args = ["--image", demoImage, "--prompt", "a lighthouse", "--frames", "20", "--resolution", "64"];
  const first = await cli([
    "submit",
    "--server",
    farm.address,
    ...args,
    "--steps",
    "2",
    "--seed",
    "7",
    "--lossless",
    "--lora",
    `${KOHYA}:0.7`,
    "--lora",
    `${DIFFUSERS}:-0.4`,
    "--wait",
    "-o",
    file("lora.mp4"),
  ]);
  assert.equal(first.code, 0, first.stderr);
  const job = await getJob(first.stdout.trim().split("\n")[0]!.split(" ")[0]!);
  const sha = async (f: string): Promise<string> =>
    (await import("node:crypto"))
      .createHash("sha256")
      .update(await readFile(f))
      .digest("hex");
  const loras = [
    { name: path.basename(KOHYA), sha256: await sha(KOHYA), weight: 0.7 },
    { name: path.basename(DIFFUSERS), sha256: await sha(DIFFUSERS), weight: -0.4 },
  ];
  assert.deepEqual(job.loras, loras);
  assert.deepEqual(parseRecipe(await readFile(file("lora.recipe.json"), "utf8")).loras, loras);
  const frames = await readMp4Frames(file("lora.mp4"), W, H);
  const plain = await readMp4Frames(file("farm.webm"), W, H);
  assert.ok(!Buffer.from(frames.data).equals(Buffer.from(plain.data)), "the LoRAs change the video");

  // The farm holds the files: the recipe alone renders the same frames.
  const again = await cli([
    "submit",
    "--server",
    farm.address,
    "--recipe",
    file("lora.mp4"),
    "--image",
    demoImage,
    "--wait",
    "-o",
    file("lora-again.mp4"),
  ]);
  assert.equal(again.code, 0, again.stderr);
  assert.ok(Buffer.from((await readMp4Frames(file("lora-again.mp4"), W, H)).data).equals(Buffer.from(frames.data)));
  // Embedded mode holds nothing: the files are given again, the weights come from the recipe.
  const embedded = await cli([
    "render",
    "--recipe",
    file("lora.recipe.json"),
    "--image",
    demoImage,
    "--lora",
    KOHYA,
    "--lora",
    DIFFUSERS,
    "-o",
    file("lora-embedded.mp4"),
  ]);
  assert.equal(embedded.code, 0, embedded.stderr);
  assert.ok(Buffer.from((await readMp4Frames(file("lora-embedded.mp4"), W, H)).data).equals(Buffer.from(frames.data)));
  const missing = await cli([
    "render",
    "--recipe",
    file("lora.recipe.json"),
    "--image",
    demoImage,
    "--lora",
    KOHYA,
    "-o",
    file("never.mp4"),
  ]);
  assert.notEqual(missing.code, 0);
  assert.match(
    missing.stderr,
    /FAILED_PRECONDITION.*the recipe's LoRA 2 \(lora_diffusers_inverted_endframe_cfg_lora0.safetensors\).*is not in this farm's store: give its file/,
  );
  const weighted = await cli([
    "render",
    "--recipe",
    file("lora.recipe.json"),
    "--image",
    demoImage,
    "--lora",
    `${KOHYA}:2`,
    "--lora",
    DIFFUSERS,
    "-o",
    file("never.mp4"),
  ]);
  assert.match(
    weighted.stderr,
    /INVALID_ARGUMENT.*LoRA 1 \(lora_kohya_vanilla_lora0.safetensors\): with a recipe, LoRA weights come from the recipe/,
  );
});

test("bad recipes are refused over gRPC and leave nothing behind", async () => {
  const before = await farm.snapshot();
  const sidecar = JSON.parse(await readFile(file("farm.recipe.json"), "utf8")) as Record<string, unknown>;
  const image = { source: { $case: "data" as const, value: await readFile(demoImage) } };
  const req = (recipe: unknown, settings?: SubmitJobRequest["settings"]): SubmitJobRequest => ({
    image,
    settings,
    bundle: "",
    priority: 0,
    idempotencyKey: "",
    keyframes: [],
    loras: [],
    recipe: JSON.stringify(recipe),
  });
  const refused = async (r: SubmitJobRequest, code: status, message: RegExp): Promise<void> =>
    assert.rejects(submit(r), (e: unknown) => {
      assert.equal(status[(e as ServiceError).code], status[code], (e as ServiceError).details);
      assert.match((e as ServiceError).details, message);
      return true;
    });
  const digest = (sidecar["bundle"] as { digest: string }).digest;
  await refused(
    req({ ...sidecar, bundle: { name: "big", digest: `sha256:${"1".repeat(64)}` } }),
    status.FAILED_PRECONDITION,
    new RegExp(`sha256:1{64}.*${digest}`),
  );
  await refused(req({ ...sidecar, guidance_rescale: 0.7 }), status.INVALID_ARGUMENT, /unknown field guidance_rescale/);
  await refused(req({ ...sidecar, version: 9 }), status.INVALID_ARGUMENT, /version 9/);
  await refused(
    req(sidecar, { prompt: "another prompt", mode: 0 }),
    status.INVALID_ARGUMENT,
    /settings\.prompt comes from the recipe/,
  );
  await refused(
    {
      ...req(sidecar),
      image: {
        source: {
          $case: "data",
          value: await sharp({ create: { width: 64, height: 48, channels: 3, background: "#000" } })
            .png()
            .toBuffer(),
        },
      },
    },
    status.INVALID_ARGUMENT,
    /not the recipe's/,
  );
  assert.deepEqual(await farm.snapshot(), before);
});
