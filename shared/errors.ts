/**
 * Errors a user can act on. Every failure that reaches a user (CLI exit, gRPC status) is a FarmError
 * with a gRPC status name, so the CLI and the gRPC server report the same code and message.
 */
export type StatusName =
  | "INVALID_ARGUMENT"
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "FAILED_PRECONDITION"
  | "ABORTED"
  | "RESOURCE_EXHAUSTED"
  | "OUT_OF_RANGE"
  | "UNAVAILABLE"
  | "CANCELLED"
  | "DEADLINE_EXCEEDED"
  | "PERMISSION_DENIED"
  | "UNAUTHENTICATED"
  | "DATA_LOSS"
  | "INTERNAL";

/** Numeric codes of grpc.status, kept here so pure code needs no gRPC dependency. */
export const STATUS_CODE: Record<StatusName, number> = {
  CANCELLED: 1,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
};

export class FarmError extends Error {
  constructor(
    readonly status: StatusName,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "FarmError";
  }

  get code(): number {
    return STATUS_CODE[this.status];
  }
}

/**
 * One stored object that could not be read as written: corrupt (its checksum failed, DATA_LOSS) or
 * gone (NOT_FOUND). Naming the key lets the coordinator recompute the object from the inputs of the
 * task that wrote it (coordinator/dispatch/recompute.ts) instead of failing the job.
 */
export class LostObjectError extends FarmError {
  constructor(
    status: "DATA_LOSS" | "NOT_FOUND",
    readonly key: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(status, message, options);
    this.name = "LostObjectError";
  }
}

export const invalidArgument = (message: string, cause?: unknown): FarmError =>
  new FarmError("INVALID_ARGUMENT", message, { cause });
export const notFound = (message: string, cause?: unknown): FarmError => new FarmError("NOT_FOUND", message, { cause });
export const resourceExhausted = (message: string, cause?: unknown): FarmError =>
  new FarmError("RESOURCE_EXHAUSTED", message, { cause });
export const failedPrecondition = (message: string, cause?: unknown): FarmError =>
  new FarmError("FAILED_PRECONDITION", message, { cause });
