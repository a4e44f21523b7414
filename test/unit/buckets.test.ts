/** FramePack's resolution buckets (diffusers_helper/bucket_tools.py) and the scaled tables. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { bucketsFor, findNearestBucket } from "../../shared/framepack/buckets.js";
import { FarmError } from "../../shared/errors.js";

const UPSTREAM_640 = [
  [416, 960],
  [448, 864],
  [480, 832],
  [512, 768],
  [544, 704],
  [576, 672],
  [608, 640],
  [640, 608],
  [672, 576],
  [704, 544],
  [768, 512],
  [832, 480],
  [864, 448],
  [960, 416],
];

test("640 is upstream's table, in its order", () => {
  assert.deepEqual(
    bucketsFor(640).map((b) => [b.height, b.width]),
    UPSTREAM_640,
  );
});

test("find_nearest_bucket: min |h*bw - w*bh|, the last bucket on ties", () => {
  assert.deepEqual(findNearestBucket(1080, 1920, 640), { height: 480, width: 832 });
  assert.deepEqual(findNearestBucket(1920, 1080, 640), { height: 832, width: 480 });
  // Square: (608, 640) and (640, 608) tie at |608 - 640| * h; upstream keeps the later one.
  assert.deepEqual(findNearestBucket(500, 500, 640), { height: 640, width: 608 });
  assert.deepEqual(findNearestBucket(64, 64, 640), { height: 640, width: 608 });
  // Extreme aspects go to the extreme buckets.
  assert.deepEqual(findNearestBucket(100, 10000, 640), { height: 416, width: 960 });
  assert.deepEqual(findNearestBucket(10000, 100, 640), { height: 960, width: 416 });
  // Brute force against the formula for many sizes.
  for (let h = 1; h < 3000; h += 37) {
    for (let w = 1; w < 3000; w += 41) {
      let best = UPSTREAM_640[0]!;
      let min = Infinity;
      for (const b of UPSTREAM_640) {
        const m = Math.abs(h * b[1]! - w * b[0]!);
        if (m <= min) {
          min = m;
          best = b;
        }
      }
      const got = findNearestBucket(h, w, 640);
      assert.deepEqual([got.height, got.width], best);
    }
  }
});

test("other resolutions scale the 640 table to multiples of 16", () => {
  for (let r = 64; r <= 1280; r += 16) {
    const table = bucketsFor(r);
    assert.equal(table.length, 14);
    for (const [i, b] of table.entries()) {
      assert.ok(
        b.height % 16 === 0 && b.width % 16 === 0 && b.height >= 16 && b.width >= 16,
        `${r}: ${b.height}x${b.width}`,
      );
      const [h, w] = UPSTREAM_640[i]!;
      assert.ok(Math.abs(b.height - (h! * r) / 640) <= 8 && Math.abs(b.width - (w! * r) / 640) <= 8);
    }
  }
  assert.deepEqual(bucketsFor(320)[0], { height: 208, width: 480 });
  assert.deepEqual(bucketsFor(1280)[6], { height: 1216, width: 1280 });
  // At 64 (the tiny reference model) a square image lands on 64x64.
  assert.deepEqual(findNearestBucket(64, 64, 64), { height: 64, width: 64 });
});

test("resolutions must be multiples of 16 in [64, 1280]; sizes positive integers", () => {
  for (const bad of [100, 48, 1296, 0, -640, 640.5, Number.NaN]) {
    assert.throws(
      () => bucketsFor(bad),
      (e: unknown) =>
        e instanceof FarmError && e.status === "INVALID_ARGUMENT" && /multiple of 16 from 64 to 1280/.test(e.message),
    );
  }
  assert.throws(() => findNearestBucket(0, 10, 640), /positive integers/);
  assert.throws(() => findNearestBucket(10.5, 10, 640), /positive integers/);
});
