/**
 * The coordinator's gRPC server. Message limits are deliberate: a submission carries at most two
 * images of DEFAULT_IMAGE_LIMITS.maxBytes (50 MiB) each plus settings, so requests may be up to
 * 110 MiB; responses are small (videos are fetched by presigned URL, never streamed over gRPC).
 */
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";
import { HealthImplementation } from "grpc-health-check";
import { JobServiceService } from "../../proto/gen/framefarm/v1/jobs.js";
import type { JobService } from "./job-service.js";

/** proto/ at the package root (this file is dist/coordinator/api/server.js). */
const PROTO_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "proto");
export const JOB_SERVICE_NAME = "framefarm.v1.JobService";

export const MAX_REQUEST_BYTES = 110 * 1024 * 1024;
export const MAX_RESPONSE_BYTES = 4 * 1024 * 1024;

export interface ApiServer {
  readonly port: number;
  /** grpc.health.v1: SERVING while the coordinator accepts jobs. */
  readonly health: HealthImplementation;
  stop(): Promise<void>;
}

export async function startApiServer(service: JobService, host: string, port: number): Promise<ApiServer> {
  const server = new Server({
    "grpc.max_receive_message_length": MAX_REQUEST_BYTES,
    "grpc.max_send_message_length": MAX_RESPONSE_BYTES,
  });
  server.addService(JobServiceService, service.handlers());
  const health = new HealthImplementation({ "": "SERVING", [JOB_SERVICE_NAME]: "SERVING" });
  health.addToServer(server);
  // Reflection lets grpcurl and similar tools discover the API without the .proto files.
  new ReflectionService(loadSync(path.join(PROTO_DIR, "framefarm", "v1", "jobs.proto"), { includeDirs: [PROTO_DIR] })).addToServer(server);
  const bound = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${host}:${port}`, ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  return {
    port: bound,
    health,
    stop: () =>
      new Promise<void>((resolve) => {
        health.setStatus("", "NOT_SERVING");
        health.setStatus(JOB_SERVICE_NAME, "NOT_SERVING");
        server.tryShutdown(() => resolve());
        setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 5000).unref();
      }),
  };
}
