/** Image input: decoding, limits, PIL-exact resizing, the pixels and SigLIP input the reference saw. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { deflateSync } from "node:zlib";
import sharp from "sharp";
import {
  decodeImage,
  prepareImage,
  resizeAndCenterCrop,
  toPixelTensor,
  DEFAULT_IMAGE_LIMITS,
  type DecodedImage,
} from "../../shared/image/decode.js";
import { pilResize, roundHalfEven, type PilFilter } from "../../shared/image/pil-resample.js";
import { siglipPixels, resizeAntialiased, type SiglipConfig } from "../../shared/image/siglip.js";
import { FarmError, type StatusName } from "../../shared/errors.js";
import { Tensor } from "../../shared/tensor/tensor.js";
import { REFERENCE_CASES, loadCase, caseFile, refTensor } from "../support/reference.js";
import { tinyBundleDir } from "../support/paths.js";

const isStatus =
  (status: StatusName, pattern: RegExp) =>
  (e: unknown): boolean =>
    e instanceof FarmError && e.status === status && pattern.test(e.message);
const rejects = (
  bytes: Uint8Array,
  status: StatusName,
  pattern: RegExp,
  limits = DEFAULT_IMAGE_LIMITS,
): Promise<void> => assert.rejects(decodeImage(bytes, limits), isStatus(status, pattern));

// ---- a minimal PNG writer, so tests control every byte a decoder sees ----
const crcTable = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function chunk(type: string, data: Buffer): Buffer {
  let c = 0xffffffff;
  const td = Buffer.concat([Buffer.from(type, "latin1"), data]);
  for (const x of td) c = crcTable[(c ^ x) & 0xff]! ^ (c >>> 8);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE((c ^ 0xffffffff) >>> 0);
  return Buffer.concat([len, td, crc]);
}
/** PNG from unfiltered rows (`rows` holds the raw scanline bytes without filter bytes). */
function png(
  width: number,
  height: number,
  depth: number,
  colorType: number,
  rows: Buffer,
  extra: Buffer[] = [],
  idat?: Buffer,
): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = depth;
  ihdr[9] = colorType;
  const stride = rows.length / Math.max(height, 1);
  const filtered = Buffer.concat(
    Array.from({ length: height }, (_, y) =>
      Buffer.concat([Buffer.alloc(1), rows.subarray(y * stride, (y + 1) * stride)]),
    ),
  );
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    ...extra,
    chunk("IDAT", idat ?? deflateSync(filtered)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}
/** A valid PNG header claiming width x height with a tiny compressed body (a decompression bomb). */
const pngBomb = (width: number, height: number): Buffer =>
  png(width, height, 8, 0, Buffer.alloc(0), [], deflateSync(Buffer.alloc(64 * (1 + width))));

const tinyManifest = JSON.parse(readFileSync(path.join(tinyBundleDir(), "framefarm-bundle.json"), "utf8")) as {
  image_encoder: SiglipConfig;
};

// ---- the reference cases: exact pixels, SigLIP input within 1e-6 ----
for (const name of REFERENCE_CASES) {
  test(`${name}: image pixels and SigLIP input equal the reference`, async () => {
    const { params } = loadCase(name);
    const images = [params.first_image, params.last_image].filter((f): f is string => typeof f === "string");
    if (name === "inverted_endframe_2sec") assert.equal(images.length, 2, "the end-frame case has a last image");
    for (const [i, file] of images.entries()) {
      const decoded = await decodeImage(readFileSync(caseFile(file)));
      assert.deepEqual([decoded.height, decoded.width], [params.height, params.width]);
      const px = await prepareImage(decoded, params.height, params.width);
      const want = refTensor(name, `image_pixels${i}`);
      assert.deepEqual(px.shape, want.shape);
      assert.deepEqual(px.data, want.data, `image_pixels${i} bit for bit`);
      const sig = siglipPixels(px, tinyManifest.image_encoder);
      const wantSig = refTensor(name, `siglip_pixel_values${i}`);
      assert.deepEqual(sig.shape, wantSig.shape);
      let max = 0;
      for (let k = 0; k < sig.data.length; k++) max = Math.max(max, Math.abs(sig.data[k]! - Number(wantSig.data[k]!)));
      assert.ok(max <= 1e-6, `siglip_pixel_values${i}: max |d| ${max}`);
    }
  });
}

// ---- decoding and limits ----
test("bad images are refused with a status and a message naming the problem", async () => {
  await rejects(new Uint8Array(0), "INVALID_ARGUMENT", /empty \(0 bytes\)/);
  await rejects(new TextEncoder().encode("definitely not an image"), "INVALID_ARGUMENT", /not a readable image/);
  const good = await sharp({ create: { width: 32, height: 32, channels: 3, background: "#336699" } })
    .png()
    .toBuffer();
  await rejects(good.subarray(0, good.length - 30), "INVALID_ARGUMENT", /cannot be decoded/);
  await rejects(good.subarray(0, 40), "INVALID_ARGUMENT", /image/);
  const noise = Buffer.from(Array.from({ length: 64 * 64 * 3 }, (_, i) => (i * 7919) % 251));
  const jpg = await sharp(noise, { raw: { width: 64, height: 64, channels: 3 } })
    .jpeg()
    .toBuffer();
  await rejects(jpg.subarray(0, Math.floor(jpg.length / 2)), "INVALID_ARGUMENT", /cannot be decoded/);
  const corrupt = Buffer.from(good);
  corrupt.fill(0x5a, 60, 90);
  await rejects(corrupt, "INVALID_ARGUMENT", /image/);
  await rejects(good, "RESOURCE_EXHAUSTED", /\d+ bytes; the limit is 10 bytes/, {
    ...DEFAULT_IMAGE_LIMITS,
    maxBytes: 10,
  });
  await rejects(good, "RESOURCE_EXHAUSTED", /32x32 pixels; the limit is 1000 pixels/, {
    ...DEFAULT_IMAGE_LIMITS,
    maxPixels: 1000,
  });
});

test("a decompression bomb is refused from its header, before decoding", async () => {
  const bomb = pngBomb(50_000, 50_000);
  assert.ok(bomb.length < 10_000, `the bomb is ${bomb.length} bytes on disk`);
  const before = process.memoryUsage().rss;
  const t0 = Date.now();
  await rejects(bomb, "RESOURCE_EXHAUSTED", /50000x50000 pixels; the limit is 40000000 pixels and 16384 per side/);
  assert.ok(Date.now() - t0 < 2000, "refused quickly");
  assert.ok(process.memoryUsage().rss - before < 200 * 1024 * 1024, "no large allocation");
  await rejects(pngBomb(20_000, 1), "RESOURCE_EXHAUSTED", /20000x1 pixels.*16384 per side/);
});

test("alpha is dropped without compositing, as PIL's convert('RGB')", async () => {
  const rgba = Buffer.from([10, 20, 30, 0, 200, 100, 50, 128, 1, 2, 3, 255, 250, 251, 252, 7]);
  const img = await decodeImage(png(2, 2, 8, 6, rgba));
  assert.deepEqual([img.width, img.height], [2, 2]);
  assert.deepEqual([...img.rgb], [10, 20, 30, 200, 100, 50, 1, 2, 3, 250, 251, 252]);
  const la = await decodeImage(png(2, 1, 8, 4, Buffer.from([77, 0, 180, 255])));
  assert.deepEqual([...la.rgb], [77, 77, 77, 180, 180, 180]);
});

test("greyscale and palette images become RGB", async () => {
  const grey = await decodeImage(png(3, 1, 8, 0, Buffer.from([0, 128, 255])));
  assert.deepEqual([...grey.rgb], [0, 0, 0, 128, 128, 128, 255, 255, 255]);
  const plte = chunk("PLTE", Buffer.from([255, 0, 0, 0, 255, 0, 0, 0, 255]));
  const pal = await decodeImage(png(3, 1, 8, 3, Buffer.from([2, 0, 1]), [plte]));
  assert.deepEqual([...pal.rgb], [0, 0, 255, 255, 0, 0, 0, 255, 0]);
});

test("16-bit images keep the high byte, as PIL's 16-bit RGB PNG reader", async () => {
  const rows = Buffer.alloc(12);
  [0x12ff, 0x8080, 0xffff, 0x0001, 0x00ff, 0x7f80].forEach((v, i) => rows.writeUInt16BE(v, i * 2));
  const img = await decodeImage(png(2, 1, 16, 2, rows));
  assert.deepEqual([...img.rgb], [0x12, 0x80, 0xff, 0x00, 0x00, 0x7f]);
});

test("embedded ICC profiles are ignored, as PIL does: the stored values come back", async () => {
  const tagged = await sharp(Buffer.from([200, 30, 30]), { raw: { width: 1, height: 1, channels: 3 } })
    .withIccProfile("p3")
    .png()
    .toBuffer();
  const icc = (await sharp(tagged).metadata()).icc;
  assert.ok(icc !== undefined && icc.length > 0);
  const iccp = chunk("iCCP", Buffer.concat([Buffer.from("p3\0\0", "latin1"), deflateSync(icc)]));
  const img = await decodeImage(png(2, 1, 8, 2, Buffer.from([200, 30, 30, 20, 200, 40]), [iccp]));
  assert.deepEqual([...img.rgb], [200, 30, 30, 20, 200, 40]);
});

test("EXIF orientation is applied, as diffusers' load_image (exif_transpose) does", async () => {
  const jpg = await sharp({ create: { width: 16, height: 8, channels: 3, background: "#ff0000" } })
    .composite([{ input: { create: { width: 8, height: 8, channels: 3, background: "#0000ff" } }, left: 0, top: 0 }])
    .jpeg({ quality: 100 })
    .withMetadata({ orientation: 6 })
    .toBuffer();
  const img = await decodeImage(jpg);
  assert.deepEqual([img.width, img.height], [8, 16]);
  const at = (x: number, y: number): number[] => [...img.rgb.subarray((y * 8 + x) * 3, (y * 8 + x) * 3 + 3)];
  assert.ok(at(4, 2)[2]! > 200 && at(4, 2)[0]! < 50, "the left (blue) half is on top after a 90° turn");
  assert.ok(at(4, 13)[0]! > 200 && at(4, 13)[2]! < 50);
});

// ---- PIL resampling, against Pillow's own accuracy tables (Tests/test_image_resample.py) ----
/** Pillow's make_case: two bright and two dark squares. */
function pillowCase(size: number, color: number): Uint8Array {
  const out = new Uint8Array(size * size);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const tl = x <= size / 2 - 1 && y <= size / 2 - 1;
      const br = x >= size / 2 && y >= size / 2;
      out[y * size + x] = tl || br ? color : 255 - color;
    }
  }
  return out;
}
/** Pillow's make_sample: the expected image from its top-left quarter in hex. */
function pillowSample(data: string, size: number): number[] {
  const hex = data.replace(/\s/g, "");
  const out = new Array<number>(size * size).fill(-1);
  const h = size / 2;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < h; x++) {
      const v = parseInt(hex.slice((y * h + x) * 2, (y * h + x) * 2 + 2), 16);
      out[y * size + x] = v;
      out[(size - y - 1) * size + (size - x - 1)] = v;
      out[(size - y - 1) * size + x] = 255 - v;
      out[y * size + (size - x - 1)] = 255 - v;
    }
  }
  return out;
}
const PILLOW_TABLES: [string, PilFilter, number, number, string][] = [
  ["reduce bilinear", "bilinear", 8, 4, "e1 c9 c9 b7"],
  ["reduce bicubic", "bicubic", 12, 6, "e1 e3 d4 e3 e5 d6 d4 d6 c9"],
  ["reduce lanczos", "lanczos", 16, 8, "e1 e0 e4 d7 e0 df e3 d6 e4 e3 e7 da d7 d6 d9 ce"],
  ["enlarge bilinear", "bilinear", 2, 4, "e1 b0 b0 98"],
  ["enlarge bicubic", "bicubic", 4, 8, "e1 e5 ee b9 e5 e9 f3 bc ee f3 fd c1 b9 bc c1 a2"],
  [
    "enlarge lanczos",
    "lanczos",
    6,
    12,
    "e1 e0 db ed f5 b8 e0 df da ec f3 b7 db db d6 e7 ee b5 ed ec e6 fb ff bf f5 f4 ee ff ff c4 b8 b7 b4 bf c4 a0",
  ],
];
for (const [name, filter, from, to, data] of PILLOW_TABLES) {
  test(`PIL resampling equals Pillow's accuracy table: ${name}`, () => {
    const single = pilResize(pillowCase(from, 0xe1), from, from, 1, to, to, filter);
    assert.deepEqual([...single], pillowSample(data, to));
    // The same per channel of an RGB image.
    const grey = pillowCase(from, 0xe1);
    const rgb = new Uint8Array(grey.length * 3).map((_, i) => grey[Math.floor(i / 3)]!);
    const out = pilResize(rgb, from, from, 3, to, to, filter);
    assert.deepEqual(
      [...out].filter((_, i) => i % 3 === 1),
      pillowSample(data, to),
    );
  });
}

test("PIL resampling keeps constant images constant (Pillow's consistency cases)", () => {
  const rgb = new Uint8Array(512 * 9 * 3).map((_, i) => [0, 64, 255][i % 3]!);
  const out = pilResize(rgb, 512, 9, 3, 9, 512, "lanczos");
  assert.ok(out.every((v, i) => v === [0, 64, 255][i % 3]));
  const big = new Uint8Array(1280 * 1280).fill(0x20);
  assert.ok(pilResize(big, 1280, 1280, 1, 256, 256, "bicubic").every((v) => v === 0x20));
  for (const size of [400000, 400002]) {
    const row = new Uint8Array(size);
    row.fill(254, 0, size / 2);
    assert.equal(pilResize(row, size, 1, 1, 5, 1, "bicubic")[2], 127);
  }
});

test("Python rounding: halves to even", () => {
  assert.deepEqual([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, 2.4, 2.6].map(roundHalfEven), [0, 2, 2, 4, -0, -2, 2, 3]);
});

// ---- resize_and_center_crop ----
const gradient = (width: number, height: number): DecodedImage => ({
  width,
  height,
  rgb: new Uint8Array(width * height * 3).map((_, i) => {
    const p = Math.floor(i / 3);
    return [((p % width) * 9) % 256, (Math.floor(p / width) * 5) % 256, (p * 13) % 256][i % 3]!;
  }),
});

test("resize_and_center_crop: the image itself at the target size", () => {
  const img = gradient(64, 48);
  assert.equal(resizeAndCenterCrop(img, 48, 64), img);
});

test("resize_and_center_crop: the crop box is rounded as PIL's crop (Python round)", () => {
  // 19x16 -> 16x16: scale 1, no resize, left = round(1.5) = 2 (floor would give 1).
  const img = gradient(19, 16);
  const out = resizeAndCenterCrop(img, 16, 16);
  for (let y = 0; y < 16; y++)
    assert.deepEqual(
      [...out.rgb.subarray(y * 48, y * 48 + 48)],
      [...img.rgb.subarray((y * 19 + 2) * 3, (y * 19 + 18) * 3)],
    );
  // 21x16 -> 16x16: left = round(2.5) = 2.
  const img2 = gradient(21, 16);
  assert.deepEqual([...resizeAndCenterCrop(img2, 16, 16).rgb.subarray(0, 3)], [...img2.rgb.subarray(6, 9)]);
});

test("resize_and_center_crop: covers the target with LANCZOS, sizes rounded as Python", () => {
  // 300x100 -> 64x96: scale max(96/300, 64/100) = 0.64 -> 192x64, crop 96 wide from x = 48.
  const img = gradient(300, 100);
  const out = resizeAndCenterCrop(img, 64, 96);
  assert.deepEqual([out.width, out.height, out.rgb.length], [96, 64, 96 * 64 * 3]);
  const full = pilResize(img.rgb, 300, 100, 3, 192, 64, "lanczos");
  for (let y = 0; y < 64; y++)
    assert.deepEqual(
      [...out.rgb.subarray(y * 288, (y + 1) * 288)],
      [...full.subarray((y * 192 + 48) * 3, (y * 192 + 144) * 3)],
    );
});

test("PIL LANCZOS stays close to libvips' lanczos3 on a smooth image (geometry sanity)", async () => {
  const w = 203;
  const h = 151;
  const img: DecodedImage = {
    width: w,
    height: h,
    rgb: new Uint8Array(w * h * 3).map((_, i) => {
      const p = Math.floor(i / 3);
      const x = p % w;
      const y = Math.floor(p / w);
      return Math.round(127.5 + 120 * Math.sin(x / 9 + (i % 3)) * Math.cos(y / 13));
    }),
  };
  const ours = pilResize(img.rgb, w, h, 3, 80, 60, "lanczos");
  const theirs = await sharp(img.rgb, { raw: { width: w, height: h, channels: 3 } })
    .resize(80, 60, { kernel: "lanczos3", fit: "fill" })
    .raw()
    .toBuffer();
  let sum = 0;
  for (let i = 0; i < ours.length; i++) sum += Math.abs(ours[i]! - theirs[i]!);
  assert.ok(sum / ours.length < 2, `mean |d| ${sum / ours.length}`);
});

test("pixels: 2 * (x / 255) - 1 in float32, [1, 3, H, W] planar", () => {
  const px = toPixelTensor({ width: 2, height: 1, rgb: new Uint8Array([0, 128, 255, 255, 0, 1]) });
  assert.deepEqual(px.shape, [1, 3, 1, 2]);
  const f = Math.fround;
  const v = (x: number): number => f(f(2 * f(x / 255)) - 1);
  assert.deepEqual([...px.data], [-1, 1, v(128), -1, 1, v(1)]);
});

// ---- SigLIP input ----
const sigCfg = (height: number, width: number, resample: SiglipConfig["resample"] = "bicubic"): SiglipConfig => ({
  image_size: { height, width },
  image_mean: [0.5, 0.5, 0.5],
  image_std: [0.5, 0.5, 0.5],
  resample,
});

test("antialiased bicubic resize equals a hand-computed case (torch's a = -0.5 AA kernel)", () => {
  // 4 -> 2: scale 2, support 4, taps at +-0.25, +-0.75, 1.25 -> Keys weights 0.8671875, 0.8671875,
  // 0.2265625, -0.0703125 over their sum 1.890625.
  const out = resizeAntialiased(Float32Array.from([0, 1, 2, 3]), 1, 1, 4, 1, 2, "bicubic");
  const f = Math.fround;
  assert.ok(Math.abs(out[0]! - 1.109375 / 1.890625) < 3e-7, `${out[0]}`);
  assert.ok(Math.abs(out[1]! - 4.5625 / 1.890625) < 3e-7, `${out[1]}`);
  // Upsampling 2 -> 4 (bilinear): align_corners=False, edge taps clamp.
  const up = resizeAntialiased(Float32Array.from([0, 4]), 1, 1, 2, 1, 4, "bilinear");
  assert.deepEqual([...up], [0, f(0.75 * 0 + 0.25 * 4), f(0.25 * 0 + 0.75 * 4), 4]);
  // Both axes: 4x4 -> 2x2 is the 1-D kernel applied to rows then columns.
  const grid = Float32Array.from({ length: 16 }, (_, i) => i % 4);
  const g = resizeAntialiased(grid, 1, 4, 4, 2, 2, "bicubic");
  assert.ok(Math.abs(g[0]! - 1.109375 / 1.890625) < 1e-6 && Math.abs(g[3]! - 4.5625 / 1.890625) < 1e-6);
});

test("SigLIP: same size is (x + 1) / 2 normalised; other sizes resize; constants stay constant", () => {
  const px = new Tensor("float32", [1, 3, 1, 2], Float32Array.from([-1, 1, 0, 0.5, -0.5, 0.25]));
  const same = siglipPixels(px, sigCfg(1, 2));
  assert.deepEqual([...same.data], [-1, 1, 0, 0.5, -0.5, 0.25]);
  const flat = new Float32Array(3 * 640 * 608).fill(-0.6);
  const out = siglipPixels(new Tensor("float32", [1, 3, 640, 608], flat), sigCfg(384, 384));
  assert.deepEqual(out.shape, [1, 3, 384, 384]);
  for (const v of out.data) assert.ok(Math.abs(v + 0.6) < 1e-5);
  assert.throws(() => siglipPixels(px, sigCfg(4, 4, "lanczos")), isStatus("FAILED_PRECONDITION", /lanczos/));
});
