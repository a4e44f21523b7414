/**
 * The submit page in a real browser: `framefarm cluster` with tokens (real nats-server, s3rver,
 * coordinator and node processes) and Debian's chromium driven by playwright-core, as a tenant
 * (not an operator). A start image is dropped (shown cropped to the bucket the server names), an
 * end image and a keyframe's image chosen, the form filled (timed prompts, random seed) and submitted; the job is watched
 * live (a finished section's preview plays while it runs, then the whole video) and downloaded;
 * what the farm rendered is what the form asked. From "my jobs" it is re-submitted with a new seed
 * and that one cancelled. A file that is no image is refused with the server's own message, the
 * one gRPC SubmitJob gives. Another tenant sees none of it; the operators' dashboard still does.
 * A video dropped in the start image's place is extended (its bucket shown, context frames asked
 * for, its frame rate kept) with VAE tiling on as well, and re-submitted with the same video and
 * both options.
 * Screenshots at 1366 px and at a phone's 390 px go to test-output/browser/submit/.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import sharp from "sharp";
import { chromium, type BrowserContext, type Page } from "playwright-core";
import { Metadata, credentials, type ServiceError } from "@grpc/grpc-js";
import {
  JobServiceClient,
  SamplingMode,
  type Job,
  type RenderSettings,
  type SubmitJobRequest,
} from "../../proto/gen/framefarm/v1/jobs.js";
import { findNearestBucket } from "../../shared/framepack/buckets.js";
import { Tensor } from "../../shared/tensor/tensor.js";
import { writeMp4 } from "../../shared/video/mp4.js";
import { STATUS_CODE } from "../../shared/errors.js";
import { cliPath, testOutputDir } from "../support/paths.js";

const CHROMIUM = process.env["FRAMEFARM_CHROMIUM"] ?? "/usr/bin/chromium";
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const shots = path.join(testOutputDir(), "browser", "submit");
const OPS_TOKEN = "ops-0123456789abcdef0123456789abcdef";
const ACME_TOKEN = "acme-0123456789abcdef0123456789abcdef";
const ZETA_TOKEN = "zeta-0123456789abcdef0123456789abcdef";
const PROM_TOKEN = "prom-0123456789abcdef0123456789abcdef";
const DESKTOP = { width: 1366, height: 900 };
const PHONE = { width: 390, height: 844 };

/** A 16:9 scene, so the crop to the bucket shows. */
const scene = (night: boolean): string => `<svg xmlns="http://www.w3.org/2000/svg" width="640" height="360">
  <defs><linearGradient id="s" x1="0" y1="0" x2="0" y2="1">
    <stop offset="0" stop-color="${night ? "#0b1a33" : "#f6a04d"}"/><stop offset="0.6" stop-color="${night ? "#28406b" : "#f7d59c"}"/>
    <stop offset="0.6" stop-color="${night ? "#102a43" : "#2f6f9f"}"/><stop offset="1" stop-color="${night ? "#06121f" : "#16324f"}"/>
  </linearGradient></defs>
  <rect width="640" height="360" fill="url(#s)"/>
  <circle cx="420" cy="${night ? 80 : 170}" r="${night ? 26 : 46}" fill="${night ? "#e8eef7" : "#fff3c4"}"/>
  ${night ? '<polygon points="142,108 640,60 640,150" fill="#fff7b0" opacity="0.35"/>' : ""}
  <rect x="124" y="100" width="30" height="116" fill="#f2f2f2"/><rect x="124" y="100" width="30" height="20" fill="#c0392b"/>
  <rect x="119" y="86" width="40" height="16" fill="#333"/>
</svg>`;

let cluster: ChildProcess;
let client: JobServiceClient;
let base: string;
let context: BrowserContext;
let page: Page;
let profile: string;
let startPng: Buffer;
let endPng: Buffer;
let keyframePng: Buffer;
const BAD_IMAGE = Buffer.from("this is a shopping list, not a picture\n");
const consoleErrors: string[] = [];

before(async () => {
  await mkdir(shots, { recursive: true });
  startPng = await sharp(Buffer.from(scene(false)))
    .png()
    .toBuffer();
  endPng = await sharp(Buffer.from(scene(true)))
    .png()
    .toBuffer();
  keyframePng = await sharp(Buffer.from(scene(true)))
    .flop()
    .png()
    .toBuffer();
  profile = await mkdtemp(path.join(os.tmpdir(), "framefarm-chromium-"));
  const tokens = path.join(profile, "..", `${path.basename(profile)}-tokens.json`);
  await writeFile(tokens, JSON.stringify({ ops: OPS_TOKEN, acme: ACME_TOKEN, zeta: ZETA_TOKEN, prom: PROM_TOKEN }));
  // One node serving every stage: the lightest farm that renders a job.
  cluster = spawn(
    process.execPath,
    [
      cliPath(),
      "cluster",
      "--port",
      "0",
      "--http-port",
      "0",
      "--nodes",
      "1",
      "--denoise-nodes",
      "0",
      "--tokens",
      tokens,
      "--operators",
      "ops",
      "--metrics-tenants",
      "prom",
    ],
    { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, FRAMEFARM_LOG_LEVEL: "info" } },
  );
  cluster.stderr!.pipe(createWriteStream(path.join(shots, "cluster.log")));
  let out = "";
  const addresses = await new Promise<{ grpc: string; http: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`cluster did not start: ${out}`)), 30_000);
    cluster.stdout!.on("data", (b: Buffer) => {
      out += b.toString();
      const grpc = /gRPC listening on (\S+)/.exec(out);
      const http = /dashboard on (http:\/\/\S+)/.exec(out);
      if (grpc && http) {
        clearTimeout(timer);
        resolve({ grpc: grpc[1]!, http: http[1]! });
      }
    });
    cluster.once("exit", (code) => reject(new Error(`cluster exited ${code}: ${out}`)));
  });
  client = new JobServiceClient(addresses.grpc, credentials.createInsecure());
  base = addresses.http;
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: DESKTOP,
    acceptDownloads: true,
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => {
    // The refused submission's 400 is the browser noting the answer the test asks for.
    if (m.type() === "error" && !/status of 400 \(Bad Request\)/.test(m.text()))
      consoleErrors.push(`console: ${m.text()} (${m.location().url})`);
  });
  page.on("pageerror", (e) => consoleErrors.push(`page error: ${e.message}`));
});

after(async () => {
  await context?.close();
  client?.close();
  if (cluster !== undefined && cluster.exitCode === null) {
    const exited = new Promise((r) => cluster.once("exit", r));
    cluster.kill("SIGTERM");
    await exited;
  }
  if (profile !== undefined) {
    await rm(profile, { recursive: true, force: true });
    await rm(`${profile}-tokens.json`, { force: true });
  }
});

const metadata = (token: string): Metadata => {
  const md = new Metadata();
  md.set("authorization", `Bearer ${token}`);
  return md;
};
const getJob = (id: string): Promise<Job> =>
  new Promise((resolve, reject) =>
    client.getJob({ id }, metadata(ACME_TOKEN), (e, r) => (e ? reject(e) : resolve(r.job!))),
  );

/** The browser's globals the page-side helpers use (the build has no DOM types). */
interface PageGlobals {
  DataTransfer: new () => { items: { add(file: unknown): void } };
  File: new (parts: unknown[], name: string, options: { type: string }) => unknown;
  DragEvent: new (type: string, init: { dataTransfer: unknown; bubbles: boolean; cancelable: boolean }) => unknown;
  document: { querySelector(selector: string): { dispatchEvent(e: unknown): boolean } | null };
  atob(s: string): string;
}
interface VideoLike {
  play(): Promise<void>;
  currentTime: number;
  videoWidth: number;
  videoHeight: number;
  error: { message: string } | null;
}

/** Drops a file on an element as a person dragging it from their desktop does. */
async function dropFile(selector: string, name: string, type: string, bytes: Buffer): Promise<void> {
  await page.evaluate(
    ({ selector, name, type, base64 }) => {
      const w = globalThis as unknown as PageGlobals;
      const data = Uint8Array.from(w.atob(base64), (c) => c.charCodeAt(0));
      const transfer = new w.DataTransfer();
      transfer.items.add(new w.File([data], name, { type }));
      const target = w.document.querySelector(selector)!;
      for (const event of ["dragover", "drop"])
        target.dispatchEvent(new w.DragEvent(event, { dataTransfer: transfer, bubbles: true, cancelable: true }));
    },
    { selector, name, type, base64: bytes.toString("base64") },
  );
}

/** Plays the viewer's video until its clock moves; a newer preview replacing it mid-start is tried again. */
async function playViewer(): Promise<{ playing: boolean; width: number; height: number; error: string | null }> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await page.locator("#viewer video").evaluate(async (element) => {
        const v = element as unknown as VideoLike;
        await v.play();
        const deadline = Date.now() + 15_000;
        while (v.currentTime === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        return {
          playing: v.currentTime > 0,
          width: v.videoWidth,
          height: v.videoHeight,
          error: v.error?.message ?? null,
        };
      });
    } catch (err) {
      if (attempt >= 3 || !/interrupted by a new load request/.test(String(err))) throw err;
    }
  }
}

/** A full-page screenshot, without the passing toast (fixed, it would sit over the page's middle). */
async function shot(name: string): Promise<void> {
  await page
    .locator("#toast")
    .evaluate((t) => (t as unknown as { classList: { remove(c: string): void } }).classList.remove("show"));
  await page.waitForTimeout(300);
  await page.screenshot({ path: path.join(shots, name), fullPage: true });
}
const viewerState = (state: string) => page.locator(`#viewer-job[data-state="${state}"]`);
const bucket = findNearestBucket(360, 640, 64);
let jobId = "";

test("a tenant submits from the page, watches the job to the end, downloads it, re-submits and cancels", async () => {
  // A token that only scrapes /metrics is refused with the server's reason; a tenant's opens the page.
  await page.goto(`${base}/submit`);
  await page.locator("#login").waitFor();
  await page.locator("#token").fill(PROM_TOKEN);
  await page.locator('#login button[type="submit"]').click();
  await page.locator("#login-error", { hasText: "PERMISSION_DENIED" }).waitFor();
  await page.locator("#token").fill(ACME_TOKEN);
  await page.locator('#login button[type="submit"]').click();
  await page.locator("#live[data-state=live]").waitFor();
  assert.equal(await page.locator("#tenant").textContent(), "tenant acme");
  assert.ok(!(await page.locator("a.nav").isVisible()), "the dashboard is linked for operators only");

  // What the form offers is what the farm says it runs.
  const options = (await (
    await fetch(`${base}/api/tenant/options`, { headers: { authorization: `Bearer ${ACME_TOKEN}` } })
  ).json()) as { modes: { value: string }[]; caches: { value: string }[]; samplers: { value: string }[] };
  const values = (sel: string) =>
    page.locator(`${sel} option`).evaluateAll((os) => os.map((o) => (o as unknown as { value: string }).value));
  assert.deepEqual(
    await values("#mode"),
    options.modes.map((m) => m.value),
  );
  assert.deepEqual(
    await values("#sampler"),
    options.samplers.map((s) => s.value),
  );
  assert.deepEqual(
    await values("#cache"),
    options.caches.map((c) => c.value),
  );

  // The start image is dropped and shown cropped to the bucket the server names; the end image is chosen.
  await page.locator("#resolution").fill("64");
  await dropFile("#start-drop", "lighthouse.png", "image/png", startPng);
  await page.locator("#start-drop .drop-caption", { hasText: `640×360 → ${bucket.width}×${bucket.height}` }).waitFor();
  const crop = await page
    .locator("#start-drop canvas.crop")
    .evaluate(
      (c) => (c as unknown as { width: number; height: number }).width / (c as unknown as { height: number }).height,
    );
  assert.ok(Math.abs(crop - bucket.width / bucket.height) < 0.02, `the crop has the bucket's shape (${crop})`);
  await page.locator("#end-file").setInputFiles({ name: "night.png", mimeType: "image/png", buffer: endPng });
  await page.locator("#end-drop .drop-caption", { hasText: `→ ${bucket.width}×${bucket.height}` }).waitFor();
  // A keyframe at 2.5 s, its image shown cropped to the start image's size as the end image is.
  await page.locator("#add-keyframe").click();
  const keyframe = page.locator(".keyframe-row").first();
  await keyframe.locator(".keyframe-time").fill("2.5");
  await keyframe
    .locator("input[type=file]")
    .setInputFiles({ name: "beam.png", mimeType: "image/png", buffer: keyframePng });
  await keyframe.locator(".drop-caption", { hasText: `640×360 → ${bucket.width}×${bucket.height}` }).waitFor();
  assert.ok(await keyframe.locator("canvas.crop").isVisible());
  // Keyframes are for the inverted mode only: the vanilla mode hides them.
  await page.locator("#mode").selectOption("SAMPLING_MODE_VANILLA");
  assert.ok(!(await page.locator("#keyframes").isVisible()));
  await page.locator("#mode").selectOption("SAMPLING_MODE_INVERTED_ANTI_DRIFTING");
  assert.ok(await page.locator("#keyframes").isVisible());

  // Two timed prompts, a negative prompt, the length and sampling, a random seed.
  await page.locator(".prompt-text").first().fill("a lighthouse at dawn, waves rolling in");
  await page.locator("#add-prompt").click();
  await page.locator(".prompt-row").nth(1).locator(".prompt-at").fill("2");
  await page.locator(".prompt-text").nth(1).fill("night falls and the beam sweeps the sea");
  await page.locator("#negative").fill("blurry, low quality");
  await page.locator("#seconds").fill("5.5");
  await page.locator("#steps").fill("100");
  await page.locator("#guidance").fill("9");
  const before = await page.locator("#seed").inputValue();
  await page.locator("#random-seed").click();
  const seed = await page.locator("#seed").inputValue();
  assert.match(seed, /^\d+$/);
  assert.notEqual(seed, before);
  await page.locator("details.more summary").click();
  assert.ok(!(await page.locator("#magcache-k").isVisible()), "MagCache's fields only with MagCache");
  // VAE tiling: offered off (the farm's default), with the farm's words for what it trades.
  assert.equal(await page.locator("#vae-tiling").isChecked(), false);
  assert.match(
    (await page.locator("#vae-tiling-help").textContent()) ?? "",
    /lower peak GPU memory, slightly different frames/,
  );
  await page.locator("#vae-tiling").check();
  await shot("1-form.png");

  await page.locator("#submit").click();
  await page.locator("#viewer-job[data-job-id]").waitFor();
  jobId = (await page.locator("#viewer-job").getAttribute("data-job-id"))!;
  await page.locator(`#jobs li[data-job-id="${jobId}"]`, { hasText: "VAE tiled" }).waitFor();

  // Each finished section's preview plays while the job runs.
  await page.locator('#viewer .player[data-media="preview"]').waitFor({ timeout: 90_000 });
  const preview = await playViewer();
  const midway = await page.locator("#viewer-job").getAttribute("data-state");
  await shot("2-running.png");
  assert.equal(midway, "RUNNING", "a preview played while the job was running");
  assert.deepEqual(preview, { playing: true, width: bucket.width, height: bucket.height, error: null });

  // Then the whole video, and a link that downloads it.
  await viewerState("SUCCEEDED").waitFor({ timeout: 120_000 });
  await page.locator('#viewer .player[data-media="video"]').waitFor();
  assert.deepEqual(await playViewer(), { playing: true, width: bucket.width, height: bucket.height, error: null });
  await shot("3-finished.png");
  const [download] = await Promise.all([page.waitForEvent("download"), page.locator("#viewer a.download").click()]);
  assert.equal(download.suggestedFilename(), `${jobId}.mp4`);
  const saved = path.join(shots, "downloaded.mp4");
  await download.saveAs(saved);
  assert.equal((await readFile(saved)).subarray(4, 8).toString("latin1"), "ftyp", "an MP4 came down");

  // The farm rendered what the form asked.
  const job = await getJob(jobId);
  assert.equal(
    job.settings!.prompt,
    "[0s: a lighthouse at dawn, waves rolling in] [2s: night falls and the beam sweeps the sea]",
  );
  assert.equal(job.settings!.negativePrompt, "blurry, low quality");
  assert.equal(job.settings!.seed, BigInt(seed));
  assert.equal(job.settings!.steps, 100);
  assert.equal(job.settings!.guidanceScale, 9);
  assert.equal(job.settings!.mode, SamplingMode.SAMPLING_MODE_INVERTED_ANTI_DRIFTING);
  assert.equal(job.settings!.vaeTiling, true, "the job decodes in tiles, as the checkbox asked");
  assert.deepEqual([job.width, job.height, job.numFrames], [bucket.width, bucket.height, 165]);
  assert.deepEqual(job.keyframeTimes, [2.5]);
  assert.match((await page.locator("#viewer .job-meta").textContent())!, /keyframes at 2\.5 s/);

  // Re-submitted from my jobs: same settings, new seed; then cancelled from the viewer.
  await page.locator(`#jobs li[data-job-id="${jobId}"] button[data-action="resubmit"]`).click();
  await page.locator(`#viewer-job[data-job-id]:not([data-job-id="${jobId}"])`).waitFor();
  const againId = (await page.locator("#viewer-job").getAttribute("data-job-id"))!;
  const again = await getJob(againId);
  const { seed: newSeed, ...sameSettings } = again.settings!;
  const { seed: _oldSeed, ...firstSettings } = job.settings!;
  assert.notEqual(newSeed, job.settings!.seed);
  assert.deepEqual(sameSettings, firstSettings as Omit<RenderSettings, "seed">);
  assert.deepEqual(again.keyframeTimes, [2.5], "the re-submitted job keeps the keyframe");
  await page.locator('#viewer button[data-action="cancel"]').click();
  await viewerState("CANCELLED").waitFor({ timeout: 30_000 });
  await page.locator(`#jobs li[data-job-id="${againId}"][data-state="CANCELLED"]`).waitFor();
  await shot("4-resubmitted-cancelled.png");
});

test("a file that is no image is refused with the server's message, as gRPC SubmitJob gives it", async () => {
  await dropFile("#start-drop", "shopping.png", "image/png", BAD_IMAGE);
  await page.locator("#start-drop .drop-caption", { hasText: "the farm checks it when you submit" }).waitFor();
  await page.locator("#submit").click();
  await page.locator("#submit-error").waitFor();
  // The same bytes over gRPC: the page shows that status and message.
  const refusal = await new Promise<ServiceError>((resolve, reject) =>
    client.submitJob(
      {
        image: { source: { $case: "data", value: BAD_IMAGE } },
        keyframes: [],
        settings: { prompt: "x", length: { $case: "seconds", value: 1 }, mode: 0, resolution: 64 },
        bundle: "",
        priority: 0,
        idempotencyKey: "",
      } satisfies SubmitJobRequest,
      metadata(ACME_TOKEN),
      (e) => (e ? resolve(e) : reject(new Error("the bad image was accepted over gRPC"))),
    ),
  );
  assert.equal(refusal.code, STATUS_CODE.INVALID_ARGUMENT);
  assert.equal(await page.locator("#submit-error").textContent(), `INVALID_ARGUMENT: ${refusal.details}`);
  assert.equal(await page.locator("#start-drop").getAttribute("data-invalid"), "true");
  await shot("5-bad-image.png");
  // On a phone: the same page in one column, the refusal beside the form.
  await page.setViewportSize(PHONE);
  await shot("6-phone-bad-image.png");
  await dropFile("#start-drop", "lighthouse.png", "image/png", startPng);
  await page.locator("#start-drop .drop-caption", { hasText: `→ ${bucket.width}×${bucket.height}` }).waitFor();
  await page.locator(`#jobs li[data-job-id="${jobId}"] .row-main`).click();
  await page.locator('#viewer .player[data-media="video"]').waitFor();
  // A sampler's and a cache's own fields show with them, the cache's threshold at its default.
  await page.locator("#sampler").selectOption("SAMPLER_UNIPC");
  await page.locator("#cache").selectOption("magcache");
  assert.ok(await page.locator("#unipc-variant").isVisible());
  assert.ok(await page.locator("#magcache-k").isVisible());
  assert.equal(await page.locator("#cache-threshold").inputValue(), "0.1");
  await shot("7-phone.png");
  await page.setViewportSize(DESKTOP);
  assert.deepEqual(consoleErrors, [], "the page logged errors");
});

test("another tenant sees none of these jobs; the operators' dashboard still shows them", async () => {
  const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });
  assert.equal((await fetch(`${base}/api/tenant/jobs/${jobId}`, as(ZETA_TOKEN))).status, 404);
  assert.equal((await fetch(`${base}/api/tenant/jobs/${jobId}`, as(ACME_TOKEN))).status, 200);
  // zeta's live feed starts with its own jobs: none.
  const res = await fetch(`${base}/api/tenant/events`, as(ZETA_TOKEN));
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("event: jobs")) text += (await reader.read()).value ?? "";
  while (!/event: jobs\ndata: .*\n\n/.test(text)) text += (await reader.read()).value ?? "";
  await reader.cancel();
  assert.match(text, /event: jobs\ndata: \{"jobs":\[\]\}\n\n/);
  const state = (await (await fetch(`${base}/api/state`, as(OPS_TOKEN))).json()) as { jobs: { id: string }[] };
  assert.ok(
    state.jobs.some((j) => j.id === jobId),
    "the dashboard lists the tenant's job",
  );
  assert.equal(
    (await fetch(`${base}/api/state`, as(ACME_TOKEN))).status,
    401,
    "a tenant's token does not open the dashboard",
  );
});

test("a video dropped in the start image's place is extended: its bucket, context frames and frame rate", async () => {
  // 40 frames of 96x72 at 25 fps, H.264 in yuv420p (what a browser plays): the 64 bucket is 64x48.
  const [T, H, W] = [40, 72, 96];
  const data = new Uint8Array(T * H * W * 3);
  for (let i = 0; i < data.length; i++) data[i] = (i % (W * 3)) + Math.floor(i / (H * W * 3)) * 3;
  const file = path.join(shots, "clip.mp4");
  await writeMp4(new Tensor("uint8", [T, H, W, 3], data), file, { fps: 25, crf: 18 });
  const clip = await readFile(file);

  await page.locator("#end-drop .drop-clear").click();
  await page.locator("#resolution").fill("64");
  await dropFile("#start-drop", "clip.mp4", "video/mp4", clip);
  await page.locator("#start-drop .drop-caption", { hasText: "video 96×72 → 64×48" }).waitFor();
  assert.equal(await page.locator("#start-drop").getAttribute("data-kind"), "video");
  assert.ok(await page.locator("#context-frames").isVisible(), "context frames are asked for with a video");
  assert.equal(await page.locator("#context-frames").inputValue(), "5");
  assert.equal(await page.locator("#fps").inputValue(), "", "the video's own frame rate unless one is given");
  await page.locator("#context-frames").fill("3");
  await page.locator("#mode").selectOption("SAMPLING_MODE_VANILLA");
  await page.locator("#seconds").fill("1");
  await page.locator("#steps").fill("2");
  await page.locator("#sampler").selectOption("SAMPLER_FLOW_MATCH_EULER");
  await page.locator("#cache").selectOption("none");
  await page.locator(".prompt-row").nth(1).locator(".prompt-remove").click();
  await page.locator(".prompt-text").first().fill("the light keeps sweeping");
  // With VAE tiling too: the two job options go together (the decodes tile, the video's encode does not).
  await page.locator("#vae-tiling").check();
  await shot("8-video-form.png");

  await page.locator("#submit").click();
  await page.locator(`#viewer-job[data-job-id]:not([data-job-id="${jobId}"])`).waitFor();
  const videoJob = (await page.locator("#viewer-job").getAttribute("data-job-id"))!;
  await viewerState("SUCCEEDED").waitFor({ timeout: 120_000 });
  await page.locator('#viewer .player[data-media="video"]').waitFor();
  assert.deepEqual(await playViewer(), { playing: true, width: 64, height: 48, error: null });
  await shot("9-video-finished.png");
  assert.match(
    (await page.locator(`#jobs li[data-job-id="${videoJob}"]`).textContent())!,
    /extends a video · seed \d+ · VAE tiled/,
  );
  const job = await getJob(videoJob);
  assert.equal(job.settings!.contextFrames, 3);
  assert.equal(job.settings!.vaeTiling, true);
  assert.equal(job.settings!.fps, 25);
  assert.equal(job.settings!.mode, SamplingMode.SAMPLING_MODE_VANILLA);
  assert.deepEqual([job.width, job.height, job.numFrames], [64, 48, 25]);

  // Re-submitted: the same video and settings, a new seed.
  await page.locator(`#jobs li[data-job-id="${videoJob}"] button[data-action="resubmit"]`).click();
  await page.locator(`#viewer-job[data-job-id]:not([data-job-id="${videoJob}"])`).waitFor();
  const again = await getJob((await page.locator("#viewer-job").getAttribute("data-job-id"))!);
  assert.equal(again.settings!.contextFrames, 3);
  assert.equal(again.settings!.vaeTiling, true);
  assert.notEqual(again.settings!.seed, job.settings!.seed);
  await page.locator('#viewer button[data-action="cancel"]').click();
  await viewerState("CANCELLED").waitFor({ timeout: 30_000 });
  assert.deepEqual(consoleErrors, [], "the page logged errors");
});
