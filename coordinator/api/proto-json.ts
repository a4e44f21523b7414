/**
 * jobs.proto's messages in the proto JSON form (camelCase names, enums by name, bytes in base64,
 * 64-bit integers as strings: what `buf curl` sends), for the coordinator's HTTP API. A request is
 * read as strictly as the gRPC server reads the binary form (strict-decode.ts): an unknown field,
 * a value of the wrong type, an unknown enum name or text that is not valid Unicode is
 * INVALID_ARGUMENT naming it. It is then decoded by the same ts-proto code as a gRPC request, so
 * JobService gets the same message whichever door it came through.
 */
import { readFileSync } from "node:fs";
import {
  createFileRegistry,
  fromBinary,
  fromJson,
  toBinary,
  toJson,
  type DescMessage,
  type FileRegistry,
  type JsonValue,
} from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { FarmError } from "../../shared/errors.js";
import { JOBS_DESCRIPTOR_SET } from "./reflection.js";

/** A ts-proto message's codec (the generated `const SubmitJobRequest`, ...). */
export interface BinaryCodec<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(bytes: Uint8Array): T;
}

let registry: FileRegistry | undefined;

function descriptor(typeName: string): DescMessage {
  registry ??= createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(JOBS_DESCRIPTOR_SET)));
  const desc = registry.getMessage(typeName);
  if (desc === undefined) throw new FarmError("INTERNAL", `no descriptor for ${typeName}`);
  return desc;
}

/** The path of the first string that is not well-formed UTF-16 (a lone surrogate), if any. */
function malformedText(v: unknown, at: string): string | undefined {
  if (typeof v === "string") return v.isWellFormed() ? undefined : at;
  if (typeof v !== "object" || v === null) return undefined;
  for (const [k, item] of Object.entries(v)) {
    const bad = malformedText(item, Array.isArray(v) ? `${at}[${k}]` : at === "" ? k : `${at}.${k}`);
    if (bad !== undefined) return bad;
  }
  return undefined;
}

/** A request of type typeName from its JSON form; INVALID_ARGUMENT for anything the form does not allow. */
export function requestFromJson<T>(codec: BinaryCodec<T>, typeName: string, json: unknown): T {
  // Encoding would turn a lone surrogate into U+FFFD silently: a prompt other than the one sent.
  const bad = malformedText(json, "");
  if (bad !== undefined) throw new FarmError("INVALID_ARGUMENT", `field ${bad} is not valid Unicode (lone surrogate)`);
  const desc = descriptor(typeName);
  let bytes: Uint8Array;
  try {
    bytes = toBinary(desc, fromJson(desc, json as JsonValue, { ignoreUnknownFields: false }));
  } catch (err) {
    throw new FarmError("INVALID_ARGUMENT", `request is not a ${typeName} in JSON form: ${(err as Error).message}`, {
      cause: err,
    });
  }
  return codec.decode(bytes);
}

/** A reply in JSON form, with every field (zeros and empty strings too), so readers need no defaults. */
export function replyToJson<T>(codec: BinaryCodec<T>, typeName: string, message: T): JsonValue {
  const desc = descriptor(typeName);
  return toJson(desc, fromBinary(desc, codec.encode(message).finish()), { alwaysEmitImplicit: true });
}
