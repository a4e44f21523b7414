/**
 * Bad input, as a table, against a coordinator's gRPC API on real servers (nats-server, s3rver):
 * each row is a request (typed, or hand-encoded bytes through a generic client), the gRPC status
 * it must get and a pattern its message must match. After every row the job KV, the idempotency
 * KV and the object store must hold exactly what they held before: nothing partial is left.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { crc32, deflateSync } from "node:zlib";
import {
  credentials,
  makeGenericClientConstructor,
  Metadata,
  status,
  type Client,
  type ServiceError,
} from "@grpc/grpc-js";
import {
  JobServiceClient,
  RenderSettings,
  type JobState,
  SubmitJobRequest,
  type Job,
  type ImageInput,
  type Keyframe,
  type ListJobsRequest,
  type SubmitJobResponse,
} from "../../proto/gen/framefarm/v1/jobs.js";
import { TokenAuth } from "../../coordinator/auth/tokens.js";
import { MAX_REQUEST_BYTES } from "../../coordinator/api/server.js";
import { startTestFarm, type TestFarm } from "../support/farm.js";
import { repoRoot } from "../support/paths.js";
import { unary } from "../support/grpc.js";
import { makeRecipe, recipeText } from "../../shared/job/recipe.js";
import { validateRenderParams } from "../../shared/job/render-params.js";

const TOKEN = "acme-token-0123456789abcdef";
const OTHER_TOKEN = "other-token-0123456789abcdef";
let farm: TestFarm;
let client: JobServiceClient;
let raw: Client & Record<string, (req: Buffer, md: Metadata, cb: (e: ServiceError | null, r?: Buffer) => void) => void>;
const png = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));
// 50 frames at 64x64 (13 latents): a video to extend.
const mp4 = await readFile(
  path.join(repoRoot(), "test", "fixtures", "reference-cases", "video_extend_vanilla_video.mp4"),
);

before(async () => {
  farm = await startTestFarm({
    auth: TokenAuth.fromEntries([
      { tenant: "acme", token: TOKEN },
      { tenant: "other", token: OTHER_TOKEN },
    ]),
  });
  client = new JobServiceClient(farm.address, credentials.createInsecure());
  const identity = (b: Buffer): Buffer => b;
  const method = (name: string) => ({
    path: `/framefarm.v1.JobService/${name}`,
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  });
  const Raw = makeGenericClientConstructor(
    { SubmitJob: method("SubmitJob"), GetJob: method("GetJob"), ListJobs: method("ListJobs") },
    "JobService",
  );
  raw = new Raw(farm.address, credentials.createInsecure()) as typeof raw;
  // Uploads present before the table: part of the baseline every row is compared with.
  await farm.store.put("uploads/acme/corrupt.png", Buffer.from("\x89PNG\r\n\x1a\n garbage"));
  await farm.store.put("uploads/other/ok.png", png);
});

after(async () => {
  client.close();
  raw.close();
  await farm.stop();
});

// --- requests -------------------------------------------------------------------------------

const auth = (token: string | null = TOKEN, scheme = "Bearer"): Metadata => {
  const md = new Metadata();
  if (token !== null) md.set("authorization", `${scheme} ${token}`);
  return md;
};

const settings = (over: object = {}): RenderSettings =>
  ({
    prompt: "a lighthouse",
    length: { $case: "numFrames", value: 20 },
    mode: 0,
    steps: 2,
    resolution: 64,
    ...over,
  }) as RenderSettings;
const data = (b: Uint8Array) => ({
  source: { $case: "data" as const, value: Buffer.from(b.buffer, b.byteOffset, b.byteLength) },
});
const key = (k: string) => ({ source: { $case: "objectKey" as const, value: k } });
const request = (over: Partial<SubmitJobRequest> = {}): SubmitJobRequest => ({
  image: data(png),
  settings: settings(),
  bundle: "",
  priority: 0,
  idempotencyKey: "",
  keyframes: [],
  ...over,
});
const kf = (timeSeconds: number, image: ImageInput = data(png)): Keyframe => ({ timeSeconds, image });
const submit = (over: Partial<SubmitJobRequest> = {}, md = auth()): Promise<SubmitJobResponse> =>
  unary((cb) => client.submitJob(request(over), md, cb));
const getJob = (id: string, md = auth()): Promise<unknown> => unary((cb) => client.getJob({ id }, md, cb));
const cancelJob = (id: string): Promise<unknown> => unary((cb) => client.cancelJob({ id }, auth(), cb));
const listJobs = (req: Partial<ListJobsRequest>): Promise<unknown> =>
  unary((cb) => client.listJobs({ states: [], pageSize: 0, pageToken: "", ...req }, auth(), cb));
const watchJob = (id: string): Promise<Job[]> =>
  new Promise((resolve, reject) => {
    const got: Job[] = [];
    const s = client.watchJob({ id }, auth());
    s.on("data", (e: { job?: Job }) => got.push(e.job!));
    s.on("end", () => resolve(got));
    s.on("error", reject);
  });
const rawCall = (method: "SubmitJob" | "GetJob" | "ListJobs", bytes: Uint8Array): Promise<Buffer> =>
  unary((cb) => raw[method]!(Buffer.from(bytes), auth(), cb));

// --- hand-made protobuf and images ------------------------------------------------------------

const varint = (n: number): number[] => {
  const out: number[] = [];
  for (; n >= 0x80; n = Math.floor(n / 128)) out.push((n % 128) | 0x80);
  out.push(n);
  return out;
};
const lenField = (no: number, bytes: Uint8Array | number[]): Buffer =>
  Buffer.from([...varint(no * 8 + 2), ...varint(bytes.length), ...bytes]);
const varintField = (no: number, v: number): Buffer => Buffer.from([...varint(no * 8), ...varint(v)]);
const encSettings = (s: RenderSettings): Buffer => Buffer.from(RenderSettings.encode(s).finish());
const encSubmit = (r: SubmitJobRequest): Buffer => Buffer.from(SubmitJobRequest.encode(r).finish());
/** A SubmitJobRequest whose settings are the given bytes (a valid image and nothing else). */
const submitWithSettings = (settingsBytes: Uint8Array): Buffer =>
  Buffer.concat([encSubmit(request({ settings: undefined })), lenField(3, settingsBytes)]);
const INVALID_UTF8 = [0x61, 0xff, 0xfe, 0x62];
/** A recipe's JSON with one field replaced (refused while parsing, before its bundle is looked at). */
function recipeWith(field: string, value: unknown): string {
  const params = validateRenderParams(
    { prompt: "a", numFrames: 20, resolution: 64 },
    {
      samplingType: "inverted_anti_drifting",
      latentWindowSize: 9,
    },
  );
  const recipe = makeRecipe({
    params,
    size: { height: 48, width: 64 },
    format: "mp4",
    images: { start: png, end: null },
    bundle: { name: "tiny", digest: `sha256:${"0".repeat(64)}` },
    framefarmVersion: "0.1.0",
  });
  return recipeText({ ...recipe, [field]: value } as typeof recipe);
}

function pngChunk(type: string, body: Uint8Array): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(body.length, 0);
  head.write(type, 4, "latin1");
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), body])), 0);
  return Buffer.concat([head, body, crc]);
}
/** A PNG header claiming width x height, with a little real pixel data (a decompression bomb). */
function bombPng(width: number, height: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([
    png.subarray(0, 8),
    pngChunk("IHDR", ihdr),
    pngChunk("IDAT", deflateSync(Buffer.alloc(4 * 1024 * 1024))),
    pngChunk("IEND", Buffer.alloc(0)),
  ]);
}
/** demo.png with the middle of its image data overwritten. */
function corruptPng(): Buffer {
  const b = Buffer.from(png);
  const idat = b.indexOf("IDAT");
  for (let i = idat + 40; i < Math.min(b.length - 16, idat + 400); i++) b[i] = (b[i]! * 7 + 13) & 0xff;
  return b;
}

// --- the table ----------------------------------------------------------------------------------

interface Row {
  name: string;
  call: () => Promise<unknown>;
  code: status;
  message: RegExp;
}

const rows: Row[] = [
  // authentication
  {
    name: "no token",
    call: () => submit({}, auth(null)),
    code: status.UNAUTHENTICATED,
    message: /no credentials: send the header authorization: Bearer/,
  },
  {
    name: "unknown token",
    call: () => submit({}, auth("not-a-token-of-this-farm-xyz")),
    code: status.UNAUTHENTICATED,
    message: /bearer token is not valid/,
  },
  {
    name: "Basic instead of Bearer",
    call: () => submit({}, auth(TOKEN, "Basic")),
    code: status.UNAUTHENTICATED,
    message: /must be: Bearer <token>/,
  },
  // images
  {
    name: "image missing",
    call: () => submit({ image: undefined }),
    code: status.INVALID_ARGUMENT,
    message: /image is missing/,
  },
  {
    name: "zero-byte image",
    call: () => submit({ image: data(new Uint8Array(0)) }),
    code: status.INVALID_ARGUMENT,
    message: /image is empty \(0 bytes\)/,
  },
  {
    name: "non-image file",
    call: () => submit({ image: data(Buffer.from("GIF? no, a text file")) }),
    code: status.INVALID_ARGUMENT,
    message: /image is not a readable image/,
  },
  {
    name: "truncated PNG",
    call: () => submit({ image: data(png.subarray(0, Math.floor(png.length / 2))) }),
    code: status.INVALID_ARGUMENT,
    message: /image cannot be decoded \(corrupt or truncated\?\)/,
  },
  {
    name: "corrupt PNG data",
    call: () => submit({ image: data(corruptPng()) }),
    code: status.INVALID_ARGUMENT,
    message: /image cannot be decoded \(corrupt or truncated\?\)/,
  },
  {
    name: "decompression bomb 50000x50000 PNG",
    call: () => submit({ image: data(bombPng(50_000, 50_000)) }),
    code: status.RESOURCE_EXHAUSTED,
    message: /image is 50000x50000 pixels; the limit is 40000000 pixels/,
  },
  {
    name: "image wider than 16384",
    call: () => submit({ image: data(bombPng(20_000, 16)) }),
    code: status.RESOURCE_EXHAUSTED,
    message: /20000x16 pixels; .* 16384 per side/,
  },
  {
    name: "image file over 50 MiB",
    call: () => submit({ image: data(Buffer.alloc(51 * 1024 * 1024)) }),
    code: status.RESOURCE_EXHAUSTED,
    message: /image is 53477376 bytes; the limit is 52428800 bytes/,
  },
  {
    name: "corrupt end image after a good image",
    call: () => submit({ endImage: data(png.subarray(0, 100)) }),
    code: status.INVALID_ARGUMENT,
    message: /end image cannot be decoded|end image is not a readable image/,
  },
  // videos to extend
  {
    name: "an image and a video",
    call: () => submit({ video: data(mp4) }),
    code: status.INVALID_ARGUMENT,
    message: /give a start image or a video to extend, not both/,
  },
  {
    name: "video that is a PNG",
    call: () => submit({ image: undefined, video: data(png) }),
    code: status.INVALID_ARGUMENT,
    message: /^video is a still image \(png_pipe\), not a video/,
  },
  {
    name: "video that is a text file",
    call: () => submit({ image: undefined, video: data(Buffer.from("no frames here, only words ".repeat(30))) }),
    code: status.INVALID_ARGUMENT,
    message: /^video is not a video ffmpeg can read/,
  },
  {
    name: "truncated video",
    call: () => submit({ image: undefined, video: data(mp4.subarray(0, Math.floor(mp4.length / 2))) }),
    code: status.INVALID_ARGUMENT,
    message: /^video (is not a video ffmpeg can read|cannot be decoded \(corrupt or truncated\?\))/,
  },
  {
    name: "zero-byte video",
    call: () => submit({ image: undefined, video: data(new Uint8Array(0)) }),
    code: status.INVALID_ARGUMENT,
    message: /^video is empty \(0 bytes\)/,
  },
  {
    name: "video file over 50 MiB",
    call: () => submit({ image: undefined, video: data(Buffer.alloc(51 * 1024 * 1024)) }),
    code: status.RESOURCE_EXHAUSTED,
    message: /video is 53477376 bytes; the limit is 52428800 bytes/,
  },
  {
    name: "video too short for the context",
    call: () => submit({ image: undefined, video: data(mp4), settings: settings({ latentWindowSize: 20 }) }),
    code: status.INVALID_ARGUMENT,
    message:
      /the video has 50 frames, too short for the context: 5 context frames with window 20 need 20 latent frames/,
  },
  {
    name: "context frames out of range",
    call: () => submit({ image: undefined, video: data(mp4), settings: settings({ contextFrames: 11 }) }),
    code: status.INVALID_ARGUMENT,
    message: /context frames must be an integer from 2 to 10, got 11/,
  },
  {
    name: "context frames without a video",
    call: () => submit({ settings: settings({ contextFrames: 5 }) }),
    code: status.INVALID_ARGUMENT,
    message: /context frames need a video to extend/,
  },
  {
    name: "video extended with an end image in vanilla mode",
    call: () => submit({ image: undefined, video: data(mp4), endImage: data(png), settings: settings({ mode: 2 }) }),
    code: status.INVALID_ARGUMENT,
    message: /an end image needs inverted/,
  },
  {
    name: "video object key of another tenant",
    call: () => submit({ image: undefined, video: key("uploads/other/clip.mp4") }),
    code: status.PERMISSION_DENIED,
    message: /video object key must be under uploads\/acme\//,
  },
  // object keys
  {
    name: "object key with ..",
    call: () => submit({ image: key("uploads/acme/../../etc/passwd") }),
    code: status.INVALID_ARGUMENT,
    message: /invalid object key "uploads\/acme\/..\/..\/etc\/passwd"/,
  },
  {
    name: "absolute object key",
    call: () => submit({ image: key("/etc/passwd") }),
    code: status.INVALID_ARGUMENT,
    message: /invalid object key "\/etc\/passwd"/,
  },
  {
    name: "object key outside uploads/",
    call: () => submit({ image: key("jobs/x/inputs/first-image") }),
    code: status.PERMISSION_DENIED,
    message: /image object key must be under uploads\/acme\//,
  },
  {
    name: "another tenant's upload",
    call: () => submit({ image: key("uploads/other/ok.png") }),
    code: status.PERMISSION_DENIED,
    message: /must be under uploads\/acme\/, got "uploads\/other\/ok.png"/,
  },
  {
    name: "upload that does not exist",
    call: () => submit({ image: key("uploads/acme/nope.png") }),
    code: status.NOT_FOUND,
    message: /object uploads\/acme\/nope.png does not exist/,
  },
  {
    name: "upload that is not an image",
    call: () => submit({ image: key("uploads/acme/corrupt.png") }),
    code: status.INVALID_ARGUMENT,
    message: /image is not a readable image/,
  },
  // settings
  {
    name: "settings missing",
    call: () => submit({ settings: undefined }),
    code: status.INVALID_ARGUMENT,
    message: /settings are missing/,
  },
  {
    name: "empty prompt",
    call: () => submit({ settings: settings({ prompt: "  " }) }),
    code: status.INVALID_ARGUMENT,
    message: /prompt must not be empty/,
  },
  // lllyasviel's sampler and prompts that change over time (20 frames at 30 fps: 0.667 s, 1 section).
  {
    name: "unknown sampler",
    call: () => submit({ settings: settings({ sampler: 7 }) }),
    code: status.INVALID_ARGUMENT,
    message: /sampler 7 is not a Sampler/,
  },
  {
    name: "unknown UniPC variant",
    call: () => submit({ settings: settings({ sampler: 2, unipc: { variant: 9 } }) }),
    code: status.INVALID_ARGUMENT,
    message: /unipc.variant 9 is not a UnipcVariant/,
  },
  {
    name: "UniPC variant with Euler",
    call: () => submit({ settings: settings({ unipc: { variant: 2 } }) }),
    code: status.INVALID_ARGUMENT,
    message: /UniPC variant needs --sampler unipc/,
  },
  {
    name: "cfg rescale with Euler",
    call: () => submit({ settings: settings({ unipc: { variant: 0, cfgRescale: 0.5 } }) }),
    code: status.INVALID_ARGUMENT,
    message: /cfg rescale needs --sampler unipc/,
  },
  {
    name: "cfg rescale above 1",
    call: () => submit({ settings: settings({ sampler: 2, unipc: { variant: 0, cfgRescale: 2 } }) }),
    code: status.INVALID_ARGUMENT,
    message: /cfg rescale must be between 0 and 1, got 2/,
  },
  // TeaCache (--cache teacache): the name and threshold, checked with the same code as the CLI's.
  {
    name: "unknown step cache",
    call: () => submit({ settings: settings({ cache: "fbcache" }) }),
    code: status.INVALID_ARGUMENT,
    message: /cache must be none, teacache .*magcache .*got "fbcache"/,
  },
  {
    name: "TeaCache threshold of 0",
    call: () => submit({ settings: settings({ cache: "teacache", cacheThreshold: 0 }) }),
    code: status.INVALID_ARGUMENT,
    message: /cache threshold must be greater than 0 and at most 1, got 0/,
  },
  {
    name: "TeaCache threshold above 1",
    call: () => submit({ settings: settings({ cache: "teacache", cacheThreshold: 1.5 }) }),
    code: status.INVALID_ARGUMENT,
    message: /cache threshold must be greater than 0 and at most 1, got 1.5/,
  },
  {
    name: "cache threshold without TeaCache",
    call: () => submit({ settings: settings({ cacheThreshold: 0.1 }) }),
    code: status.INVALID_ARGUMENT,
    message: /cache threshold needs --cache teacache/,
  },
  // MagCache (--cache magcache): K and the retention ratio, checked with the same code as the CLI's.
  {
    name: "MagCache K of 0",
    call: () => submit({ settings: settings({ cache: "magcache", magcacheK: 0 }) }),
    code: status.INVALID_ARGUMENT,
    message: /MagCache's K \(max consecutive skips\) must be an integer from 1 to 200, got 0/,
  },
  {
    name: "MagCache retention above 1",
    call: () => submit({ settings: settings({ cache: "magcache", magcacheRetention: 1.5 }) }),
    code: status.INVALID_ARGUMENT,
    message: /MagCache's retention ratio must be from 0 to 1, got 1.5/,
  },
  {
    name: "MagCache K without MagCache",
    call: () => submit({ settings: settings({ cache: "teacache", magcacheK: 3 }) }),
    code: status.INVALID_ARGUMENT,
    message: /MagCache's K \(max consecutive skips\) needs --cache magcache/,
  },
  {
    name: "timed prompt past the end",
    call: () => submit({ settings: settings({ prompt: "[0s: a] [1s: b]" }) }),
    code: status.INVALID_ARGUMENT,
    message: /timed prompt at 1s starts at or after the video's end \(0.667s\)/,
  },
  {
    name: "overlapping timed prompts",
    call: () => submit({ settings: settings({ prompt: "[0s-0.5s: a] [0.3s: b]" }) }),
    code: status.INVALID_ARGUMENT,
    message: /0s-0.5s overlaps the one starting at 0.3s/,
  },
  {
    name: "unparseable timed prompt",
    call: () => submit({ settings: settings({ prompt: "[0s: a] [soon: b]" }) }),
    code: status.INVALID_ARGUMENT,
    message: /cannot read the timed prompt at character 9/,
  },
  {
    name: "section prompts that do not fit",
    call: () => submit({ settings: settings({ prompt: "", promptSchedule: { sectionPrompts: ["a", "b"] } }) }),
    code: status.INVALID_ARGUMENT,
    message: /2 section prompts given, but the video has 1 section/,
  },
  {
    name: "prompt and section prompts",
    call: () => submit({ settings: settings({ promptSchedule: { sectionPrompts: ["a"] } }) }),
    code: status.INVALID_ARGUMENT,
    message: /either a prompt or section prompts/,
  },
  {
    name: "blend without changing prompts",
    call: () => submit({ settings: settings({ promptSchedule: { sectionPrompts: [], blendSections: 2 } }) }),
    code: status.INVALID_ARGUMENT,
    message: /prompt blending needs a timed prompt/,
  },
  {
    name: "prompt of 1 MB",
    call: () => submit({ settings: settings({ prompt: "x".repeat(1 << 20) }) }),
    code: status.INVALID_ARGUMENT,
    message: /prompt is 1048576 bytes; the limit is 16384 bytes/,
  },
  {
    name: "NUL in prompt",
    call: () => submit({ settings: settings({ prompt: "a\0b" }) }),
    code: status.INVALID_ARGUMENT,
    message: /prompt must not contain NUL/,
  },
  {
    name: "length missing",
    call: () => submit({ settings: settings({ length: undefined }) }),
    code: status.INVALID_ARGUMENT,
    message: /video length is missing/,
  },
  {
    name: "NaN seconds",
    call: () => submit({ settings: settings({ length: { $case: "seconds", value: NaN } }) }),
    code: status.INVALID_ARGUMENT,
    message: /seconds must be a finite number, got NaN/,
  },
  {
    name: "negative seconds",
    call: () => submit({ settings: settings({ length: { $case: "seconds", value: -5 } }) }),
    code: status.INVALID_ARGUMENT,
    message: /seconds must be greater than 0 and at most 120, got -5/,
  },
  {
    name: "huge seconds",
    call: () => submit({ settings: settings({ length: { $case: "seconds", value: 1e300 } }) }),
    code: status.INVALID_ARGUMENT,
    message: /seconds must be greater than 0 and at most 120/,
  },
  {
    name: "zero frames",
    call: () => submit({ settings: settings({ length: { $case: "numFrames", value: 0 } }) }),
    code: status.INVALID_ARGUMENT,
    message: /frames must be an integer from 1 to 7200, got 0/,
  },
  {
    name: "2^32-1 frames",
    call: () => submit({ settings: settings({ length: { $case: "numFrames", value: 4294967295 } }) }),
    code: status.INVALID_ARGUMENT,
    message: /frames must be an integer from 1 to 7200, got 4294967295/,
  },
  {
    name: "zero steps",
    call: () => submit({ settings: settings({ steps: 0 }) }),
    code: status.INVALID_ARGUMENT,
    message: /steps must be an integer from 1 to 200, got 0/,
  },
  {
    name: "a billion steps",
    call: () => submit({ settings: settings({ steps: 1e9 }) }),
    code: status.INVALID_ARGUMENT,
    message: /steps must be an integer from 1 to 200, got 1000000000/,
  },
  {
    name: "infinite guidance",
    call: () => submit({ settings: settings({ guidanceScale: Infinity }) }),
    code: status.INVALID_ARGUMENT,
    message: /guidance must be a finite number, got Infinity/,
  },
  {
    name: "negative cfg",
    call: () => submit({ settings: settings({ trueCfgScale: -1 }) }),
    code: status.INVALID_ARGUMENT,
    message: /cfg must be between 0 and 50, got -1/,
  },
  {
    name: "NaN fps",
    call: () => submit({ settings: settings({ fps: NaN }) }),
    code: status.INVALID_ARGUMENT,
    message: /fps must be a finite number, got NaN/,
  },
  {
    name: "crf 99",
    call: () => submit({ settings: settings({ crf: 99 }) }),
    code: status.INVALID_ARGUMENT,
    message: /crf must be an integer from 0 to 51, got 99/,
  },
  {
    name: "window 0",
    call: () => submit({ settings: settings({ latentWindowSize: 0 }) }),
    code: status.INVALID_ARGUMENT,
    message: /window must be an integer from 1 to 33, got 0/,
  },
  {
    name: "unknown mode",
    call: () => submit({ settings: settings({ mode: 7 }) }),
    code: status.INVALID_ARGUMENT,
    message: /mode 7 is not a SamplingMode/,
  },
  {
    name: "end image with vanilla",
    call: () => submit({ endImage: data(png), settings: settings({ mode: 2 }) }),
    code: status.INVALID_ARGUMENT,
    message: /end image needs inverted .* vanilla \(F1\) sampling cannot use one/,
  },
  // Keyframes (inverted; 20 frames at 30 fps: 0.667 s, one section of 1.2 s; 80 frames: 3 sections).
  {
    name: "keyframe at the video's end",
    call: () => submit({ keyframes: [kf(0.7)] }),
    code: status.INVALID_ARGUMENT,
    message: /keyframe 1: its time 0.7s is at or after the video's end \(0.667s\)/,
  },
  {
    name: "negative keyframe time",
    call: () => submit({ keyframes: [kf(-0.5)] }),
    code: status.INVALID_ARGUMENT,
    message: /keyframe 1: its time -0.5s is before the video's start/,
  },
  {
    name: "NaN keyframe time",
    call: () => submit({ keyframes: [kf(Number.NaN)] }),
    code: status.INVALID_ARGUMENT,
    message: /keyframe 1: its time must be a finite number of seconds, got NaN/,
  },
  {
    name: "keyframes out of time order",
    call: () =>
      submit({ settings: settings({ length: { $case: "numFrames", value: 80 } }), keyframes: [kf(2), kf(1)] }),
    code: status.INVALID_ARGUMENT,
    message: /keyframe 2 \(at 1s\) is not after keyframe 1 \(at 2s\): give keyframes in time order/,
  },
  {
    name: "two keyframes in one section",
    call: () =>
      submit({ settings: settings({ length: { $case: "numFrames", value: 80 } }), keyframes: [kf(0.1), kf(0.5)] }),
    code: status.INVALID_ARGUMENT,
    message: /keyframe 1 \(at 0.1s\) and keyframe 2 \(at 0.5s\) fall in the same section \(0s to 1.2s\)/,
  },
  {
    name: "keyframe past the demo's last section",
    call: () =>
      submit({ settings: settings({ sampler: 2, length: { $case: "numFrames", value: 50 } }), keyframes: [kf(1.5)] }),
    code: status.INVALID_ARGUMENT,
    message: /keyframe 1 \(at 1.5s\) is past the video's last section, which ends at 1.2s/,
  },
  {
    name: "keyframe with vanilla",
    call: () => submit({ settings: settings({ mode: 2 }), keyframes: [kf(0.1)] }),
    code: status.INVALID_ARGUMENT,
    message: /keyframes need inverted .* vanilla \(F1\) sampling cannot use them/,
  },
  {
    name: "keyframe without an image",
    call: () => submit({ keyframes: [{ timeSeconds: 0.1, image: undefined }] }),
    code: status.INVALID_ARGUMENT,
    message: /keyframe 1 \(at 0.1s\) has no image/,
  },
  {
    name: "corrupt keyframe image after a good one",
    call: () =>
      submit({
        settings: settings({ length: { $case: "numFrames", value: 80 } }),
        keyframes: [kf(0.1), kf(1.5, data(corruptPng()))],
      }),
    code: status.INVALID_ARGUMENT,
    message: /keyframe 2 \(at 1.5s\) cannot be decoded \(corrupt or truncated\?\)/,
  },
  {
    name: "keyframe that is not an image",
    call: () => submit({ keyframes: [kf(0.1, key("uploads/acme/corrupt.png"))] }),
    code: status.INVALID_ARGUMENT,
    message: /keyframe 1 \(at 0.1s\) is not a readable image/,
  },
  {
    name: "keyframe from another tenant's upload",
    call: () => submit({ keyframes: [kf(0.1, key("uploads/other/ok.png"))] }),
    code: status.PERMISSION_DENIED,
    message: /keyframe 1 \(at 0.1s\) object key must be under uploads\/acme\//,
  },
  {
    name: "keyframe image over 50 MiB",
    call: () => submit({ keyframes: [kf(0.1, data(Buffer.alloc(51 * 1024 * 1024)))] }),
    code: status.RESOURCE_EXHAUSTED,
    message: /keyframe 1 \(at 0.1s\) is 53477376 bytes; the limit is 52428800 bytes/,
  },
  {
    name: "height without width",
    call: () => submit({ settings: settings({ resolution: undefined, height: 64 }) }),
    code: status.INVALID_ARGUMENT,
    message: /give both height and width/,
  },
  {
    name: "size and resolution",
    call: () => submit({ settings: settings({ height: 64, width: 64 }) }),
    code: status.INVALID_ARGUMENT,
    message: /either height and width or a resolution, not both/,
  },
  {
    name: "width not a multiple of 16",
    call: () => submit({ settings: settings({ resolution: undefined, height: 64, width: 70 }) }),
    code: status.INVALID_ARGUMENT,
    message: /width must be a multiple of 16, got 70/,
  },
  {
    name: "resolution too large",
    call: () => submit({ settings: settings({ resolution: 1_000_000 }) }),
    code: status.INVALID_ARGUMENT,
    message: /resolution must be an integer from 64 to 1280, got 1000000/,
  },
  // request envelope
  {
    name: "unknown bundle",
    call: () => submit({ bundle: "flux-dev" }),
    code: status.NOT_FOUND,
    message: /unknown bundle "flux-dev"; this farm serves "tiny"/,
  },
  {
    name: "priority over the range",
    call: () => submit({ priority: 1_000_000_000 }),
    code: status.INVALID_ARGUMENT,
    message: /priority must be an integer from -1000 to 1000, got 1000000000/,
  },
  {
    name: "most negative priority",
    call: () => submit({ priority: -(2 ** 31) }),
    code: status.INVALID_ARGUMENT,
    message: /priority must be an integer from -1000 to 1000, got -2147483648/,
  },
  {
    name: "idempotency key with spaces",
    call: () => submit({ idempotencyKey: "my key" }),
    code: status.INVALID_ARGUMENT,
    message: /idempotency key must be 1-128 characters of \[A-Za-z0-9._:-\]/,
  },
  {
    name: "idempotency key of 129 characters",
    call: () => submit({ idempotencyKey: "k".repeat(129) }),
    code: status.INVALID_ARGUMENT,
    message: /idempotency key must be 1-128 characters/,
  },
  {
    name: "idempotency key with a bad image",
    call: () => submit({ idempotencyKey: "retry-1", image: data(Buffer.from("nope")) }),
    code: status.INVALID_ARGUMENT,
    message: /image is not a readable image/,
  },
  // job ids
  {
    name: "GetJob of an unknown id",
    call: () => getJob("6f1c0d1e-0000-4000-8000-000000000000"),
    code: status.NOT_FOUND,
    message: /job 6f1c0d1e-0000-4000-8000-000000000000 does not exist/,
  },
  {
    name: "GetJob of an empty id",
    call: () => getJob(""),
    code: status.INVALID_ARGUMENT,
    message: /invalid job id ""/,
  },
  {
    name: "GetJob of a path",
    call: () => getJob("../jobs/x"),
    code: status.INVALID_ARGUMENT,
    message: /invalid job id "..\/jobs\/x"/,
  },
  {
    name: "GetJob of a NATS wildcard",
    call: () => getJob("ff.>"),
    code: status.INVALID_ARGUMENT,
    message: /invalid job id "ff.>"/,
  },
  {
    name: "WatchJob of an unknown id",
    call: () => watchJob("no-such-job"),
    code: status.NOT_FOUND,
    message: /job no-such-job does not exist/,
  },
  {
    name: "CancelJob of an unknown id",
    call: () => cancelJob("no-such-job"),
    code: status.NOT_FOUND,
    message: /job no-such-job does not exist/,
  },
  {
    name: "ListJobs with an unknown state",
    call: () => listJobs({ states: [9 as JobState] }),
    code: status.INVALID_ARGUMENT,
    message: /states 9 are not job states/,
  },
  // raw protocol
  {
    name: "invalid UTF-8 in the prompt",
    call: () =>
      rawCall(
        "SubmitJob",
        submitWithSettings(Buffer.concat([encSettings(settings({ prompt: "" })), lenField(1, INVALID_UTF8)])),
      ),
    code: status.INVALID_ARGUMENT,
    message: /field settings.prompt is not valid UTF-8/,
  },
  {
    name: "invalid UTF-8 in the negative prompt",
    call: () =>
      rawCall("SubmitJob", submitWithSettings(Buffer.concat([encSettings(settings()), lenField(2, INVALID_UTF8)]))),
    code: status.INVALID_ARGUMENT,
    message: /field settings.negative_prompt is not valid UTF-8/,
  },
  {
    name: "invalid UTF-8 in a job id",
    call: () => rawCall("GetJob", lenField(1, [0xc3, 0x28])),
    code: status.INVALID_ARGUMENT,
    message: /field id is not valid UTF-8/,
  },
  {
    name: "unknown field in RenderSettings",
    call: () => rawCall("SubmitJob", submitWithSettings(Buffer.concat([encSettings(settings()), varintField(99, 1)]))),
    code: status.INVALID_ARGUMENT,
    message: /unknown field 99 in settings \(framefarm.v1.RenderSettings\)/,
  },
  {
    name: "unknown field in SubmitJobRequest",
    call: () => rawCall("SubmitJob", Buffer.concat([encSubmit(request()), lenField(42, [1, 2, 3])])),
    code: status.INVALID_ARGUMENT,
    message: /unknown field 42 in framefarm.v1.SubmitJobRequest/,
  },
  {
    name: "unknown field in a Keyframe",
    call: () =>
      rawCall(
        "SubmitJob",
        Buffer.concat([encSubmit(request()), lenField(7, [...varintField(3, 1), 0x09, ...Buffer.alloc(8)])]),
      ),
    code: status.INVALID_ARGUMENT,
    message: /unknown field 3 in keyframes \(framefarm.v1.Keyframe\)/,
  },
  {
    name: "negative steps (int64 -1 on the wire)",
    call: () =>
      rawCall(
        "SubmitJob",
        submitWithSettings(
          Buffer.concat([
            encSettings(settings({ steps: undefined })),
            Buffer.from([6 * 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
          ]),
        ),
      ),
    code: status.INVALID_ARGUMENT,
    message: /steps must be an integer from 1 to 200, got 4294967295/,
  },
  {
    name: "wrong wire type for steps",
    call: () =>
      rawCall(
        "SubmitJob",
        submitWithSettings(Buffer.concat([encSettings(settings({ steps: undefined })), lenField(6, [1, 2])])),
      ),
    code: status.INVALID_ARGUMENT,
    message:
      /field settings.steps \(6\) of framefarm.v1.RenderSettings has wire type 2; its type uint32 needs wire type 0/,
  },
  {
    name: "VAE tiling of the wrong wire type (a string where a bool goes)",
    call: () =>
      rawCall(
        "SubmitJob",
        submitWithSettings(Buffer.concat([encSettings(settings()), lenField(27, Buffer.from("yes"))])),
      ),
    code: status.INVALID_ARGUMENT,
    message:
      /field settings.vae_tiling \(27\) of framefarm.v1.RenderSettings has wire type 2; its type bool needs wire type 0/,
  },
  {
    name: "a recipe whose vae_tiling is not a boolean",
    call: () => submit({ settings: undefined, recipe: recipeWith("vae_tiling", "yes") }),
    code: status.INVALID_ARGUMENT,
    message: /recipe: vae_tiling must be true or false/,
  },
  {
    name: "truncated message",
    call: () => rawCall("SubmitJob", encSubmit(request()).subarray(0, 1000)),
    code: status.INVALID_ARGUMENT,
    message: /request is not valid protobuf: field image \(1\) claims \d+ bytes, only 997 left/,
  },
  {
    name: "not protobuf at all",
    call: () => rawCall("ListJobs", Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])),
    code: status.INVALID_ARGUMENT,
    message: /request is not valid protobuf: varint longer than 10 bytes/,
  },
  {
    name: "field number 0",
    call: () => rawCall("GetJob", Buffer.from([0x02, 0x00])),
    code: status.INVALID_ARGUMENT,
    message: /request is not valid protobuf: field number 0/,
  },
  {
    name: "message over the 110 MiB limit",
    call: () => submit({ image: data(Buffer.alloc(MAX_REQUEST_BYTES + 1)) }),
    code: status.RESOURCE_EXHAUSTED,
    message: /larger than max/,
  },
];

test(`bad input: ${rows.length} kinds, each with its status and message, none leaving state behind`, async (t) => {
  assert.ok(rows.length >= 25);
  const baseline = await farm.snapshot();
  assert.deepEqual(baseline.objects, ["uploads/acme/corrupt.png", "uploads/other/ok.png"]);
  for (const row of rows) {
    await t.test(row.name, { timeout: 60_000 }, async () => {
      const err = await row.call().then(
        () => assert.fail(`${row.name}: accepted`),
        (e: unknown) => e as ServiceError,
      );
      assert.equal(status[err.code], status[row.code], `${row.name}: ${err.details}`);
      assert.match(err.details, row.message);
      assert.deepEqual(await farm.snapshot(), baseline, `${row.name} left state behind`);
    });
  }
});

test("control: a good submission does leave a job, its objects and its idempotency entry", async () => {
  const before = await farm.snapshot();
  const { job } = await submit({ idempotencyKey: "retry-1" });
  const now = await farm.snapshot();
  assert.deepEqual(now.jobs, [...before.jobs, job!.id].sort());
  assert.equal(now.idempotency.length, before.idempotency.length + 1);
  assert.ok(now.objects.some((k) => k.startsWith(`jobs/${job!.id}/`)));
  // The job id is a UUID: object keys come from it, never from user text.
  assert.match(job!.id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.ok(now.objects.filter((k) => !before.objects.includes(k)).every((k) => k.startsWith(`jobs/${job!.id}/`)));
  await cancelJob(job!.id);
});

test("control: keyframes are stored as the job's inputs and the job shows their times", async () => {
  const { job } = await submit({
    settings: settings({ length: { $case: "numFrames", value: 80 } }),
    keyframes: [kf(0.25), kf(1.5)],
  });
  const objects = (await farm.snapshot()).objects;
  for (const i of [0, 1]) assert.ok(objects.includes(`jobs/${job!.id}/inputs/keyframe-${i}`), `keyframe ${i} stored`);
  assert.deepEqual(job!.keyframeTimes, [0.25, 1.5]);
  await cancelJob(job!.id);
});
