/**
 * Decoded VAE tiles kept for the next section's decode. FramePack decodes every section with the
 * previous section's latents appended (inverted: window k+1 = [new, window k's first half];
 * vanilla: [window k's second half, new]), and temporal tiles start every 3 latent frames, so with
 * a window of 9 a third to a half of a section's tiles have exactly the latents of a tile the
 * previous decode already ran. A tile's output depends on its latents alone (each tile is decoded
 * as a clip of its own), so such a tile is looked up by its content instead of decoded again: the
 * video is the same, bit for bit, as long as the decoder is deterministic.
 *
 * Keyed by a SHA-256 of the tile's latents (shape and bytes) and what else changes its output
 * (spatial tiling). One cache per decoder session; least recently used entries go first once
 * the kept tiles pass maxBytes. A tile being decoded is found too (its promise), so a decode that
 * runs beside the one that makes a tile waits for it instead of making it twice.
 */
import { createHash } from "node:crypto";
import type { F32 } from "../tensor/tensor.js";

interface Entry {
  tile: Promise<F32>;
  /** 0 until decoded. */
  bytes: number;
}

export class DecodedTileCache {
  private readonly entries = new Map<string, Entry>();
  private kept = 0;
  hits = 0;

  constructor(readonly maxBytes: number) {}

  /** `current` if it holds `bytes`, else a new cache of that size; undefined for 0 (no cache). */
  static sized(current: DecodedTileCache | undefined, bytes: number | undefined): DecodedTileCache | undefined {
    if (bytes === undefined || bytes <= 0) return undefined;
    return current?.maxBytes === bytes ? current : new DecodedTileCache(bytes);
  }

  /** Bytes of decoded tiles held now. */
  get bytes(): number {
    return this.kept;
  }

  /**
   * The decoded tile for `latents`: a kept one, else `decode()`'s, kept when `keep` says a later
   * decode may ask for it. Callers must not write into what they get: it may be shared.
   */
  async decode(latents: F32, salt: string, keep: boolean, decode: () => Promise<F32>): Promise<F32> {
    if (this.maxBytes <= 0) return decode();
    const key = tileKey(latents, salt);
    const hit = this.entries.get(key);
    if (hit !== undefined) {
      this.entries.delete(key);
      this.entries.set(key, hit);
      this.hits++;
      return hit.tile;
    }
    const tile = decode();
    if (!keep) return tile;
    const entry: Entry = { tile, bytes: 0 };
    this.entries.set(key, entry);
    try {
      const decoded = await tile;
      if (this.entries.get(key) === entry) {
        entry.bytes = decoded.data.byteLength;
        this.kept += entry.bytes;
        this.evict();
      }
      return decoded;
    } catch (err) {
      if (this.entries.get(key) === entry) this.entries.delete(key);
      throw err;
    }
  }

  private evict(): void {
    for (const [key, entry] of this.entries) {
      if (this.kept <= this.maxBytes) return;
      if (entry.bytes === 0) continue; // still being decoded: holds nothing yet
      this.entries.delete(key);
      this.kept -= entry.bytes;
    }
  }
}

function tileKey(latents: F32, salt: string): string {
  const d = latents.data;
  return createHash("sha256")
    .update(`${latents.shape.join("x")}|${salt}|`)
    .update(new Uint8Array(d.buffer, d.byteOffset, d.byteLength))
    .digest("hex");
}
