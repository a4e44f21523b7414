import { test } from "node:test";
import assert from "node:assert/strict";
import { decodeSafetensors, encodeSafetensors } from "../../shared/tensor/safetensors.js";
import { Tensor } from "../../shared/tensor/tensor.js";
import { FarmError } from "../../shared/errors.js";

test("round trip of every supported dtype, with metadata", () => {
  const tensors = new Map<string, Tensor>([
    ["f32", Tensor.f32([2, 2], [1, -2, 3.5, 4])],
    ["i64", Tensor.i64([3], [1, -2, 9007199254740993n])],
    ["u8", new Tensor("uint8", [2], Uint8Array.of(0, 255))],
    ["f16", new Tensor("float16", [1], Uint16Array.of(0x3c00))],
    ["scalar", Tensor.f32([], [7])],
  ]);
  const back = decodeSafetensors(encodeSafetensors(tensors, { job: "x" }));
  assert.equal(back.metadata["job"], "x");
  for (const [k, t] of tensors) {
    assert.deepEqual(back.tensors.get(k)!.shape, t.shape);
    assert.deepEqual(
      Array.from(back.tensors.get(k)!.data as ArrayLike<unknown>),
      Array.from(t.data as ArrayLike<unknown>),
    );
  }
});

test("unaligned data still decodes", () => {
  const bytes = encodeSafetensors({ a: new Tensor("uint8", [1], Uint8Array.of(1)), b: Tensor.f32([2], [1.5, 2.5]) });
  assert.deepEqual([...(decodeSafetensors(bytes).tensors.get("b")!.data as Float32Array)], [1.5, 2.5]);
});

test("corrupt files are refused with DATA_LOSS naming the problem", () => {
  const good = encodeSafetensors({ x: Tensor.f32([4], [1, 2, 3, 4]) });
  const dataLoss = (bytes: Uint8Array, pattern: RegExp): void =>
    assert.throws(
      () => decodeSafetensors(bytes),
      (e: unknown) => e instanceof FarmError && e.status === "DATA_LOSS" && pattern.test(e.message),
    );
  dataLoss(new Uint8Array(3), /too short/);
  dataLoss(good.subarray(0, good.length - 4), /outside/);
  const huge = good.slice();
  new DataView(huge.buffer).setBigUint64(0, 1n << 40n, true);
  dataLoss(huge, /header length/);
  const notJson = good.slice();
  notJson[8] = 0x7b + 1;
  dataLoss(notJson, /JSON/);
  const header = (h: unknown, data = 0): Uint8Array => {
    const j = new TextEncoder().encode(JSON.stringify(h));
    const out = new Uint8Array(8 + j.length + data);
    new DataView(out.buffer).setBigUint64(0, BigInt(j.length), true);
    out.set(j, 8);
    return out;
  };
  dataLoss(header({ x: { dtype: "F32", shape: [2], data_offsets: [0, 4] } }, 8), /do not hold/);
  dataLoss(header({ x: { dtype: "Q8", shape: [1], data_offsets: [0, 1] } }, 1), /unsupported dtype/);
  dataLoss(
    header(
      { a: { dtype: "U8", shape: [2], data_offsets: [0, 2] }, b: { dtype: "U8", shape: [2], data_offsets: [1, 3] } },
      3,
    ),
    /overlap/,
  );
});
