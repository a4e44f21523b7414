/**
 * gRPC server reflection (grpc.reflection.v1 and v1alpha, by @grpc/reflection) serving the public
 * API's real file descriptors, so that buf curl, grpcurl, Postman and the like call JobService
 * with nothing but the server's address.
 *
 * @grpc/reflection indexes whatever FileDescriptorProtos a package definition carries. Loaded
 * from jobs.proto by @grpc/proto-loader those are protobufjs' re-creations: one file per package
 * ("framefarm_v1.proto", "google_protobuf.proto") with no imports declared, so a client that
 * builds a schema from them cannot resolve `.google.protobuf.Timestamp` and finds no service at
 * all. Instead the reflection gets the descriptors buf compiled (proto/gen/framefarm/v1/jobs.binpb,
 * written by `npm run proto`): framefarm/v1/jobs.proto importing google/protobuf/timestamp.proto,
 * exactly as protoc names and links them.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { Server } from "@grpc/grpc-js";
import type { PackageDefinition } from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";
import { FarmError } from "../../shared/errors.js";

/** The FileDescriptorSet of jobs.proto and its imports (this file is dist/coordinator/api/reflection.js). */
export const JOBS_DESCRIPTOR_SET = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  "..",
  "..",
  "..",
  "proto",
  "gen",
  "framefarm",
  "v1",
  "jobs.binpb",
);

function readVarint(buf: Uint8Array, pos: number): [number, number] {
  let value = 0;
  for (let shift = 0; shift < 35; shift += 7) {
    if (pos >= buf.length) break;
    const b = buf[pos++]!;
    value += (b & 0x7f) * 2 ** shift;
    if ((b & 0x80) === 0) return [value, pos];
  }
  throw new FarmError("INTERNAL", "malformed FileDescriptorSet: bad varint");
}

/** The encoded FileDescriptorProtos of a FileDescriptorSet (`repeated FileDescriptorProto file = 1`), in order. */
export function fileDescriptorProtos(set: Uint8Array): Buffer[] {
  const files: Buffer[] = [];
  let pos = 0;
  while (pos < set.length) {
    const [tag, afterTag] = readVarint(set, pos);
    const [len, start] = readVarint(set, afterTag);
    if (tag !== (1 << 3) + 2 || start + len > set.length)
      throw new FarmError("INTERNAL", `malformed FileDescriptorSet at byte ${pos}`);
    files.push(Buffer.from(set.subarray(start, start + len)));
    pos = start + len;
  }
  return files;
}

/** Adds reflection for the given services, described by the descriptor set (default: the public API's). */
export function addReflection(
  server: Pick<Server, "addService">,
  services: string[],
  descriptorSet = JOBS_DESCRIPTOR_SET,
): void {
  let set: Uint8Array;
  try {
    set = readFileSync(descriptorSet);
  } catch (err) {
    const why = `cannot read ${descriptorSet} (\`npm run proto\` writes it): ${(err as Error).message}`;
    throw new FarmError("INTERNAL", why, { cause: err });
  }
  // @grpc/reflection reads only `fileDescriptorProtos` of each definition; this one entry carries them all.
  const definition: PackageDefinition = {
    [path.basename(descriptorSet)]: {
      format: "Protocol Buffer 3 EnumDescriptorProto",
      type: {},
      fileDescriptorProtos: fileDescriptorProtos(set),
    },
  };
  new ReflectionService(definition, { services }).addToServer(server);
}
