/**
 * The farm's tensor objects: safetensors whose header carries a SHA-256 of the tensors (names,
 * dtypes, shapes and bytes, in name order). A node checks it on every read, so an object that was
 * truncated or altered in storage or on the way is DATA_LOSS naming the object, never a silently
 * different section.
 */
import { createHash } from "node:crypto";
import { FarmError } from "../errors.js";
import type { Tensor } from "./tensor.js";
import { decodeSafetensors, encodeSafetensors, type Safetensors } from "./safetensors.js";

const CHECKSUM = "framefarm.sha256";

function checksum(tensors: ReadonlyMap<string, Tensor>): string {
  const h = createHash("sha256");
  for (const name of [...tensors.keys()].sort()) {
    const t = tensors.get(name)!;
    h.update(`${name}\0${t.dtype}\0${t.shape.join(",")}\0`);
    h.update(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  }
  return h.digest("hex");
}

export function encodeTensorObject(
  tensors: Readonly<Record<string, Tensor>>,
  metadata: Readonly<Record<string, string>> = {},
): Uint8Array {
  return encodeSafetensors(tensors, { ...metadata, [CHECKSUM]: checksum(new Map(Object.entries(tensors))) });
}

/** Decodes and verifies; `key` names the object in errors. The checksum is not part of the returned metadata. */
export function decodeTensorObject(bytes: Uint8Array, key: string): Safetensors {
  let decoded: Safetensors;
  try {
    decoded = decodeSafetensors(bytes);
  } catch (err) {
    throw new FarmError("DATA_LOSS", `object ${key}: ${(err as Error).message}`, { cause: err });
  }
  const { [CHECKSUM]: want, ...metadata } = decoded.metadata;
  if (want === undefined)
    throw new FarmError("DATA_LOSS", `object ${key} has no ${CHECKSUM} (not written by a framefarm node)`);
  const got = checksum(decoded.tensors);
  if (got !== want)
    throw new FarmError(
      "DATA_LOSS",
      `object ${key} is corrupt: its tensors hash to ${got.slice(0, 12)}…, its header says ${want.slice(0, 12)}…`,
    );
  return { tensors: decoded.tensors, metadata };
}
