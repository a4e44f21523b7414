/**
 * A video's frames as PNG files (frame_00000.png, ...) in one uncompressed tar (POSIX ustar), so a
 * farm stores and serves them as one object and a client unpacks them into a folder. PNG is
 * lossless: the files hold exactly the rendered frames. Entries carry no time stamps or owners, so
 * the same frames give the same archive. Unpacking accepts only this layout: names of the form
 * frame_NNNNN.png, regular files, nothing joined from a name but a checked base name.
 */
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import sharp from "sharp";
import { FarmError } from "../errors.js";
import type { Tensor } from "../tensor/tensor.js";

const BLOCK = 512;
const NAME = /^frame_\d{5}\.png$/;

export const frameFileName = (i: number): string => `frame_${String(i).padStart(5, "0")}.png`;

function octal(value: number, width: number): string {
  return `${value.toString(8).padStart(width - 1, "0")}\0`;
}

function header(name: string, size: number): Buffer {
  const h = Buffer.alloc(BLOCK);
  h.write(name, 0, 100, "ascii");
  h.write(octal(0o644, 8), 100, "ascii"); // mode
  h.write(octal(0, 8), 108, "ascii"); // uid
  h.write(octal(0, 8), 116, "ascii"); // gid
  h.write(octal(size, 12), 124, "ascii");
  h.write(octal(0, 12), 136, "ascii"); // mtime
  h.write("        ", 148, "ascii"); // checksum placeholder
  h.write("0", 156, "ascii"); // regular file
  h.write("ustar\0", 257, "ascii");
  h.write("00", 263, "ascii");
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "ascii");
  return h;
}

/** Frames [T, H, W, 3] uint8 as a tar of PNGs. */
export async function framesToPngTar(frames: Tensor<"uint8">): Promise<Uint8Array> {
  const [t, h, w] = frames.shape as [number, number, number, number];
  const frameBytes = h * w * 3;
  const parts: Buffer[] = [];
  for (let i = 0; i < t; i++) {
    const raw = Buffer.from(frames.data.buffer, frames.data.byteOffset + i * frameBytes, frameBytes);
    const png = await sharp(raw, { raw: { width: w, height: h, channels: 3 } })
      .png()
      .toBuffer();
    parts.push(header(frameFileName(i), png.length), png);
    const pad = (BLOCK - (png.length % BLOCK)) % BLOCK;
    if (pad > 0) parts.push(Buffer.alloc(pad));
  }
  parts.push(Buffer.alloc(2 * BLOCK));
  return new Uint8Array(Buffer.concat(parts));
}

/** Writes the archive's PNGs into dir (created if missing); returns how many. */
export async function extractPngTar(archive: Uint8Array, dir: string): Promise<number> {
  const buf = Buffer.from(archive.buffer, archive.byteOffset, archive.byteLength);
  await mkdir(dir, { recursive: true });
  let offset = 0;
  let count = 0;
  const corrupt = (why: string): FarmError => new FarmError("DATA_LOSS", `the frames archive is corrupt: ${why}`);
  while (offset + BLOCK <= buf.length) {
    const h = buf.subarray(offset, offset + BLOCK);
    if (h.every((b) => b === 0)) return count;
    const name = h.toString("ascii", 0, 100).replace(/\0.*$/s, "");
    const size = parseInt(h.toString("ascii", 124, 136).replace(/\0.*$/s, "").trim(), 8);
    if (!NAME.test(name) || h.toString("ascii", 156, 157) !== "0")
      throw corrupt(`unexpected entry ${JSON.stringify(name)}`);
    if (!Number.isInteger(size) || offset + BLOCK + size > buf.length) throw corrupt(`entry ${name} runs past the end`);
    await writeFile(path.join(dir, name), buf.subarray(offset + BLOCK, offset + BLOCK + size));
    count++;
    offset += BLOCK + Math.ceil(size / BLOCK) * BLOCK;
  }
  throw corrupt("it has no end marker");
}
