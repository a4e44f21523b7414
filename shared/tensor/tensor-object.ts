/**
 * The farm's tensor objects: safetensors whose header carries a SHA-256 of the tensors (names,
 * dtypes, shapes and bytes, in name order). A node checks it on every read, so an object that was
 * truncated or altered in storage or on the way is DATA_LOSS naming the object, never a silently
 * different section.
 */
import { createHash } from "node:crypto";
import { FarmError } from "../errors.js";
import { yieldToEventLoop } from "../event-loop.js";
import type { Tensor } from "./tensor.js";
import { decodeSafetensors, encodeSafetensors, safetensorsParts, type Safetensors } from "./safetensors.js";

const CHECKSUM = "framefarm.sha256";

/** Bytes hashed between yields to the event loop (async forms): a few milliseconds of SHA-256. */
const SLICE = 8 << 20;

/** What the checksum hashes, in order: per tensor (by name) its name, dtype and shape, then its bytes in slices. */
function* checksumInput(tensors: ReadonlyMap<string, Tensor>): Generator<Uint8Array | string> {
  for (const name of [...tensors.keys()].sort()) {
    const t = tensors.get(name)!;
    yield `${name}\0${t.dtype}\0${t.shape.join(",")}\0`;
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    for (let at = 0; at < bytes.length; at += SLICE) yield bytes.subarray(at, Math.min(bytes.length, at + SLICE));
  }
}

function checksum(tensors: ReadonlyMap<string, Tensor>): string {
  const h = createHash("sha256");
  for (const part of checksumInput(tensors)) h.update(part);
  return h.digest("hex");
}

/**
 * The same checksum, yielding to the event loop between slices: a node hashing a section's video
 * (hundreds of MB) must not stall the denoise steps it runs beside it (their GPU waits for the
 * event loop to feed the next step).
 */
async function checksumAsync(tensors: ReadonlyMap<string, Tensor>): Promise<string> {
  const h = createHash("sha256");
  for (const part of checksumInput(tensors)) {
    h.update(part);
    if (typeof part !== "string" && part.length === SLICE) await yieldToEventLoop();
  }
  return h.digest("hex");
}

export function encodeTensorObject(
  tensors: Readonly<Record<string, Tensor>>,
  metadata: Readonly<Record<string, string>> = {},
): Uint8Array {
  return encodeSafetensors(tensors, { ...metadata, [CHECKSUM]: checksum(new Map(Object.entries(tensors))) });
}

/**
 * encodeTensorObject's bytes, hashing with yields to the event loop, as parts in order
 * (safetensorsParts: the header, then each tensor's own data, not copied).
 */
export async function encodeTensorObjectPartsAsync(
  tensors: Readonly<Record<string, Tensor>>,
  metadata: Readonly<Record<string, string>> = {},
): Promise<Uint8Array[]> {
  const sum = await checksumAsync(new Map(Object.entries(tensors)));
  return safetensorsParts(tensors, { ...metadata, [CHECKSUM]: sum });
}

/** Decodes and verifies; `key` names the object in errors. The checksum is not part of the returned metadata. */
export function decodeTensorObject(bytes: Uint8Array, key: string): Safetensors {
  const { decoded, want } = parseTensorObject(bytes, key);
  return verified(decoded, want, checksum(decoded.tensors), key);
}

/** decodeTensorObject, hashing with yields to the event loop. */
export async function decodeTensorObjectAsync(bytes: Uint8Array, key: string): Promise<Safetensors> {
  const { decoded, want } = parseTensorObject(bytes, key);
  return verified(decoded, want, await checksumAsync(decoded.tensors), key);
}

function parseTensorObject(bytes: Uint8Array, key: string): { decoded: Safetensors; want: string } {
  let decoded: Safetensors;
  try {
    decoded = decodeSafetensors(bytes);
  } catch (err) {
    throw new FarmError("DATA_LOSS", `object ${key}: ${(err as Error).message}`, { cause: err });
  }
  const want = decoded.metadata[CHECKSUM];
  if (want === undefined)
    throw new FarmError("DATA_LOSS", `object ${key} has no ${CHECKSUM} (not written by a framefarm node)`);
  return { decoded, want };
}

function verified(decoded: Safetensors, want: string, got: string, key: string): Safetensors {
  if (got !== want)
    throw new FarmError(
      "DATA_LOSS",
      `object ${key} is corrupt: its tensors hash to ${got.slice(0, 12)}…, its header says ${want.slice(0, 12)}…`,
    );
  const { [CHECKSUM]: _checksum, ...metadata } = decoded.metadata;
  return { tensors: decoded.tensors, metadata };
}
