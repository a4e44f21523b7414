/** Preview sizes: even, aspect kept, never above the cap, untouched when already small. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { scaledSize } from "../../shared/video/mp4.js";

test("previews scale the longer side to the cap and keep even sizes", () => {
  assert.deepEqual(scaledSize(640, 640, 320), { width: 320, height: 320 });
  assert.deepEqual(scaledSize(608, 640, 320), { width: 304, height: 320 });
  assert.deepEqual(scaledSize(960, 416, 320), { width: 320, height: 138 });
  assert.equal(scaledSize(320, 240, 320), null);
  assert.equal(scaledSize(64, 48, 320), null);
});
