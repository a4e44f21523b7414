/**
 * Just enough of the protobuf wire format to read an ONNX model's graph and write a modified one:
 * fields are kept as raw byte spans, so everything this code does not understand is copied as is.
 */

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
  let p = 0;
  const varint = (): bigint => {
    let r = 0n;
    let s = 0n;
    for (;;) {
      if (p >= buf.length) throw new RangeError("truncated protobuf varint");
      const b = buf[p++]!;
      r |= BigInt(b & 0x7f) << s;
      s += 7n;
      if ((b & 0x80) === 0) return r;
    }
  };
  while (p < buf.length) {
    const start = p;
    const key = Number(varint());
    const no = key >>> 3;
    const wireType = key & 7;
    let value = 0n;
    let payload: Uint8Array = new Uint8Array(0);
    if (wireType === 0) value = varint();
    else if (wireType === 2) {
      const len = Number(varint());
      if (p + len > buf.length) throw new RangeError("truncated protobuf field");
      payload = buf.subarray(p, p + len);
      p += len;
    } else if (wireType === 5 || wireType === 1) {
      const len = wireType === 5 ? 4 : 8;
      payload = buf.subarray(p, p + len);
      p += len;
    } else throw new RangeError(`unsupported protobuf wire type ${wireType}`);
    out.push({ no, wireType, varint: value, payload, raw: buf.subarray(start, p) });
  }
  return out;
}

const utf8 = new TextDecoder();
const encoder = new TextEncoder();

export const fieldString = (f: Field): string => utf8.decode(f.payload);

/** Packed or repeated int64 values of field `no`. */
export function int64s(fields: Field[], no: number): bigint[] {
  const out: bigint[] = [];
  for (const f of fields) {
    if (f.no !== no) continue;
    if (f.wireType === 0) out.push(BigInt.asIntN(64, f.varint));
    else if (f.wireType === 2) {
      let p = 0;
      const b = f.payload;
      while (p < b.length) {
        let r = 0n;
        let s = 0n;
        for (;;) {
          const x = b[p++]!;
          r |= BigInt(x & 0x7f) << s;
          s += 7n;
          if ((x & 0x80) === 0) break;
        }
        out.push(BigInt.asIntN(64, r));
      }
    }
  }
  return out;
}

export class Writer {
  private readonly parts: Uint8Array[] = [];
  private size = 0;

  raw(bytes: Uint8Array): this {
    this.parts.push(bytes);
    this.size += bytes.length;
    return this;
  }

  private varintBytes(v: bigint): Uint8Array {
    const out: number[] = [];
    let x = BigInt.asUintN(64, v);
    do {
      let b = Number(x & 0x7fn);
      x >>= 7n;
      if (x !== 0n) b |= 0x80;
      out.push(b);
    } while (x !== 0n);
    return Uint8Array.from(out);
  }

  int(no: number, v: number | bigint): this {
    this.raw(this.varintBytes(BigInt((no << 3) | 0)));
    return this.raw(this.varintBytes(BigInt(v)));
  }

  bytes(no: number, data: Uint8Array): this {
    this.raw(this.varintBytes(BigInt((no << 3) | 2)));
    this.raw(this.varintBytes(BigInt(data.length)));
    return this.raw(data);
  }

  string(no: number, s: string): this {
    return this.bytes(no, encoder.encode(s));
  }

  message(no: number, build: (w: Writer) => void): this {
    const w = new Writer();
    build(w);
    return this.bytes(no, w.finish());
  }

  finish(): Uint8Array {
    const out = new Uint8Array(this.size);
    let p = 0;
    for (const part of this.parts) {
      out.set(part, p);
      p += part.length;
    }
    return out;
  }
}
