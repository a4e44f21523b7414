/**
 * Fuses a job's LoRAs into a transformer graph: for every targeted Linear, W + sum_i(weight_i *
 * scale_i * B_i A_i), written as a graph of its own whose fused initializers live in an external
 * data file beside it, every other initializer as the bundle has it (an external data file of the
 * bundle's is linked in, not copied). onnxruntime-node 1.29 cannot replace one initializer of a
 * session (it takes external data files in memory, externalData, but not AddInitializer), and a
 * fused copy on disk lets a node keep variants for later jobs without holding them in memory.
 *
 * The delta is one matrix product per Linear, run by onnxruntime on the CPU (a two-input MatMul
 * graph, the LoRAs' ranks concatenated: B = [w1 s1 B1 | w2 s2 B2 ...], A = [A1; A2 ...]), not a
 * JavaScript loop: at the real model's width a rank-32 delta of a 3072 x 12288 weight is 2.4
 * GFLOP, about 400 of them per LoRA set.
 */
import { mkdir, open, readFile, rename, rm, symlink, type FileHandle } from "node:fs/promises";
import path from "node:path";
import ort from "onnxruntime-node";
import { FarmError } from "../../shared/errors.js";
import { fromBFloat16, fromFloat16, toBFloat16, toFloat16 } from "../../shared/tensor/half.js";
import type { LoraPair, LoraTarget, LoraTargets } from "../../shared/lora/lora-file.js";
import { fieldString, int64s, readFields, Writer, type Field } from "./onnx-proto.js";

/** One LoRA of a set: its pairs and the job's weight for it. */
export interface WeightedLora {
  pairs: readonly LoraPair[];
  weight: number;
}

/** ONNX TensorProto data types of the initializers LoRAs fuse into. */
const ONNX_TYPES = { fp32: 1, fp16: 10, bf16: 16 } as const;

/** A graph computing Y = W + X @ Z (float32, any sizes): the fusion's only kernel. */
function fusionGraph(): Uint8Array {
  const tensorType = (w: Writer, dims: string[]): void => {
    w.message(1, (t) => {
      t.int(1, 1);
      t.message(2, (shape) => {
        for (const d of dims) shape.message(1, (dim) => dim.string(2, d));
      });
    });
  };
  const value = (w: Writer, no: number, name: string, dims: string[]): void => {
    w.message(no, (v) => {
      v.string(1, name);
      v.message(2, (t) => tensorType(t, dims));
    });
  };
  return new Writer()
    .int(1, 8)
    .string(2, "framefarm")
    .message(7, (g) => {
      g.message(1, (n) => n.string(1, "X").string(1, "Z").string(2, "D").string(4, "MatMul"));
      g.message(1, (n) => n.string(1, "W").string(1, "D").string(2, "Y").string(4, "Add"));
      g.string(2, "lora_fusion");
      value(g, 11, "W", ["m", "n"]);
      value(g, 11, "X", ["m", "r"]);
      value(g, 11, "Z", ["r", "n"]);
      value(g, 12, "Y", ["m", "n"]);
    })
    .message(8, (o) => o.string(1, "").int(2, 13))
    .finish();
}

let fusionSession: Promise<ort.InferenceSession> | undefined;

function fusion(): Promise<ort.InferenceSession> {
  fusionSession ??= ort.InferenceSession.create(fusionGraph(), {
    executionProviders: ["cpu"],
    graphOptimizationLevel: "disabled",
    enableCpuMemArena: false,
    logSeverityLevel: 3,
  });
  return fusionSession;
}

/**
 * The fused weight of one Linear in its stored layout: W + X @ Z, where for [out, in] X = B [out,
 * R] and Z = A [R, in], and for [in, out] X = A^T and Z = B^T. R sums the ranks.
 */
export async function fuseWeight(
  base: Float32Array,
  target: LoraTarget,
  contributions: readonly { pair: LoraPair; factor: number }[],
): Promise<Float32Array> {
  const { out, in: inDim } = target;
  const R = contributions.reduce((n, c) => n + c.pair.rank, 0);
  const B = new Float32Array(out * R); // [out, R]
  const A = new Float32Array(R * inDim); // [R, in]
  let col = 0;
  for (const { pair, factor } of contributions) {
    const r = pair.rank;
    for (let o = 0; o < out; o++) for (let j = 0; j < r; j++) B[o * R + col + j] = pair.up[o * r + j]! * factor;
    A.set(pair.down, col * inDim);
    col += r;
  }
  const transposed = (m: Float32Array, rows: number, cols: number): Float32Array => {
    const t = new Float32Array(m.length);
    for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = m[i * cols + j]!;
    return t;
  };
  const [rows, cols, X, Z] =
    target.layout === "out_in" ? [out, inDim, B, A] : [inDim, out, transposed(A, R, inDim), transposed(B, out, R)];
  const session = await fusion();
  const result = await session.run({
    W: new ort.Tensor("float32", base, [rows, cols]),
    X: new ort.Tensor("float32", X, [rows, R]),
    Z: new ort.Tensor("float32", Z, [R, cols]),
  });
  return result["Y"]!.data as Float32Array;
}

/** Per initializer name: the target and every (pair, weight x scale) that feeds it, in the set's order. */
export function contributionsByInitializer(
  targets: LoraTargets,
  loras: readonly WeightedLora[],
): Map<string, { target: LoraTarget; contributions: { pair: LoraPair; factor: number }[] }> {
  const out = new Map<string, { target: LoraTarget; contributions: { pair: LoraPair; factor: number }[] }>();
  for (const lora of loras)
    for (const pair of lora.pairs) {
      const target = targets.modules[pair.module];
      if (target === undefined) throw new FarmError("INTERNAL", `LoRA module ${pair.module} has no target`);
      const e = out.get(target.initializer) ?? { target, contributions: [] };
      e.contributions.push({ pair, factor: lora.weight * pair.scale });
      out.set(target.initializer, e);
    }
  return out;
}

interface InitializerInfo {
  name: string;
  dataType: number;
  dims: bigint[];
  /** Where its bytes are: in the graph (raw_data) or in an external file of the bundle. */
  raw?: Uint8Array;
  floats?: Field;
  external?: { location: string; offset: number; length: number };
}

function initializerInfo(payload: Uint8Array): InitializerInfo {
  const fields = readFields(payload);
  const info: InitializerInfo = { name: "", dataType: 0, dims: int64s(fields, 1) };
  let location = "";
  let offset = 0;
  let length = -1;
  for (const f of fields) {
    if (f.no === 8) info.name = fieldString(f);
    else if (f.no === 2) info.dataType = Number(f.varint);
    else if (f.no === 9) info.raw = f.payload;
    else if (f.no === 4) info.floats = f;
    else if (f.no === 13) {
      let key = "";
      let value = "";
      for (const e of readFields(f.payload)) {
        if (e.no === 1) key = fieldString(e);
        else if (e.no === 2) value = fieldString(e);
      }
      if (key === "location") location = value;
      else if (key === "offset") offset = Number(value);
      else if (key === "length") length = Number(value);
    }
  }
  if (location !== "") info.external = { location, offset, length };
  return info;
}

/** An initializer's elements as float32 (fp16/bf16 widened). */
async function readBase(info: InitializerInfo, bundleDir: string, dtype: LoraTargets["dtype"]): Promise<Float32Array> {
  const count = info.dims.reduce((n, d) => n * Number(d), 1);
  const width = dtype === "fp32" ? 4 : 2;
  let bytes: Uint8Array;
  if (info.external !== undefined) {
    const length = info.external.length >= 0 ? info.external.length : count * width;
    const fh = await open(path.join(bundleDir, info.external.location), "r");
    try {
      bytes = new Uint8Array(length);
      const { bytesRead } = await fh.read(bytes, 0, length, info.external.offset);
      if (bytesRead !== length) throw new FarmError("DATA_LOSS", `${info.name}: external data ends early`);
    } finally {
      await fh.close();
    }
  } else if (info.raw !== undefined) {
    bytes = info.raw.slice();
  } else if (info.floats !== undefined && info.floats.wireType === 2 && dtype === "fp32") {
    bytes = info.floats.payload.slice();
  } else throw new FarmError("FAILED_PRECONDITION", `initializer ${info.name} holds no data framefarm can read`);
  if (bytes.length !== count * width)
    throw new FarmError(
      "FAILED_PRECONDITION",
      `initializer ${info.name}: ${bytes.length} bytes for ${count} ${dtype} values`,
    );
  const aligned = new Uint8Array(bytes).buffer;
  if (dtype === "fp32") return new Float32Array(aligned);
  return dtype === "fp16" ? fromFloat16(new Uint16Array(aligned)) : fromBFloat16(new Uint16Array(aligned));
}

function encodeFused(values: Float32Array, dtype: LoraTargets["dtype"]): Uint8Array {
  if (dtype === "fp32") return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const half = dtype === "fp16" ? toFloat16(values) : toBFloat16(values);
  return new Uint8Array(half.buffer);
}

const ALIGN = 64;

/**
 * Writes `<outDir>/<file>` (the component's graph with the fused initializers pointing at
 * `<file>.lora.data`) and that data file; the bundle's own external data files are linked into
 * outDir under their names. Written under temporary names and renamed, the graph last, so a
 * graph that exists is complete. Returns the initializers fused.
 */
export async function writeFusedGraph(
  bundleDir: string,
  file: string,
  outDir: string,
  targets: LoraTargets,
  loras: readonly WeightedLora[],
): Promise<number> {
  const model = await readFile(path.join(bundleDir, file));
  const wanted = contributionsByInitializer(targets, loras);
  const dataName = `${path.basename(file)}.lora.data`;
  await mkdir(outDir, { recursive: true });
  // Another process may build the same variant at once: temporary names of its own, same results.
  const tmp = `${process.pid}-${Math.random().toString(36).slice(2)}.tmp`;
  const tmpData = path.join(outDir, `${dataName}.${tmp}`);
  const tmpGraph = path.join(outDir, `${path.basename(file)}.${tmp}`);
  const externals = new Set<string>();
  let fused = 0;
  const data: FileHandle = await open(tmpData, "w");
  let offset = 0;
  try {
    const rewriteGraph = async (graph: Uint8Array): Promise<Uint8Array> => {
      const w = new Writer();
      for (const f of readFields(graph)) {
        if (f.no !== 5) {
          w.raw(f.raw);
          continue;
        }
        const info = initializerInfo(f.payload);
        if (info.external !== undefined) externals.add(info.external.location);
        const e = wanted.get(info.name);
        if (e === undefined) {
          w.raw(f.raw);
          continue;
        }
        const { target } = e;
        const dims = info.dims.map(Number);
        const want = target.layout === "out_in" ? [target.out, target.in] : [target.in, target.out];
        if (
          info.dataType !== ONNX_TYPES[targets.dtype] ||
          dims.length !== 2 ||
          dims[0] !== want[0] ||
          dims[1] !== want[1]
        )
          throw new FarmError(
            "FAILED_PRECONDITION",
            `${file}: initializer ${info.name} is type ${info.dataType} [${dims.join(", ")}], the manifest's lora_targets say ${targets.dtype} [${want.join(", ")}]: re-run lora_targets`,
          );
        const values = await fuseWeight(await readBase(info, bundleDir, targets.dtype), target, e.contributions);
        const bytes = encodeFused(values, targets.dtype);
        await data.write(bytes, 0, bytes.length, offset);
        w.message(5, (t) => {
          for (const d of info.dims) t.int(1, d);
          t.int(2, info.dataType);
          t.string(8, info.name);
          for (const [k, v] of [
            ["location", dataName],
            ["offset", String(offset)],
            ["length", String(bytes.length)],
          ] as const)
            t.message(13, (entry) => entry.string(1, k).string(2, v));
          t.int(14, 1);
        });
        offset += Math.ceil(bytes.length / ALIGN) * ALIGN;
        fused++;
      }
      return w.finish();
    };
    const out = new Writer();
    for (const f of readFields(model)) {
      if (f.no === 7) out.bytes(7, await rewriteGraph(f.payload));
      else out.raw(f.raw);
    }
    await data.sync();
    await data.close();
    for (const location of externals) {
      const link = path.join(outDir, location);
      await symlink(path.resolve(bundleDir, location), link).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== "EEXIST") throw err;
      });
    }
    const handle = await open(tmpGraph, "w");
    try {
      await handle.write(out.finish());
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmpData, path.join(outDir, dataName));
    await rename(tmpGraph, path.join(outDir, path.basename(file)));
    return fused;
  } catch (err) {
    await data.close().catch(() => undefined);
    await rm(tmpData, { force: true });
    await rm(tmpGraph, { force: true });
    throw err;
  }
}
