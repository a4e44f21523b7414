/**
 * The coordinator's gRPC server. Message limits are deliberate: a submission carries at most two
 * images of DEFAULT_IMAGE_LIMITS.maxBytes (50 MiB) each plus settings, so requests may be up to
 * 110 MiB; responses are small (videos are fetched by presigned URL, never streamed over gRPC).
 */
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { JobServiceService } from "../../proto/gen/framefarm/v1/jobs.js";
import type { JobService } from "./job-service.js";

export const MAX_REQUEST_BYTES = 110 * 1024 * 1024;
export const MAX_RESPONSE_BYTES = 4 * 1024 * 1024;

export interface ApiServer {
  readonly port: number;
  stop(): Promise<void>;
}

export async function startApiServer(service: JobService, host: string, port: number): Promise<ApiServer> {
  const server = new Server({
    "grpc.max_receive_message_length": MAX_REQUEST_BYTES,
    "grpc.max_send_message_length": MAX_RESPONSE_BYTES,
  });
  server.addService(JobServiceService, service.handlers());
  const bound = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${host}:${port}`, ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  return {
    port: bound,
    stop: () =>
      new Promise<void>((resolve) => {
        server.tryShutdown(() => resolve());
        setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 5000).unref();
      }),
  };
}
