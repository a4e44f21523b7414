/** Farm tensor objects verify themselves: any change to a tensor's bytes, shape or name is DATA_LOSS. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { decodeTensorObject, encodeTensorObject } from "../../shared/tensor/tensor-object.js";
import { encodeSafetensors } from "../../shared/tensor/safetensors.js";
import { Tensor } from "../../shared/tensor/tensor.js";
import { FarmError } from "../../shared/errors.js";

const dataLoss =
  (pattern: RegExp) =>
  (e: unknown): boolean =>
    e instanceof FarmError && e.status === "DATA_LOSS" && pattern.test(e.message);
const tensors = {
  history: Tensor.f32([2, 3], [1, 2, 3, 4, 5, 6]),
  mask: new Tensor("int64", [2], BigInt64Array.of(1n, 0n)),
};

test("a tensor object round-trips and keeps its metadata, without the checksum", () => {
  const back = decodeTensorObject(
    encodeTensorObject(tensors, { generated: "3" }),
    "jobs/j/sections/0/history.safetensors",
  );
  assert.deepEqual([...(back.tensors.get("history")!.data as Float32Array)], [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(back.metadata, { generated: "3" });
});

test("a flipped bit, a plain safetensors file and a truncated object are DATA_LOSS naming the object", () => {
  const bytes = encodeTensorObject(tensors);
  const flipped = Uint8Array.from(bytes);
  flipped[flipped.length - 20]! ^= 0x01;
  assert.throws(
    () => decodeTensorObject(flipped, "jobs/j/x"),
    dataLoss(/object jobs\/j\/x is corrupt: its tensors hash to/),
  );
  assert.throws(
    () => decodeTensorObject(encodeSafetensors(tensors), "jobs/j/y"),
    dataLoss(/object jobs\/j\/y has no framefarm\.sha256/),
  );
  assert.throws(
    () => decodeTensorObject(bytes.subarray(0, bytes.length - 4), "jobs/j/z"),
    dataLoss(/object jobs\/j\/z: safetensors:/),
  );
});

test("the async parts form (hashing with yields) writes the same bytes and refuse the same corruption", async () => {
  const { encodeTensorObjectPartsAsync, decodeTensorObjectAsync } =
    await import("../../shared/tensor/tensor-object.js");
  const { bodyBytes } = await import("../../shared/store/object-store.js");
  // Past one 8 MiB hashing slice, so the yields are exercised.
  const big = new Tensor(
    "float32",
    [3, 1 << 20],
    new Float32Array(3 << 20).map((_, i) => Math.sin(i)),
  );
  const small = new Tensor("int64", [2], BigInt64Array.of(7n, -1n));
  const sync = encodeTensorObject({ big, small }, { generated: "9" });
  const parts = await encodeTensorObjectPartsAsync({ big, small }, { generated: "9" });
  // The header, then each tensor's own memory: nothing copied.
  assert.equal(parts.length, 3);
  assert.equal(parts[1]!.buffer, big.data.buffer);
  const bytes = bodyBytes(parts);
  assert.deepEqual(bytes, sync);
  const back = await decodeTensorObjectAsync(bytes, "k");
  assert.deepEqual(back.metadata, { generated: "9" });
  assert.deepEqual(back.tensors.get("big")!.data, big.data);
  const corrupt = bytes.slice();
  corrupt[corrupt.length - 100] = corrupt[corrupt.length - 100]! ^ 1;
  await assert.rejects(
    decodeTensorObjectAsync(corrupt, "k"),
    (e: unknown) => e instanceof FarmError && e.status === "DATA_LOSS",
  );
});
