/**
 * How the client commands (submit, jobs, cancel, check-reference --server) reach a farm:
 * `--server HOST:PORT` (FRAMEFARM_SERVER), `--token T` (FRAMEFARM_TOKEN) sent as
 * `authorization: Bearer T` on every call, and `--tls` (system CAs) or `--ca FILE` (a private CA
 * or a self-signed certificate) for TLS; `--timeout S` (60) is the deadline of each unary call.
 */
import { readFileSync } from "node:fs";
import { credentials, InterceptingCall, type Interceptor, type ServiceError } from "@grpc/grpc-js";
import { FarmError, STATUS_CODE, type StatusName } from "../../shared/errors.js";
import { JobServiceClient } from "../../proto/gen/framefarm/v1/jobs.js";

export const CLIENT_OPTIONS = {
  server: { type: "string" },
  token: { type: "string" },
  tls: { type: "boolean" },
  ca: { type: "string" },
  timeout: { type: "string" },
} as const;

export interface ClientOptions {
  server?: string | undefined;
  token?: string | undefined;
  tls?: boolean | undefined;
  ca?: string | undefined;
  /** Seconds each unary call may take (deadline); streams have none. */
  timeout?: string | undefined;
}

const DEFAULT_TIMEOUT_S = 60;

const isLoopback = (address: string): boolean => /^(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?$/.test(address);

export function connectJobService(o: ClientOptions): JobServiceClient {
  const address = o.server ?? process.env["FRAMEFARM_SERVER"];
  if (address === undefined)
    throw new FarmError("INVALID_ARGUMENT", "--server HOST:PORT is required (or FRAMEFARM_SERVER)");
  const token = o.token ?? process.env["FRAMEFARM_TOKEN"];
  const tls = o.tls === true || o.ca !== undefined;
  let ca: Buffer | null = null;
  if (o.ca !== undefined) {
    try {
      ca = readFileSync(o.ca);
    } catch (err) {
      throw new FarmError("NOT_FOUND", `CA file ${o.ca} cannot be read: ${(err as Error).message}`, { cause: err });
    }
  }
  const timeoutS = Number(o.timeout ?? DEFAULT_TIMEOUT_S);
  if (!Number.isFinite(timeoutS) || timeoutS <= 0)
    throw new FarmError(
      "INVALID_ARGUMENT",
      `--timeout must be a positive number of seconds, got ${JSON.stringify(o.timeout)}`,
    );
  // Every unary call gets a deadline, so a farm that does not answer fails the command instead of hanging it.
  const interceptors: Interceptor[] = [
    (options, next) =>
      new InterceptingCall(
        next(
          options.method_definition.responseStream || options.deadline !== undefined
            ? options
            : { ...options, deadline: Date.now() + timeoutS * 1000 },
        ),
      ),
  ];
  if (token !== undefined && token !== "") {
    if (!tls && !isLoopback(address))
      process.stderr.write(`warning: sending the token to ${address} without TLS (add --tls or --ca FILE)\n`);
    // An interceptor rather than call credentials: grpc-js refuses call credentials on plaintext channels.
    interceptors.push(
      (options, next) =>
        new InterceptingCall(next(options), {
          start(metadata, listener, start) {
            metadata.set("authorization", `Bearer ${token}`);
            start(metadata, listener);
          },
        }),
    );
  }
  return new JobServiceClient(address, tls ? credentials.createSsl(ca) : credentials.createInsecure(), {
    interceptors,
  });
}

/** gRPC errors as FarmErrors, so the CLI reports them like local ones. */
export function fromGrpc(err: unknown): FarmError {
  const e = err as ServiceError;
  const name = (Object.entries(STATUS_CODE).find(([, c]) => c === e.code)?.[0] ?? "UNAVAILABLE") as StatusName;
  return new FarmError(name, e.details || e.message);
}
