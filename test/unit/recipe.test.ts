/**
 * Recipes: made from validated parameters in a fixed form, parsed strictly (another format or
 * version, an unknown or missing field: INVALID_ARGUMENT), checked against the farm's bundle
 * (FAILED_PRECONDITION naming both digests) and the images given (INVALID_ARGUMENT naming both
 * SHA-256); the bundle digest is stable and changes with any file; the frames archive round-trips.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { cp, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { FarmError } from "../../shared/errors.js";
import {
  checkRecipeImages,
  makeRecipe,
  parseRecipe,
  recipeText,
  sha256Hex,
  type Recipe,
} from "../../shared/job/recipe.js";
import { validateRenderParams } from "../../shared/job/render-params.js";
import { recipeRequest } from "../../coordinator/api/recipe-request.js";
import { jobOutputOf } from "../../coordinator/api/job-mapping.js";
import { recipeSidecar, videoFormatFor } from "../../coordinator/cli/output-options.js";
import {
  Sampler,
  SamplingMode,
  UnipcVariant,
  VideoFormat,
  type SubmitJobRequest,
} from "../../proto/gen/framefarm/v1/jobs.js";
import { openBundle } from "../../gpu-node/runtime/bundle.js";
import { WHOLE_FILE_LIMIT, bundleDigest, fileHash } from "../../gpu-node/runtime/bundle-digest.js";
import { open } from "node:fs/promises";
import { extractPngTar, framesToPngTar } from "../../shared/video/frames-archive.js";
import { Tensor } from "../../shared/tensor/tensor.js";
import sharp from "sharp";
import { tinyBundleDir } from "../support/paths.js";

const DIGEST = `sha256:${"a".repeat(64)}`;
const image = new Uint8Array([1, 2, 3]);
const endImage = new Uint8Array([4, 5, 6]);

function sample(over: Partial<Parameters<typeof validateRenderParams>[0]> = {}): Recipe {
  const params = validateRenderParams(
    {
      prompt: "a lighthouse",
      negativePrompt: "blur",
      numFrames: 40,
      steps: 3,
      trueCfgScale: 2,
      seed: "18446744073709551615",
      resolution: 64,
      fps: 24,
      ...over,
    },
    { samplingType: "inverted_anti_drifting", latentWindowSize: 9 },
  );
  return makeRecipe({
    params,
    size: { height: 48, width: 64 },
    format: "webm",
    images: { start: image, end: null },
    bundle: { name: "tiny", digest: DIGEST },
    framefarmVersion: "0.1.0",
  });
}

const status = (s: string, message?: RegExp) => (err: unknown) => {
  assert.ok(err instanceof FarmError, String(err));
  assert.equal(err.status, s, err.message);
  if (message !== undefined) assert.match(err.message, message);
  return true;
};

test("a recipe holds every setting, the images' SHA-256 and the bundle digest, and reads back whole", () => {
  const r = sample();
  assert.equal(r.seed, "18446744073709551615");
  assert.equal(r.sampler, "flow_match_euler");
  assert.deepEqual([r.unipc_variant, r.cfg_rescale, r.section_prompts, r.prompt_blend_sections], [null, 0, null, 0]);
  assert.equal(r.cache, "none");
  assert.deepEqual(r.loras, []);
  assert.equal(r.resolution, 64);
  assert.deepEqual([r.width, r.height, r.num_frames, r.fps, r.steps, r.true_cfg_scale], [64, 48, 40, 24, 3, 2]);
  assert.equal(r.images.start_sha256, sha256Hex(image));
  assert.equal(r.images.end_sha256, null);
  assert.deepEqual(r.video, { format: "webm", crf: 16, lossless: false });
  assert.equal(r.vae_tiling, false);
  assert.deepEqual(parseRecipe(recipeText(r)), r);
  // Same job, same bytes.
  assert.equal(recipeText(sample()), recipeText(r));
});

test("a UniPC recipe with section prompts renders again with the same sampler settings", () => {
  const r = sample({
    prompt: "",
    sampler: "unipc",
    unipcVariant: "bh2",
    cfgRescale: 0.5,
    sectionPrompts: ["a", "b"],
    promptBlendSections: 1,
    numFrames: 60,
  });
  assert.deepEqual(
    [r.sampler, r.unipc_variant, r.cfg_rescale, r.section_prompts, r.prompt_blend_sections],
    ["unipc", "bh2", 0.5, ["a", "b"], 1],
  );
  assert.deepEqual(parseRecipe(recipeText(r)), r);
  const again = recipeRequest({ recipe: recipeText(r) } as SubmitJobRequest, { name: "tiny", digest: DIGEST });
  assert.ok(again !== null);
  assert.equal(again.settings.sampler, Sampler.SAMPLER_UNIPC);
  assert.deepEqual(again.settings.unipc, { variant: UnipcVariant.UNIPC_VARIANT_BH2, cfgRescale: 0.5 });
  assert.deepEqual(again.settings.promptSchedule, { sectionPrompts: ["a", "b"], blendSections: 1 });
});

test("parsing refuses other formats, other versions, unknown and missing fields", () => {
  const text = (edit: (o: Record<string, unknown>) => void): string => {
    const o = JSON.parse(recipeText(sample())) as Record<string, unknown>;
    edit(o);
    return JSON.stringify(o);
  };
  assert.throws(() => parseRecipe("not json"), status("INVALID_ARGUMENT", /not valid JSON/));
  assert.throws(() => parseRecipe("[]"), status("INVALID_ARGUMENT"));
  assert.throws(() => parseRecipe(text((o) => (o["format"] = "other"))), status("INVALID_ARGUMENT", /format/));
  assert.throws(
    () => parseRecipe(text((o) => (o["version"] = 2))),
    status("INVALID_ARGUMENT", /version 2 is not supported/),
  );
  assert.throws(() => parseRecipe(text((o) => (o["styles"] = []))), status("INVALID_ARGUMENT", /unknown field styles/));
  assert.throws(
    () => parseRecipe(text((o) => ((o["video"] as Record<string, unknown>)["bitrate"] = 1))),
    status("INVALID_ARGUMENT", /unknown field video\.bitrate/),
  );
  assert.throws(() => parseRecipe(text((o) => delete o["seed"])), status("INVALID_ARGUMENT", /seed is missing/));
  assert.throws(() => parseRecipe(text((o) => (o["steps"] = "25"))), status("INVALID_ARGUMENT", /steps/));
  assert.throws(() => parseRecipe(text((o) => (o["mode"] = "sideways"))), status("INVALID_ARGUMENT", /mode/));
  assert.throws(
    () => parseRecipe(text((o) => ((o["bundle"] as Record<string, unknown>)["digest"] = "md5:1"))),
    status("INVALID_ARGUMENT", /bundle\.digest/),
  );
  assert.throws(
    () => parseRecipe(text((o) => (o["loras"] = [{ name: "x", weight: 1, scale: 2 }]))),
    status("INVALID_ARGUMENT", /loras\[0\]\.scale/),
  );
});

test("the images must be the recipe's", () => {
  const r = sample();
  checkRecipeImages(r, image, null);
  assert.throws(
    () => checkRecipeImages(r, endImage, null),
    status("INVALID_ARGUMENT", new RegExp(`${sha256Hex(endImage)}.*${sha256Hex(image)}`)),
  );
  assert.throws(() => checkRecipeImages(r, image, endImage), status("INVALID_ARGUMENT", /without an end image/));
  const withEnd = { ...r, images: { start_sha256: sha256Hex(image), end_sha256: sha256Hex(endImage) } };
  assert.throws(() => checkRecipeImages(withEnd, image, null), status("INVALID_ARGUMENT", /end image/));
  assert.throws(
    () => checkRecipeImages(withEnd, image, image),
    status("INVALID_ARGUMENT", /end image is not the recipe's/),
  );
  checkRecipeImages(withEnd, image, endImage);
});

test("a recipe extending a video names it by SHA-256 with its context frames; the video must be given again", () => {
  const clip = new Uint8Array([7, 8, 9]);
  const params = validateRenderParams(
    {
      prompt: "on and on",
      numFrames: 40,
      resolution: 64,
      contextFrames: 3,
      inputVideo: { frames: 50, width: 96, height: 64, fps: 25 },
    },
    { samplingType: "vanilla", latentWindowSize: 9 },
  );
  assert.equal(params.fps, 25, "a video's frame rate is the output's unless fps is given");
  const r = makeRecipe({
    params,
    size: { height: 48, width: 64 },
    format: "mp4",
    images: { start: null, end: null, video: clip },
    bundle: { name: "tiny", digest: DIGEST },
    framefarmVersion: "0.1.0",
  });
  assert.deepEqual(r.images, { start_sha256: null, end_sha256: null, video_sha256: sha256Hex(clip) });
  assert.equal(r.context_frames, 3);
  assert.equal(r.fps, 25);
  assert.deepEqual(parseRecipe(recipeText(r)), r);
  checkRecipeImages(r, null, null, [], clip);
  assert.throws(
    () => checkRecipeImages(r, image, null),
    status("INVALID_ARGUMENT", /extends a video: give the same video/),
  );
  assert.throws(
    () => checkRecipeImages(r, null, null, [], image),
    status("INVALID_ARGUMENT", new RegExp(`video is not the recipe's: its SHA-256 is ${sha256Hex(image)}`)),
  );
  assert.throws(() => checkRecipeImages(sample(), null, null, [], clip), status("INVALID_ARGUMENT", /not a video/));
  // Both a start image and a video, or context frames without a video, are no recipe.
  const both = { ...r, images: { ...r.images, start_sha256: sha256Hex(image) } };
  assert.throws(() => parseRecipe(recipeText(both)), status("INVALID_ARGUMENT", /not both or neither/));
  const stray = { ...sample(), context_frames: 3 };
  assert.throws(() => parseRecipe(recipeText(stray)), status("INVALID_ARGUMENT", /context_frames goes with/));
  // Submitted again, the recipe carries its context frames.
  const again = recipeRequest(
    {
      image: undefined,
      keyframes: [],
      settings: undefined,
      bundle: "",
      priority: 0,
      idempotencyKey: "",
      recipe: recipeText(r),
    },
    { name: "tiny", digest: DIGEST },
  );
  assert.equal(again!.settings.contextFrames, 3);
  assert.equal(again!.settings.fps, 25);
});

const request = (recipe: string, settings?: SubmitJobRequest["settings"]): SubmitJobRequest => ({
  image: undefined,
  settings,
  bundle: "",
  priority: 0,
  idempotencyKey: "",
  keyframes: [],
  recipe,
});

test("a recipe submission takes the recipe's settings, on the recipe's bundle only", () => {
  const r = sample();
  const farm = { name: "tiny", digest: DIGEST };
  assert.equal(recipeRequest(request(""), farm), null);
  const got = recipeRequest(request(recipeText(r)), farm)!;
  assert.deepEqual(got.recipe, r);
  const s = got.settings;
  assert.equal(s.prompt, "a lighthouse");
  assert.equal(s.negativePrompt, "blur");
  assert.deepEqual(s.length, { $case: "numFrames", value: 40 });
  assert.equal(s.mode, SamplingMode.SAMPLING_MODE_INVERTED_ANTI_DRIFTING);
  assert.equal(s.seed, 18446744073709551615n);
  assert.equal(s.resolution, 64);
  assert.equal(s.format, VideoFormat.VIDEO_FORMAT_WEBM);
  assert.deepEqual(jobOutputOf(s), { format: "webm", saveFrames: false });

  // Output options may be changed; nothing else.
  const out = recipeRequest(
    request(recipeText(r), { prompt: "", mode: 0, format: VideoFormat.VIDEO_FORMAT_MP4, saveFrames: true, crf: 20 }),
    farm,
  )!.settings;
  assert.deepEqual([out.format, out.saveFrames, out.crf], [VideoFormat.VIDEO_FORMAT_MP4, true, 20]);
  assert.throws(
    () => recipeRequest(request(recipeText(r), { prompt: "other", mode: 0 }), farm),
    status("INVALID_ARGUMENT", /settings\.prompt comes from the recipe/),
  );
  assert.throws(
    () => recipeRequest(request(recipeText(r), { prompt: "", mode: 0, steps: 4 }), farm),
    status("INVALID_ARGUMENT", /settings\.steps/),
  );

  const other = `sha256:${"b".repeat(64)}`;
  assert.throws(
    () => recipeRequest(request(recipeText(r)), { name: "big", digest: other }),
    status("FAILED_PRECONDITION", new RegExp(`${DIGEST}.*${other}`)),
  );
  assert.throws(
    () => recipeRequest(request(recipeText(r)), { name: "big", digest: undefined }),
    status("FAILED_PRECONDITION"),
  );
  assert.throws(
    () => recipeRequest(request(recipeText({ ...r, loras: [{ name: "style", weight: 0.8 }] })), farm),
    status("FAILED_PRECONDITION", /LoRA/),
  );
  assert.throws(
    () => jobOutputOf({ prompt: "", mode: 0, format: 7 as VideoFormat }),
    status("INVALID_ARGUMENT", /VideoFormat/),
  );
});

test("the output name picks the format and names the recipe beside it", () => {
  assert.equal(videoFormatFor(undefined, "out.webm"), VideoFormat.VIDEO_FORMAT_WEBM);
  assert.equal(videoFormatFor(undefined, "out.MP4"), VideoFormat.VIDEO_FORMAT_MP4);
  assert.equal(videoFormatFor(undefined, "out.mov"), VideoFormat.VIDEO_FORMAT_UNSPECIFIED);
  assert.equal(videoFormatFor("webm", "out.mkv"), VideoFormat.VIDEO_FORMAT_WEBM);
  assert.throws(() => videoFormatFor("webm", "out.mp4"), status("INVALID_ARGUMENT"));
  assert.throws(() => videoFormatFor("gif", undefined), status("INVALID_ARGUMENT", /mp4 or webm/));
  assert.equal(recipeSidecar("/a/out.mp4"), "/a/out.recipe.json");
  assert.equal(recipeSidecar("/a/out.webm"), "/a/out.recipe.json");
  assert.equal(recipeSidecar("/a/out"), "/a/out.recipe.json");
});

test("the bundle digest is stable, once per bundle, and changes with any file", async () => {
  const a = await openBundle(tinyBundleDir());
  const digest = await bundleDigest(a);
  assert.match(digest, /^sha256:[0-9a-f]{64}$/);
  assert.equal(await bundleDigest(a), digest);
  assert.equal(await bundleDigest(await openBundle(tinyBundleDir())), digest, "the same files give the same digest");
  const tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-digest-"));
  try {
    await cp(tinyBundleDir(), tmp, { recursive: true });
    assert.equal(await bundleDigest(await openBundle(tmp)), digest, "the folder's place does not count");
    const tok = path.join(tmp, a.manifest.text_encoder_2.tokenizer_config);
    await writeFile(tok, `${await readFile(tok, "utf8")} `);
    assert.notEqual(await bundleDigest(await openBundle(tmp)), digest, "a changed tokenizer config changes the digest");
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
});

test("a weight file over 64 MiB is hashed by its size and samples, and a change there shows", async () => {
  const tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-digest-"));
  try {
    const big = path.join(tmp, "weights.bin");
    const size = WHOLE_FILE_LIMIT + 3 * 2 ** 20;
    const f = await open(big, "w");
    await f.truncate(size); // sparse: no disk space, reads as zeros
    await f.close();
    const base = await fileHash(big);
    assert.equal(base.size, size);
    const poke = async (offset: number): Promise<string> => {
      const h = await open(big, "r+");
      await h.write(Buffer.from([(offset % 251) + 1]), 0, 1, offset);
      await h.close();
      return (await fileHash(big)).sha256;
    };
    const first = await poke(10); // inside the first sample
    assert.notEqual(first, base.sha256);
    assert.notEqual(await poke(size - 1), first, "the last byte is sampled");
    const f2 = await open(big, "r+");
    await f2.truncate(size + 1);
    await f2.close();
    assert.equal((await fileHash(big)).size, size + 1);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
});

test("frames round-trip through the PNG archive exactly", async () => {
  const [t, h, w] = [3, 16, 32];
  const data = new Uint8Array(t * h * w * 3).map((_, i) => (i * 37) % 256);
  const archive = await framesToPngTar(new Tensor("uint8", [t, h, w, 3], data));
  assert.deepEqual(
    await framesToPngTar(new Tensor("uint8", [t, h, w, 3], data)),
    archive,
    "the same frames give the same archive",
  );
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-frames-"));
  try {
    assert.equal(await extractPngTar(archive, dir), 3);
    assert.deepEqual((await readdir(dir)).sort(), ["frame_00000.png", "frame_00001.png", "frame_00002.png"]);
    for (let i = 0; i < t; i++) {
      const raw = await sharp(path.join(dir, `frame_0000${i}.png`))
        .raw()
        .toBuffer();
      assert.deepEqual(new Uint8Array(raw), data.subarray(i * h * w * 3, (i + 1) * h * w * 3));
    }
    await assert.rejects(extractPngTar(archive.subarray(0, 700), dir), status("DATA_LOSS"));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("VAE tiling is recorded, read back and rendered again; a recipe without it reads as untiled", () => {
  const r = sample({ vaeTiling: true });
  assert.equal(r.vae_tiling, true);
  assert.match(recipeText(r), /"vae_tiling": true/);
  assert.deepEqual(parseRecipe(recipeText(r)), r);
  const farm = { name: "tiny", digest: DIGEST };
  assert.equal(recipeRequest(request(recipeText(r)), farm)!.settings.vaeTiling, true);
  assert.equal(recipeRequest(request(recipeText(sample())), farm)!.settings.vaeTiling, false);
  // Older recipes have no vae_tiling: their videos were decoded untiled (the default then).
  const older = JSON.parse(recipeText(sample())) as Record<string, unknown>;
  delete older["vae_tiling"];
  assert.equal(parseRecipe(JSON.stringify(older)).vae_tiling, false);
  assert.equal(recipeRequest(request(JSON.stringify(older)), farm)!.settings.vaeTiling, false);
  // It comes from the recipe: a submission may not turn it on or off beside one.
  assert.throws(
    () => recipeRequest(request(recipeText(sample()), { prompt: "", mode: 0, vaeTiling: true }), farm),
    status("INVALID_ARGUMENT", /settings\.vaeTiling comes from the recipe/),
  );
  for (const v of ["true", 1, null])
    assert.throws(
      () => parseRecipe(JSON.stringify({ ...older, vae_tiling: v })),
      status("INVALID_ARGUMENT", /vae_tiling must be true or false/),
    );
});
