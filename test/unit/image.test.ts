/** Image input: decoding, limits, FramePack buckets and the preprocessing the reference saw. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { deflateSync } from "node:zlib";
import sharp from "sharp";
import { decodeImage, prepareImage, DEFAULT_IMAGE_LIMITS } from "../../shared/image/decode.js";
import { siglipPixels } from "../../shared/image/siglip.js";
import { bucketsFor, findNearestBucket } from "../../shared/framepack/buckets.js";
import { FarmError } from "../../shared/errors.js";
import { toFloat64 } from "../../shared/tensor/convert.js";
import { Tensor } from "../../shared/tensor/tensor.js";
import { REFERENCE_CASES, referenceDir, loadCaseTensors, refTensor } from "../support/reference.js";

const rejects = async (bytes: Uint8Array, status: string, pattern: RegExp): Promise<void> => {
  await assert.rejects(decodeImage(bytes), (e: unknown) => e instanceof FarmError && e.status === status && pattern.test(e.message));
};

/** A valid PNG header claiming width x height, with a tiny (highly compressed) body. */
function pngBomb(width: number, height: number): Uint8Array {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (b: Buffer): number => {
    let c = 0xffffffff;
    for (const x of b) c = crcTable[(c ^ x) & 0xff]! ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type: string, data: Buffer): Buffer => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const c = Buffer.alloc(4);
    c.writeUInt32BE(crc(td));
    return Buffer.concat([len, td, c]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 0; // greyscale
  const row = Buffer.alloc(1 + width);
  const idat = deflateSync(Buffer.concat(Array.from({ length: 64 }, () => row)));
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk("IHDR", ihdr), chunk("IDAT", idat), chunk("IEND", Buffer.alloc(0))]);
}

test("bad images are refused with a clear status", async () => {
  await rejects(new Uint8Array(0), "INVALID_ARGUMENT", /empty/);
  await rejects(new TextEncoder().encode("definitely not an image"), "INVALID_ARGUMENT", /not a readable image/);
  const png = await sharp({ create: { width: 32, height: 32, channels: 3, background: "#336699" } }).png().toBuffer();
  await rejects(png.subarray(0, png.length - 30), "INVALID_ARGUMENT", /image/);
  await rejects(pngBomb(50_000, 50_000), "RESOURCE_EXHAUSTED", /50000x50000 pixels/);
  await assert.rejects(decodeImage(png, { ...DEFAULT_IMAGE_LIMITS, maxBytes: 10 }), (e: unknown) => e instanceof FarmError && e.status === "RESOURCE_EXHAUSTED");
});

test("alpha is dropped, greyscale becomes RGB", async () => {
  const rgba = await sharp({ create: { width: 4, height: 2, channels: 4, background: { r: 10, g: 20, b: 30, alpha: 0.5 } } }).png().toBuffer();
  const img = await decodeImage(rgba);
  assert.deepEqual([img.width, img.height, img.rgb.length], [4, 2, 24]);
  assert.deepEqual([...img.rgb.subarray(0, 3)], [10, 20, 30]);
  const grey = await sharp({ create: { width: 3, height: 3, channels: 3, background: "#808080" } }).greyscale().png().toBuffer();
  assert.equal((await decodeImage(grey)).rgb.length, 27);
});

test("FramePack's buckets: 640 table, nearest aspect, scaled resolutions", () => {
  assert.equal(bucketsFor(640).length, 14);
  assert.deepEqual(findNearestBucket(1080, 1920, 640), { height: 480, width: 832 });
  assert.deepEqual(findNearestBucket(1920, 1080, 640), { height: 832, width: 480 });
  assert.deepEqual(findNearestBucket(500, 500, 640), { height: 640, width: 608 });
  for (const b of bucketsFor(320)) assert.ok(b.height % 16 === 0 && b.width % 16 === 0);
  assert.throws(() => bucketsFor(100), /multiple of 16/);
});

test("resizing covers and centre-crops to the bucket", async () => {
  const img = await decodeImage(await sharp({ create: { width: 300, height: 100, channels: 3, background: "#ff0000" } }).png().toBuffer());
  const px = await prepareImage(img, 64, 96);
  assert.deepEqual(px.shape, [1, 3, 64, 96]);
  assert.ok(Math.abs(px.data[0]! - 1) < 1e-6 && Math.abs(px.data[64 * 96]! + 1) < 1e-6);
});

for (const name of REFERENCE_CASES) {
  test(`${name}: pixels and SigLIP input equal the reference`, async () => {
    const { params } = loadCaseTensors(name);
    const file = path.join(referenceDir(), "cases", params["first_image"] as string);
    const px = await prepareImage(await decodeImage(readFileSync(file)), params["height"] as number, params["width"] as number);
    assert.deepEqual([...toFloat64(px)], [...toFloat64(refTensor(name, "image_pixels0"))]);
    const cfg = { image_size: { height: 64, width: 64 }, image_mean: [0.5, 0.5, 0.5] as [number, number, number], image_std: [0.5, 0.5, 0.5] as [number, number, number], resample: "bicubic" as const, hidden_size: 32, num_tokens: 64 };
    const sig = toFloat64(siglipPixels(px, cfg));
    const want = toFloat64(refTensor(name, "siglip_pixel_values0"));
    let max = 0;
    for (let i = 0; i < want.length; i++) max = Math.max(max, Math.abs(sig[i]! - want[i]!));
    assert.ok(max <= 1e-6, `max |d| ${max}`);
  });
}

test("SigLIP resizing keeps a constant image constant", () => {
  const flat = new Float32Array(3 * 40 * 30).fill(0.2);
  const cfg = { image_size: { height: 16, width: 16 }, image_mean: [0.5, 0.5, 0.5] as [number, number, number], image_std: [0.5, 0.5, 0.5] as [number, number, number], resample: "bicubic" as const, hidden_size: 1, num_tokens: 1 };
  const out = siglipPixels(new Tensor("float32", [1, 3, 40, 30], flat), cfg);
  assert.deepEqual(out.shape, [1, 3, 16, 16]);
  for (const v of out.data) assert.ok(Math.abs(v - 0.2) < 1e-5);
});
