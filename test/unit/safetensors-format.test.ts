/** The safetensors codec in depth: every dtype, the reference files, unaligned and corrupt inputs. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { decodeSafetensors, encodeSafetensors } from "../../shared/tensor/safetensors.js";
import { Tensor } from "../../shared/tensor/tensor.js";
import { FarmError } from "../../shared/errors.js";
import { listCases, loadCase } from "../support/reference.js";

function sample(): Map<string, Tensor> {
  return new Map<string, Tensor>([
    ["f32", Tensor.f32([2, 3], [1, 2, 3, 4, 5, -6.5])],
    ["f64", new Tensor("float64", [2], Float64Array.from([Math.PI, -1e300]))],
    ["f16", new Tensor("float16", [3], Uint16Array.from([0x3c00, 0x8000, 0x7bff]))],
    ["bf16", new Tensor("bfloat16", [1, 1], Uint16Array.from([0x3f80]))],
    ["i64", Tensor.i64([2], [-(2n ** 62n), 7n])],
    ["i32", new Tensor("int32", [1], Int32Array.from([-5]))],
    ["u8", new Tensor("uint8", [3], Uint8Array.from([0, 128, 255]))],
    ["bool", new Tensor("bool", [2], Uint8Array.from([1, 0]))],
    ["empty", Tensor.zeros([0, 4])],
    ["scalar", Tensor.f32([], [42])],
  ]);
}

/** A file from a hand-written header and data section. */
function file(header: unknown, data: Uint8Array, rawHeader?: string): Uint8Array {
  const json = new TextEncoder().encode(rawHeader ?? JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

function dataLoss(fn: () => unknown, pattern: RegExp): void {
  assert.throws(
    fn,
    (err: unknown) => err instanceof FarmError && err.status === "DATA_LOSS" && pattern.test(err.message),
  );
}

test("every dtype round-trips with metadata, data 8-byte aligned", () => {
  const tensors = sample();
  const bytes = encodeSafetensors(tensors, { format: "pt", note: "ü" });
  const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal((8 + headerLen) % 8, 0);
  const back = decodeSafetensors(bytes);
  assert.deepEqual(back.metadata, { format: "pt", note: "ü" });
  assert.deepEqual([...back.tensors.keys()], [...tensors.keys()]);
  for (const [name, t] of tensors) {
    const u = back.tensors.get(name)!;
    assert.equal(u.dtype, t.dtype, name);
    assert.deepEqual(u.shape, t.shape, name);
    assert.deepEqual(u.data, t.data, name);
  }
});

test("unaligned tensors decode (copied) and a file inside a larger buffer decodes", () => {
  const header = {
    a: { dtype: "U8", shape: [1], data_offsets: [0, 1] },
    b: { dtype: "F32", shape: [2], data_offsets: [1, 9] },
    c: { dtype: "I64", shape: [1], data_offsets: [9, 17] },
  };
  const data = new Uint8Array(17);
  data[0] = 9;
  const dv = new DataView(data.buffer);
  dv.setFloat32(1, 1.25, true);
  dv.setFloat32(5, -3, true);
  dv.setBigInt64(9, -2n, true);
  const f = file(header, data);
  const shifted = new Uint8Array(f.length + 3);
  shifted.set(f, 3);
  const t = decodeSafetensors(shifted.subarray(3)).tensors;
  assert.deepEqual([...t.get("a")!.data], [9]);
  assert.deepEqual([...(t.get("b")!.data as Float32Array)], [1.25, -3]);
  assert.deepEqual([...(t.get("c")!.data as BigInt64Array)], [-2n]);
});

test("the reference files decode and re-encode to the same tensors", () => {
  for (const name of listCases()) {
    const { tensors } = loadCase(name);
    assert.ok(tensors.size > 20, name);
    const again = decodeSafetensors(encodeSafetensors(tensors)).tensors;
    for (const [k, t] of tensors) assert.deepEqual(again.get(k)!.data, t.data, `${name}:${k}`);
  }
});

test("corrupt files are DATA_LOSS with a message naming the problem", () => {
  const ok = { x: { dtype: "F32", shape: [2], data_offsets: [0, 8] } };
  dataLoss(() => decodeSafetensors(new Uint8Array(5)), /too short/);
  const huge = new Uint8Array(16);
  new DataView(huge.buffer).setBigUint64(0, 2n ** 40n, true);
  dataLoss(() => decodeSafetensors(huge), /header length/);
  const over = file(ok, new Uint8Array(8));
  new DataView(over.buffer).setBigUint64(0, BigInt(over.length), true);
  dataLoss(() => decodeSafetensors(over), /exceeds/);
  dataLoss(() => decodeSafetensors(file(null, new Uint8Array(0), "{not json")), /JSON/);
  dataLoss(() => decodeSafetensors(file(null, new Uint8Array(0), "[1]")), /not a JSON object/);
  dataLoss(
    () => decodeSafetensors(file({ x: { dtype: "F8", shape: [1], data_offsets: [0, 1] } }, new Uint8Array(1))),
    /tensor x: unsupported dtype/,
  );
  dataLoss(
    () => decodeSafetensors(file({ x: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }, new Uint8Array(4))),
    /tensor x: shape/,
  );
  dataLoss(
    () => decodeSafetensors(file({ x: { dtype: "F32", shape: [2], data_offsets: [0] } }, new Uint8Array(8))),
    /data_offsets/,
  );
  dataLoss(
    () => decodeSafetensors(file({ x: { dtype: "F32", shape: [2], data_offsets: [8, 0] } }, new Uint8Array(8))),
    /end before/,
  );
  dataLoss(
    () => decodeSafetensors(file({ x: { dtype: "F32", shape: [2], data_offsets: [0, 16] } }, new Uint8Array(8))),
    /outside/,
  );
  dataLoss(
    () => decodeSafetensors(file({ x: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8))),
    /do not hold/,
  );
  const two = (a: [number, number], b: [number, number], size: number): Uint8Array =>
    file(
      {
        a: { dtype: "U8", shape: [a[1] - a[0]], data_offsets: a },
        b: { dtype: "U8", shape: [b[1] - b[0]], data_offsets: b },
      },
      new Uint8Array(size),
    );
  dataLoss(() => decodeSafetensors(two([0, 4], [2, 6], 6)), /overlaps/);
  dataLoss(() => decodeSafetensors(two([0, 2], [3, 6], 6)), /gap/);
  dataLoss(() => decodeSafetensors(two([0, 2], [2, 4], 6)), /cover 4 of the 6/);
  assert.equal(decodeSafetensors(two([2, 6], [0, 2], 6)).tensors.get("a")!.numel, 4); // order in the header is free
  dataLoss(() => decodeSafetensors(file({ __metadata__: { a: 1 } }, new Uint8Array(0))), /__metadata__/);
  dataLoss(
    () => decodeSafetensors(file({ b: { dtype: "BOOL", shape: [1], data_offsets: [0, 1] } }, Uint8Array.of(2))),
    /BOOL/,
  );
});

test("encoding refuses reserved names", () => {
  assert.throws(
    () => encodeSafetensors({ __metadata__: Tensor.zeros([1]) }),
    (err: unknown) => err instanceof FarmError && err.status === "INVALID_ARGUMENT",
  );
  const proto = decodeSafetensors(encodeSafetensors(new Map([["__proto__", Tensor.f32([1], [3])]]))).tensors;
  assert.deepEqual([...proto.get("__proto__")!.data], [3]);
});
