/**
 * Strict request decoding. Protobuf decoders (ts-proto's included) skip unknown fields, skip a
 * known field sent with the wrong wire type, and turn invalid UTF-8 in string fields into U+FFFD.
 * For a public API that means silently rendering something other than what was asked (a field
 * from a newer client dropped, a prompt mangled), so each request's wire bytes are first walked
 * against the .proto descriptor and refused with INVALID_ARGUMENT naming the field.
 *
 * grpc-js answers a deserializer that throws with INTERNAL, so a refused request is handed to the
 * handler as a marker object instead; the handler replies with its error (requestError()).
 */
import path from "node:path";
import { fileURLToPath } from "node:url";
import { loadSync, type PackageDefinition } from "@grpc/proto-loader";
import { FarmError } from "../../shared/errors.js";

interface FieldDesc {
  name: string;
  number: number;
  label: string;
  type: string;
  typeName: string;
}

interface MessageDesc {
  fullName: string;
  fields: Map<number, FieldDesc>;
}

/** Wire type of each scalar and LEN type, by descriptor type name. */
const WIRE_TYPE: Record<string, number> = {
  TYPE_DOUBLE: 1,
  TYPE_FIXED64: 1,
  TYPE_SFIXED64: 1,
  TYPE_FLOAT: 5,
  TYPE_FIXED32: 5,
  TYPE_SFIXED32: 5,
  TYPE_INT64: 0,
  TYPE_UINT64: 0,
  TYPE_INT32: 0,
  TYPE_UINT32: 0,
  TYPE_BOOL: 0,
  TYPE_ENUM: 0,
  TYPE_SINT32: 0,
  TYPE_SINT64: 0,
  TYPE_STRING: 2,
  TYPE_BYTES: 2,
  TYPE_MESSAGE: 2,
};

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** proto/ at the package root (this file is dist/coordinator/api/strict-decode.js). */
const PROTO_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "proto");

export class StrictDecoder {
  private constructor(private readonly messages: Map<string, MessageDesc>) {}

  /** From a proto-loader package definition loaded with keepCase (so errors use .proto names). */
  static fromPackageDefinition(def: PackageDefinition): StrictDecoder {
    const messages = new Map<string, MessageDesc>();
    for (const [fullName, entry] of Object.entries(def)) {
      const e = entry as { format?: string; type?: { field?: FieldDesc[] } };
      if (e.format !== "Protocol Buffer 3 DescriptorProto" || e.type?.field === undefined) continue;
      messages.set(fullName, { fullName, fields: new Map(e.type.field.map((f) => [f.number, f])) });
    }
    return new StrictDecoder(messages);
  }

  /** The public API's messages (framefarm/v1/jobs.proto). */
  static forJobsProto(): StrictDecoder {
    return StrictDecoder.fromPackageDefinition(
      loadSync(path.join(PROTO_DIR, "framefarm", "v1", "jobs.proto"), { includeDirs: [PROTO_DIR], keepCase: true }),
    );
  }

  /** Throws INVALID_ARGUMENT unless bytes are a well-formed typeName with only known fields and valid UTF-8. */
  check(typeName: string, bytes: Uint8Array): void {
    const msg = this.messages.get(typeName);
    if (msg === undefined) throw new FarmError("INTERNAL", `no descriptor for ${typeName}`);
    this.walk(msg, bytes, 0, bytes.length, "");
  }

  private resolve(typeName: string, from: MessageDesc): MessageDesc | undefined {
    // proto-loader leaves type names as written in the .proto: relative to the package, or full.
    const name = typeName.replace(/^\./, "");
    const pkg = from.fullName.slice(0, from.fullName.lastIndexOf("."));
    return this.messages.get(`${pkg}.${name}`) ?? this.messages.get(name);
  }

  private walk(msg: MessageDesc, buf: Uint8Array, start: number, end: number, at: string): void {
    const where = at === "" ? msg.fullName : `${at} (${msg.fullName})`;
    const malformed = (why: string, pos: number): FarmError =>
      new FarmError("INVALID_ARGUMENT", `request is not valid protobuf: ${why} in ${where} at byte ${pos}`);
    let pos = start;
    const varint = (): number => {
      let value = 0;
      for (let i = 0, scale = 1; i < 10; i++, scale *= 128) {
        if (pos >= end) throw malformed("truncated varint", pos);
        const b = buf[pos++]!;
        value += (b & 0x7f) * scale;
        if ((b & 0x80) === 0) return value;
      }
      throw malformed("varint longer than 10 bytes", pos);
    };
    while (pos < end) {
      const tagAt = pos;
      const tag = varint();
      const number = Math.floor(tag / 8);
      const wire = tag % 8;
      if (number === 0) throw malformed("field number 0", tagAt);
      const field = msg.fields.get(number);
      if (field === undefined) {
        throw new FarmError(
          "INVALID_ARGUMENT",
          `unknown field ${number} in ${where}: this server accepts only the fields of its framefarm/v1/jobs.proto (is the client built from a newer .proto?)`,
        );
      }
      const name = at === "" ? field.name : `${at}.${field.name}`;
      const expected = WIRE_TYPE[field.type];
      // Repeated numbers may come packed (one LEN record) or one record each.
      const packed = field.label === "LABEL_REPEATED" && expected !== 2 && wire === 2;
      if (expected === undefined || (wire !== expected && !packed)) {
        throw new FarmError(
          "INVALID_ARGUMENT",
          `field ${name} (${number}) of ${msg.fullName} has wire type ${wire}; its type ${field.type.replace("TYPE_", "").toLowerCase()} needs wire type ${expected}`,
        );
      }
      if (wire === 0) varint();
      else if (wire === 1) pos += 8;
      else if (wire === 5) pos += 4;
      else {
        const len = varint();
        if (pos + len > end)
          throw malformed(`field ${name} (${number}) claims ${len} bytes, only ${end - pos} left`, pos);
        if (field.type === "TYPE_STRING") {
          try {
            utf8.decode(buf.subarray(pos, pos + len));
          } catch {
            throw new FarmError(
              "INVALID_ARGUMENT",
              `field ${name} is not valid UTF-8 (proto3 strings must be UTF-8; send bytes as bytes)`,
            );
          }
        } else if (field.type === "TYPE_MESSAGE") {
          const sub = this.resolve(field.typeName, msg);
          if (sub === undefined) throw new FarmError("INTERNAL", `no descriptor for ${field.typeName}`);
          this.walk(sub, buf, pos, pos + len, name);
        }
        pos += len;
      }
      if (pos > end) throw malformed(`field ${name} (${number}) is truncated`, tagAt);
    }
  }
}

const BAD_REQUEST = Symbol("framefarm.badRequest");

/** What a deserializer returns for a refused request (see the file comment). */
export const badRequest = (err: FarmError): object => ({ [BAD_REQUEST]: err });

/** The refusal carried by a request, if it is a badRequest() marker. */
export function requestError(request: unknown): FarmError | undefined {
  return typeof request === "object" && request !== null
    ? (request as { [BAD_REQUEST]?: FarmError })[BAD_REQUEST]
    : undefined;
}
