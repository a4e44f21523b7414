/**
 * How the coordinator's HTTP server answers and reads: JSON replies, errors as
 * `{"error": {"code": "<gRPC status name>", "grpcCode": <number>, "message": ...}}` with the HTTP
 * status gRPC's own HTTP mapping gives that code, and JSON request bodies of bounded size.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { FarmError, STATUS_CODE, type StatusName } from "../../shared/errors.js";

/** HTTP statuses of gRPC codes, as grpc-gateway maps them. */
const HTTP_STATUS: Partial<Record<StatusName, number>> = {
  CANCELLED: 499,
  INVALID_ARGUMENT: 400,
  OUT_OF_RANGE: 400,
  UNAUTHENTICATED: 401,
  PERMISSION_DENIED: 403,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  ABORTED: 409,
  FAILED_PRECONDITION: 409,
  RESOURCE_EXHAUSTED: 429,
  UNAVAILABLE: 503,
  DEADLINE_EXCEEDED: 504,
};

export const httpStatusOf = (status: StatusName): number => HTTP_STATUS[status] ?? 500;

export function send(
  res: ServerResponse,
  status: number,
  body: string | Uint8Array,
  contentType = "application/json",
): void {
  res.writeHead(status, {
    "content-type": contentType,
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
  });
  res.end(body);
}

export const sendJson = (res: ServerResponse, status: number, value: unknown): void =>
  send(res, status, JSON.stringify(value));

/** An error reply; code is a gRPC status name, or an HTTP-only one (METHOD_NOT_ALLOWED, ...). */
export function fail(res: ServerResponse, status: number, code: string, message: string): void {
  const grpcCode = (STATUS_CODE as Record<string, number | undefined>)[code];
  sendJson(res, status, { error: { code, ...(grpcCode !== undefined ? { grpcCode } : {}), message } });
}

/** A FarmError's reply: its gRPC status name and message. */
export const failWith = (res: ServerResponse, err: FarmError): void =>
  fail(res, httpStatusOf(err.status), err.status, err.message);

/**
 * Answers 415 unless the request says `Content-Type: application/json`; true when it does. A plain
 * cross-site form cannot send that type, so no request forgery comes through a door that asks it.
 */
export function requireJson(req: IncomingMessage, res: ServerResponse): boolean {
  if ((req.headers["content-type"] ?? "").startsWith("application/json")) return true;
  fail(res, 415, "UNSUPPORTED_MEDIA_TYPE", "send Content-Type: application/json");
  return false;
}

/** A request's JSON object body, at most maxBytes (RESOURCE_EXHAUSTED past it, as gRPC refuses an oversized message). */
export async function readJsonBody(req: IncomingMessage, maxBytes: number): Promise<Record<string, unknown>> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > maxBytes) throw new FarmError("RESOURCE_EXHAUSTED", `request body over ${maxBytes} bytes`);
    chunks.push(c as Buffer);
  }
  if (size === 0) return {};
  try {
    const v: unknown = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    if (typeof v === "object" && v !== null && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // reported below
  }
  throw new FarmError("INVALID_ARGUMENT", "request body must be a JSON object");
}
