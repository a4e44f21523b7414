/**
 * The safetensors format: an 8-byte little-endian header length, a JSON header mapping names to
 * {dtype, shape, data_offsets} (plus an optional "__metadata__" of strings), then the raw
 * little-endian data. Decoding validates every field as the reference implementation does (data
 * offsets must tile the byte buffer exactly, in order), because these files arrive from object
 * storage and other nodes: a corrupt file is DATA_LOSS, never a silently wrong tensor.
 */
import { FarmError } from "../errors.js";
import { Tensor, type DType, type DataOf } from "./tensor.js";

const CODES: Readonly<Record<string, DType>> = {
  F32: "float32",
  F64: "float64",
  F16: "float16",
  BF16: "bfloat16",
  I64: "int64",
  I32: "int32",
  U8: "uint8",
  BOOL: "bool",
};
const CODE_OF: Readonly<Record<DType, string>> = {
  float32: "F32",
  float64: "F64",
  float16: "F16",
  bfloat16: "BF16",
  int64: "I64",
  int32: "I32",
  uint8: "U8",
  bool: "BOOL",
};
const BYTES: Readonly<Record<DType, number>> = {
  float32: 4,
  float64: 8,
  float16: 2,
  bfloat16: 2,
  int64: 8,
  int32: 4,
  uint8: 1,
  bool: 1,
};
/** The reference implementation's limit on the JSON header. */
const MAX_HEADER = 100_000_000;
const METADATA = "__metadata__";

export interface Safetensors {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
}

function corrupt(message: string): FarmError {
  return new FarmError("DATA_LOSS", `safetensors: ${message}`);
}

/** True when this machine stores multi-byte numbers little-endian (typed arrays use host order). */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * A typed array over the bytes of one tensor: a view when the offset is aligned for the element
 * size, else a copy (typed arrays cannot start at unaligned offsets).
 */
function view<D extends DType>(dtype: D, bytes: Uint8Array): DataOf[D] {
  const size = BYTES[dtype];
  const aligned = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  const { buffer, byteOffset, byteLength } = aligned;
  const n = byteLength / size;
  switch (dtype) {
    case "float32":
      return new Float32Array(buffer, byteOffset, n) as DataOf[D];
    case "float64":
      return new Float64Array(buffer, byteOffset, n) as DataOf[D];
    case "float16":
    case "bfloat16":
      return new Uint16Array(buffer, byteOffset, n) as DataOf[D];
    case "int64":
      return new BigInt64Array(buffer, byteOffset, n) as DataOf[D];
    case "int32":
      return new Int32Array(buffer, byteOffset, n) as DataOf[D];
    default:
      return new Uint8Array(buffer, byteOffset, n) as DataOf[D];
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Element count of a header shape, refusing counts past 2^53 (no real file holds them). */
function checkedNumel(name: string, shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    n *= d;
    if (!Number.isSafeInteger(n)) throw corrupt(`tensor ${name}: shape [${shape.join(",")}] is too large`);
  }
  return n;
}

/**
 * Decodes a whole safetensors file. Tensors are zero-copy views of `bytes` where alignment allows,
 * so they alias the caller's buffer. Throws FarmError DATA_LOSS naming the offending tensor.
 */
export function decodeSafetensors(bytes: Uint8Array): Safetensors {
  if (!LITTLE_ENDIAN) throw new FarmError("FAILED_PRECONDITION", "safetensors: big-endian hosts are not supported");
  if (bytes.length < 8) throw corrupt(`file of ${bytes.length} bytes is too short for the 8-byte header length`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = dv.getBigUint64(0, true);
  if (headerLen > BigInt(MAX_HEADER)) throw corrupt(`header length ${headerLen} exceeds the ${MAX_HEADER}-byte limit`);
  if (headerLen > BigInt(bytes.length - 8))
    throw corrupt(`header length ${headerLen} exceeds the ${bytes.length - 8} bytes after it`);
  const n = Number(headerLen);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + n)));
  } catch (err) {
    throw corrupt(`header is not valid UTF-8 JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  if (!isObject(header)) throw corrupt("header is not a JSON object");
  const data = bytes.subarray(8 + n);
  const metadata: Record<string, string> = {};
  const entries: { name: string; dtype: DType; shape: number[]; begin: number; end: number }[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === METADATA) {
      if (!isObject(entry)) throw corrupt("__metadata__ is not an object");
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== "string") throw corrupt(`__metadata__ value of ${JSON.stringify(k)} is not a string`);
        metadata[k] = v;
      }
      continue;
    }
    if (!isObject(entry)) throw corrupt(`tensor ${name}: entry is not an object`);
    const dtype = typeof entry["dtype"] === "string" ? CODES[entry["dtype"]] : undefined;
    if (dtype === undefined) throw corrupt(`tensor ${name}: unsupported dtype ${JSON.stringify(entry["dtype"])}`);
    const shape = entry["shape"];
    if (!Array.isArray(shape) || !shape.every((d): d is number => Number.isSafeInteger(d) && (d as number) >= 0)) {
      throw corrupt(`tensor ${name}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    }
    const offs = entry["data_offsets"];
    if (
      !Array.isArray(offs) ||
      offs.length !== 2 ||
      !offs.every((o): o is number => Number.isSafeInteger(o) && (o as number) >= 0)
    ) {
      throw corrupt(`tensor ${name}: data_offsets ${JSON.stringify(offs)} is not a pair of non-negative integers`);
    }
    const [begin, end] = offs as [number, number];
    if (end < begin) throw corrupt(`tensor ${name}: data_offsets [${begin}, ${end}] end before they begin`);
    if (end > data.length)
      throw corrupt(`tensor ${name}: data [${begin}, ${end}) lies outside the ${data.length} data bytes`);
    const want = checkedNumel(name, shape) * BYTES[dtype];
    if (end - begin !== want)
      throw corrupt(`tensor ${name}: ${end - begin} bytes do not hold ${dtype}[${shape.join(",")}] (${want} bytes)`);
    entries.push({ name, dtype, shape, begin, end });
  }
  // The data section must be tiled exactly: sorted by offset, each tensor starts where the last
  // ended, and the last ends at the end of the file. This rules out overlaps and hidden bytes.
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  for (const e of sorted) {
    if (e.begin < at)
      throw corrupt(`tensor ${e.name} overlaps the tensor before it (starts at ${e.begin}, previous ends at ${at})`);
    if (e.begin > at) throw corrupt(`tensor ${e.name} starts at ${e.begin}, leaving a gap after byte ${at}`);
    at = e.end;
  }
  if (at !== data.length) throw corrupt(`tensors cover ${at} of the ${data.length} data bytes`);
  const tensors = new Map<string, Tensor>();
  for (const e of entries) {
    const values = view(e.dtype, data.subarray(e.begin, e.end));
    if (e.dtype === "bool" && (values as Uint8Array).some((v) => v > 1))
      throw corrupt(`tensor ${e.name}: BOOL bytes other than 0 and 1`);
    tensors.set(e.name, new Tensor(e.dtype, e.shape, values));
  }
  return { tensors, metadata };
}

/**
 * Encodes tensors in the given order, data packed without gaps and the header padded with spaces
 * so the data starts 8-byte aligned (as the reference writer does). Throws INVALID_ARGUMENT for a
 * name the format cannot carry.
 */
export function encodeSafetensors(
  tensors: ReadonlyMap<string, Tensor> | Readonly<Record<string, Tensor>>,
  metadata?: Readonly<Record<string, string>>,
): Uint8Array {
  // A buffer of its own (offset 0), not Buffer.concat's pooled slice: decoders view the tensors in
  // place only when their data is aligned.
  const parts = safetensorsParts(tensors, metadata);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/**
 * The same file as encodeSafetensors, as its header followed by a view of each tensor's own bytes
 * (nothing copied): a store that writes parts in order skips building one buffer of the whole
 * object, which for a section's video (340 MB at 640x640) cost more than hashing and writing it.
 */
export function safetensorsParts(
  tensors: ReadonlyMap<string, Tensor> | Readonly<Record<string, Tensor>>,
  metadata?: Readonly<Record<string, string>>,
): Uint8Array[] {
  if (!LITTLE_ENDIAN) throw new FarmError("FAILED_PRECONDITION", "safetensors: big-endian hosts are not supported");
  const entries: [string, Tensor][] = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  // Build the header without a prototype so a tensor named "__proto__" stays an ordinary key.
  const header = Object.create(null) as Record<string, unknown>;
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string")
        throw new FarmError("INVALID_ARGUMENT", `safetensors: metadata ${JSON.stringify(k)} must be a string`);
    }
    header[METADATA] = metadata;
  }
  let offset = 0;
  for (const [name, t] of entries) {
    if (name === "" || name === METADATA)
      throw new FarmError("INVALID_ARGUMENT", `safetensors: tensor name ${JSON.stringify(name)} is reserved or empty`);
    const len = t.numel * BYTES[t.dtype];
    header[name] = { dtype: CODE_OF[t.dtype], shape: t.shape, data_offsets: [offset, offset + len] };
    offset += len;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const pad = (8 - ((8 + json.length) % 8)) % 8;
  const headerLen = json.length + pad;
  const head = new Uint8Array(8 + headerLen);
  new DataView(head.buffer).setBigUint64(0, BigInt(headerLen), true);
  head.set(json, 8);
  head.fill(0x20, 8 + json.length, 8 + headerLen);
  return [head, ...entries.map(([, t]) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength))];
}
