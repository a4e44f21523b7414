/**
 * The object store seam. Tensors, images and videos move between coordinator and nodes as objects
 * under deterministic keys (jobs/<id>/...). Two implementations share this interface and one
 * contract test: S3 (MinIO in production) and a local directory (embedded mode).
 */
import { createHash } from "node:crypto";
import { FarmError } from "../errors.js";

export interface PutResult {
  key: string;
  size: number;
  sha256: string;
}

/**
 * An object's bytes: one buffer, or parts in order (a tensor object's header and its tensors' own
 * memory, so that a large object is never copied into one buffer just to be written).
 */
export type ObjectBody = Uint8Array | readonly Uint8Array[];

export const bodyLength = (body: ObjectBody): number =>
  body instanceof Uint8Array ? body.byteLength : body.reduce((n, p) => n + p.byteLength, 0);

/** The body as one buffer (the body itself when it is one). */
export function bodyBytes(body: ObjectBody): Uint8Array {
  if (body instanceof Uint8Array) return body;
  const joined = Buffer.concat(body);
  return new Uint8Array(joined.buffer, joined.byteOffset, joined.byteLength);
}

export interface ObjectStore {
  /** Stores bytes under key, replacing any object there. The write is atomic: readers see old or new. */
  put(key: string, data: ObjectBody, contentType?: string): Promise<PutResult>;
  /** Stores only if nothing is there yet; returns false (and writes nothing) otherwise. */
  putIfAbsent(key: string, data: ObjectBody, contentType?: string): Promise<boolean>;
  /** The object's bytes; NOT_FOUND if there is none. */
  get(key: string): Promise<Uint8Array>;
  /** Size of the object, or null if there is none. */
  head(key: string): Promise<{ size: number } | null>;
  delete(key: string): Promise<void>;
  /** Every key under prefix, sorted. */
  list(prefix: string): Promise<string[]>;
  /** Deletes everything under prefix; returns how many objects went. */
  deletePrefix(prefix: string): Promise<number>;
  /**
   * A URL that fetches the object without credentials until it expires. With downloadAs, a
   * browser that opens it saves the object under that name (Content-Disposition: attachment)
   * instead of showing it; media elements play it all the same.
   */
  presignedGetUrl(key: string, expirySeconds: number, downloadAs?: string): Promise<string>;
  close(): Promise<void>;
}

const KEY_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._\-]*(\/[A-Za-z0-9][A-Za-z0-9._\-]*)*$/;
export const MAX_KEY_LENGTH = 512;

/**
 * Keys are built by framefarm from ids and stage names, never from raw user text; this check is
 * the last line: relative, slash-separated segments of [A-Za-z0-9._-], no "." or ".." segments.
 */
export function validateObjectKey(key: string, prefix = false): string {
  const body = prefix && key.endsWith("/") ? key.slice(0, -1) : key;
  if (
    typeof key !== "string" ||
    key.length === 0 ||
    key.length > MAX_KEY_LENGTH ||
    !KEY_PATTERN.test(body) ||
    body.split("/").some((s) => s === "." || s === "..")
  ) {
    throw new FarmError(
      "INVALID_ARGUMENT",
      `invalid object key ${JSON.stringify(key)}: use relative segments of letters, digits, '.', '_' and '-' (at most ${MAX_KEY_LENGTH} characters)`,
    );
  }
  return key;
}

export function sha256Hex(data: ObjectBody): string {
  const h = createHash("sha256");
  for (const p of data instanceof Uint8Array ? [data] : data) h.update(p);
  return h.digest("hex");
}
