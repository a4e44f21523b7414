/**
 * The safetensors format: an 8-byte little-endian header length, a JSON header mapping names to
 * {dtype, shape, data_offsets}, then the raw little-endian data. Decoding validates every field,
 * because these files arrive from object storage and other nodes.
 */
import { FarmError } from "../errors.js";
import { Tensor, numelOf, type DType, type DataOf } from "./tensor.js";

const CODES: Record<string, DType> = { F32: "float32", F64: "float64", F16: "float16", BF16: "bfloat16", I64: "int64", I32: "int32", U8: "uint8", BOOL: "bool" };
const CODE_OF: Record<DType, string> = Object.fromEntries(Object.entries(CODES).map(([k, v]) => [v, k])) as Record<DType, string>;
const BYTES: Record<DType, number> = { float32: 4, float64: 8, float16: 2, bfloat16: 2, int64: 8, int32: 4, uint8: 1, bool: 1 };
const MAX_HEADER = 100 * 1024 * 1024;

export interface Safetensors {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
}

function corrupt(message: string): FarmError {
  return new FarmError("DATA_LOSS", `safetensors: ${message}`);
}

function view<D extends DType>(dtype: D, bytes: Uint8Array): DataOf[D] {
  // Typed arrays need aligned offsets; copy when the slice is not aligned.
  const size = BYTES[dtype];
  const aligned = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  const { buffer, byteOffset, byteLength } = aligned;
  const n = byteLength / size;
  switch (dtype) {
    case "float32": return new Float32Array(buffer, byteOffset, n) as DataOf[D];
    case "float64": return new Float64Array(buffer, byteOffset, n) as DataOf[D];
    case "float16":
    case "bfloat16": return new Uint16Array(buffer, byteOffset, n) as DataOf[D];
    case "int64": return new BigInt64Array(buffer, byteOffset, n) as DataOf[D];
    case "int32": return new Int32Array(buffer, byteOffset, n) as DataOf[D];
    default: return new Uint8Array(buffer, byteOffset, n) as DataOf[D];
  }
}

export function decodeSafetensors(bytes: Uint8Array): Safetensors {
  if (bytes.length < 8) throw corrupt(`file of ${bytes.length} bytes is too short`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = dv.getBigUint64(0, true);
  if (headerLen > BigInt(Math.min(MAX_HEADER, bytes.length - 8))) throw corrupt(`header length ${headerLen} exceeds the file`);
  const n = Number(headerLen);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + n)));
  } catch (err) {
    throw corrupt(`header is not valid UTF-8 JSON (${(err as Error).message})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) throw corrupt("header is not an object");
  const data = bytes.subarray(8 + n);
  const tensors = new Map<string, Tensor>();
  let metadata: Record<string, string> = {};
  const spans: [number, number, string][] = [];
  for (const [name, entry] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      metadata = entry as Record<string, string>;
      continue;
    }
    const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const dtype = typeof e.dtype === "string" ? CODES[e.dtype] : undefined;
    if (dtype === undefined) throw corrupt(`tensor ${name}: unsupported dtype ${JSON.stringify(e.dtype)}`);
    if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw corrupt(`tensor ${name}: bad shape`);
    const offs = e.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0)) throw corrupt(`tensor ${name}: bad data_offsets`);
    const [begin, end] = offs as [number, number];
    const shape = e.shape as number[];
    if (end < begin || end > data.length) throw corrupt(`tensor ${name}: data [${begin}, ${end}) lies outside the ${data.length} data bytes`);
    if (end - begin !== numelOf(shape) * BYTES[dtype]) throw corrupt(`tensor ${name}: ${end - begin} bytes do not hold ${dtype}[${shape.join(",")}]`);
    spans.push([begin, end, name]);
    tensors.set(name, new Tensor(dtype, shape, view(dtype, data.subarray(begin, end))));
  }
  spans.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i]![0] < spans[i - 1]![1]) throw corrupt(`tensors ${spans[i - 1]![2]} and ${spans[i]![2]} overlap`);
  }
  return { tensors, metadata };
}

export function encodeSafetensors(tensors: ReadonlyMap<string, Tensor> | Record<string, Tensor>, metadata?: Record<string, string>): Uint8Array {
  const entries: [string, Tensor][] = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) header["__metadata__"] = metadata;
  let offset = 0;
  for (const [name, t] of entries) {
    const len = t.numel * BYTES[t.dtype];
    header[name] = { dtype: CODE_OF[t.dtype], shape: t.shape, data_offsets: [offset, offset + len] };
    offset += len;
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces so the data starts 8-byte aligned, as the reference writer does.
  json += " ".repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const [, t] of entries) {
    const d = t.data;
    const bytes = new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
    out.set(bytes, at);
    at += bytes.length;
  }
  return out;
}
