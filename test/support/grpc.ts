/** What the API tests share: a bearer token as call metadata, a unary call as a promise, a small job. */
import { Metadata, type ServiceError } from "@grpc/grpc-js";
import type { SubmitJobRequest } from "../../proto/gen/framefarm/v1/jobs.js";

/** Call metadata carrying a tenant's token; none for null (an open farm, or a refused call). */
export function bearer(token: string | null): Metadata {
  const md = new Metadata();
  if (token !== null) md.set("authorization", `Bearer ${token}`);
  return md;
}

/** A unary gRPC call as a promise. */
export const unary = <T>(fn: (cb: (e: ServiceError | null, r?: T) => void) => void): Promise<T> =>
  new Promise((resolve, reject) => fn((e, r) => (e ? reject(e) : resolve(r as T))));

/** A 2-step, 20-frame job at the 64 bucket from an image's bytes, with `over` on top. */
export const smallJobRequest = (png: Buffer, over: Partial<SubmitJobRequest> = {}): SubmitJobRequest => ({
  image: { source: { $case: "data", value: png } },
  settings: { prompt: "a lighthouse", length: { $case: "numFrames", value: 20 }, mode: 0, steps: 2, resolution: 64 },
  bundle: "",
  priority: 0,
  idempotencyKey: "",
  keyframes: [],
  loras: [],
  ...over,
});
