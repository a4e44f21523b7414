/**
 * The coordinator's gRPC server. Message limits are deliberate: a submission carries at most two
 * images of DEFAULT_IMAGE_LIMITS.maxBytes (50 MiB) each plus settings, so requests may be up to
 * 110 MiB; responses are small (videos are fetched by presigned URL, never streamed over gRPC).
 * Larger requests get RESOURCE_EXHAUSTED from grpc-js before anything is decoded. Requests are
 * decoded strictly (strict-decode.ts). TLS is on when a certificate and key are given.
 */
import { Server, ServerCredentials, type ServiceDefinition } from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";
import { JobServiceService } from "../../proto/gen/framefarm/v1/jobs.js";
import type { JobService } from "./job-service.js";
import { FarmError } from "../../shared/errors.js";
import { StrictDecoder, badRequest } from "./strict-decode.js";
import { addReflection } from "./reflection.js";

export const JOB_SERVICE_NAME = "framefarm.v1.JobService";

export const MAX_REQUEST_BYTES = 110 * 1024 * 1024;
export const MAX_RESPONSE_BYTES = 4 * 1024 * 1024;

export interface ApiServer {
  readonly port: number;
  /** grpc.health.v1: SERVING while the coordinator accepts jobs. */
  readonly health: HealthImplementation;
  stop(): Promise<void>;
}

export interface ApiServerOptions {
  /** PEM certificate chain and private key: serve gRPC over TLS instead of plaintext. */
  tls?: { cert: Uint8Array; key: Uint8Array };
}

/** JobServiceService with each request checked by the strict decoder before ts-proto decodes it. */
function strictJobService(): ServiceDefinition {
  const strict = StrictDecoder.forJobsProto();
  const requestTypes: Record<string, string> = {
    submitJob: "framefarm.v1.SubmitJobRequest",
    getJob: "framefarm.v1.GetJobRequest",
    watchJob: "framefarm.v1.WatchJobRequest",
    cancelJob: "framefarm.v1.CancelJobRequest",
    listJobs: "framefarm.v1.ListJobsRequest",
  };
  const out: Record<string, ServiceDefinition[string]> = {};
  for (const [name, method] of Object.entries(JobServiceService)) {
    const typeName = requestTypes[name];
    if (typeName === undefined) throw new FarmError("INTERNAL", `no strict decoding for JobService.${name}`);
    out[name] = {
      ...method,
      requestDeserialize: (bytes: Buffer): unknown => {
        try {
          strict.check(typeName, bytes);
        } catch (err) {
          if (err instanceof FarmError) return badRequest(err);
          throw err;
        }
        return method.requestDeserialize(bytes);
      },
    };
  }
  return out;
}

export async function startApiServer(
  service: JobService,
  host: string,
  port: number,
  options: ApiServerOptions = {},
): Promise<ApiServer> {
  const server = new Server({
    "grpc.max_receive_message_length": MAX_REQUEST_BYTES,
    "grpc.max_send_message_length": MAX_RESPONSE_BYTES,
  });
  server.addService(strictJobService(), service.handlers());
  const health = new HealthImplementation({ "": "SERVING", [JOB_SERVICE_NAME]: "SERVING" });
  health.addToServer(server);
  // Reflection lets buf curl, grpcurl and similar tools call the API without the .proto files.
  addReflection(server, [JOB_SERVICE_NAME]);
  const bound = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      `${host}:${port}`,
      options.tls === undefined
        ? ServerCredentials.createInsecure()
        : ServerCredentials.createSsl(
            null,
            [{ cert_chain: Buffer.from(options.tls.cert), private_key: Buffer.from(options.tls.key) }],
            false,
          ),
      (err, p) => (err ? reject(err) : resolve(p)),
    ),
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
