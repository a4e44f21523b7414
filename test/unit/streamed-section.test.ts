/**
 * A section decoded while the mux encodes it: frames are waited for in order, handed over as the
 * decoder reports them, and a failed or short decode fails the waits instead of hanging them.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { StreamedSection } from "../../gpu-node/stages/streamed-section.js";
import { softAppendedFrames, softAppendedFramesWhenReady } from "../../shared/framepack/video-stream.js";
import { diffusersPlaneToUint8 } from "../../shared/framepack/frames.js";
import { Tensor } from "../../shared/tensor/tensor.js";

const video = (frames: number, seed: number): Tensor<"float32"> =>
  new Tensor(
    "float32",
    [1, 3, frames, 2, 2],
    Float32Array.from({ length: 3 * frames * 4 }, (_, i) => Math.sin(i * 0.37 + seed)),
  );

test("frames are waited for until the decoder reports them, then read from the section's own tensor", async () => {
  const decoded = video(9, 1);
  const s = new StreamedSection([1, 3, 9, 2, 2]);
  assert.equal(s.ready(0), undefined);
  const order: string[] = [];
  const five = s.ready(5)!.then(() => order.push("5"));
  const nine = s.ready(9)!.then(() => order.push("9"));
  s.onFrames(decoded, 5);
  await five;
  assert.deepEqual(order, ["5"]);
  assert.equal(s.ready(4), undefined);
  s.onFrames(decoded, 9);
  await nine;
  s.finish();
  assert.deepEqual(s.video.data, decoded.data);
  assert.throws(() => s.onFrames(video(8, 1), 8), /expected \[1, 3, 9, 2, 2\]/);
});

test("a failed or short decode fails every wait", async () => {
  const failed = new StreamedSection([1, 3, 9, 2, 2]);
  const waiting = failed.ready(3)!;
  failed.fail(new Error("decoder gone"));
  await assert.rejects(waiting, /decoder gone/);
  await assert.rejects(failed.ready(1)!, /decoder gone/);
  const short = new StreamedSection([1, 3, 9, 2, 2]);
  short.onFrames(video(9, 2), 4);
  const rest = short.ready(9)!;
  short.finish();
  await assert.rejects(rest, /ended at frame 4 of 9/);
});

test("the frames of sections still being decoded are the frames of the whole sections, in video order", async () => {
  // Inverted: generation order [end, middle, opening]; the opening (generated last) is still decoding.
  const sections = [video(9, 3), video(17, 4), video(17, 5)];
  const want = [...softAppendedFrames(sections, "inverted_anti_drifting", 5, diffusersPlaneToUint8)];
  const opening = new StreamedSection([1, 3, 17, 2, 2]);
  const asked: number[] = [];
  const stream = softAppendedFramesWhenReady(
    [sections[0]!, sections[1]!, opening.video],
    "inverted_anti_drifting",
    5,
    diffusersPlaneToUint8,
    (i, frames) => (i === 2 ? (asked.push(frames), opening.ready(frames)) : undefined),
  );
  let reported = 0;
  const got: Uint8Array[] = [];
  const decoding = (async () => {
    for (const upTo of [4, 9, 13, 17]) {
      await new Promise((r) => setTimeout(r, 1));
      opening.onFrames(sections[2]!, upTo);
      reported = upTo;
    }
  })();
  for await (const frame of stream) {
    assert.ok(got.length >= 17 || got.length < reported, `frame ${got.length} before it was decoded`);
    got.push(frame.slice());
  }
  await decoding;
  assert.deepEqual(got, want);
  assert.equal(asked[0], 1);
});
