/**
 * An ONNX model's protobuf read field by field and written back, on @bufbuild/protobuf's wire
 * codec. Fields stay raw byte spans, so whatever this code does not look at (new ONNX fields
 * included) is copied as it was; a schema-based decoder would drop fields its schema predates.
 */
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";

export interface Field {
  no: number;
  wireType: number;
  /** Varint fields: the value; length-delimited fields: the payload; fixed fields: the payload bytes. */
  varint: bigint;
  payload: Uint8Array;
  /** The whole field, tag included, as it appears in the message. */
  raw: Uint8Array;
}

export function readFields(buf: Uint8Array): Field[] {
  const out: Field[] = [];
  const r = new BinaryReader(buf);
  while (r.pos < r.len) {
    const start = r.pos;
    const [no, wireType] = r.tag();
    let varint = 0n;
    let payload: Uint8Array = new Uint8Array(0);
    if (wireType === WireType.Varint) varint = BigInt(r.uint64());
    else if (wireType === WireType.LengthDelimited) payload = r.bytes();
    else if (wireType === WireType.Bit32 || wireType === WireType.Bit64) payload = r.skip(wireType);
    else throw new RangeError(`unsupported protobuf wire type ${wireType}`);
    out.push({ no, wireType, varint, payload, raw: buf.subarray(start, r.pos) });
  }
  return out;
}

const utf8 = new TextDecoder();

export const fieldString = (f: Field): string => utf8.decode(f.payload);

/** Packed or repeated int64 values of field `no`. */
export function int64s(fields: Field[], no: number): bigint[] {
  const out: bigint[] = [];
  for (const f of fields) {
    if (f.no !== no) continue;
    if (f.wireType === WireType.Varint) out.push(BigInt.asIntN(64, f.varint));
    else if (f.wireType === WireType.LengthDelimited) {
      const r = new BinaryReader(f.payload);
      while (r.pos < r.len) out.push(BigInt(r.int64()));
    }
  }
  return out;
}

/** Builds a message: raw fields copied from a read one, new fields encoded. */
export class Writer {
  private readonly w = new BinaryWriter();

  raw(bytes: Uint8Array): this {
    this.w.raw(bytes);
    return this;
  }

  int(no: number, v: number | bigint): this {
    this.w.tag(no, WireType.Varint).int64(v);
    return this;
  }

  bytes(no: number, data: Uint8Array): this {
    this.w.tag(no, WireType.LengthDelimited).bytes(data);
    return this;
  }

  string(no: number, s: string): this {
    this.w.tag(no, WireType.LengthDelimited).string(s);
    return this;
  }

  message(no: number, build: (w: Writer) => void): this {
    const inner = new Writer();
    build(inner);
    return this.bytes(no, inner.finish());
  }

  finish(): Uint8Array {
    return this.w.finish();
  }
}
