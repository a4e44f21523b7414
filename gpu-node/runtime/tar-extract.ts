/**
 * Extracts chosen regular files from a .tgz (what `npm pack` writes: ustar, with pax or GNU long
 * names tolerated) by streaming it once, hashing each file as it is written. Plain Node.js, so
 * `framefarm setup cuda` needs no tar program.
 */
import { createReadStream, createWriteStream } from "node:fs";
import { createHash } from "node:crypto";
import { once } from "node:events";
import { createGunzip } from "node:zlib";

const BLOCK = 512;

/** Pulls exact byte counts out of a stream of chunks. */
class ByteReader {
  private buffered: Buffer[] = [];
  private length = 0;
  private readonly it: AsyncIterator<Buffer>;
  constructor(source: AsyncIterable<Buffer>) {
    this.it = source[Symbol.asyncIterator]();
  }
  private async fill(n: number): Promise<boolean> {
    while (this.length < n) {
      const r = await this.it.next();
      if (r.done === true) return false;
      this.buffered.push(r.value);
      this.length += r.value.length;
    }
    return true;
  }
  /** Exactly n bytes, or undefined at the end of the stream. */
  async read(n: number): Promise<Buffer | undefined> {
    if (!(await this.fill(n))) return undefined;
    const all = this.buffered.length === 1 ? this.buffered[0]! : Buffer.concat(this.buffered);
    this.buffered = all.length > n ? [all.subarray(n)] : [];
    this.length = all.length - n;
    return all.subarray(0, n);
  }
  /** n bytes as they come, in chunks. */
  async *chunks(n: number): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0) {
      if (this.length === 0 && !(await this.fill(1))) throw new Error("unexpected end of the tar stream");
      const head = this.buffered.shift()!;
      const take = Math.min(left, head.length);
      if (take < head.length) this.buffered.unshift(head.subarray(take));
      this.length -= take;
      left -= take;
      yield head.subarray(0, take);
    }
  }
}

function octal(field: Buffer): number {
  // Base-256 (GNU) for sizes of 8 GiB and more.
  if ((field[0]! & 0x80) !== 0) return Number(field.subarray(1).readBigUInt64BE(field.length - 9));
  const text = field.toString("latin1").replace(/\0.*$/s, "").trim();
  return text === "" ? 0 : parseInt(text, 8);
}

const cstring = (field: Buffer): string => {
  const end = field.indexOf(0);
  return field.toString("utf8", 0, end < 0 ? field.length : end);
};

function paxPath(body: Buffer): string | undefined {
  let p = 0;
  let found: string | undefined;
  while (p < body.length) {
    const space = body.indexOf(0x20, p);
    if (space < 0) break;
    const len = parseInt(body.toString("latin1", p, space), 10);
    if (!(len > 0)) break;
    const record = body.toString("utf8", space + 1, p + len - 1);
    const eq = record.indexOf("=");
    if (record.slice(0, eq) === "path") found = record.slice(eq + 1);
    p += len;
  }
  return found;
}

/**
 * Writes each member named in `wanted` (archive path -> destination file) and returns its SHA-256
 * (hex). Throws if the archive is malformed or a wanted member is missing.
 */
export async function extractFromTgz(
  tarball: string,
  wanted: ReadonlyMap<string, string>,
): Promise<Map<string, string>> {
  const reader = new ByteReader(createReadStream(tarball).pipe(createGunzip()) as AsyncIterable<Buffer>);
  const digests = new Map<string, string>();
  let longName: string | undefined;
  for (;;) {
    const header = await reader.read(BLOCK);
    if (header === undefined || header.every((b) => b === 0)) break;
    const size = octal(header.subarray(124, 136));
    const type = String.fromCharCode(header[156]!);
    const padded = Math.ceil(size / BLOCK) * BLOCK;
    if (type === "x" || type === "L") {
      const body = await reader.read(padded);
      if (body === undefined) throw new Error("unexpected end of the tar stream");
      longName = type === "x" ? paxPath(body.subarray(0, size)) : cstring(body.subarray(0, size));
      continue;
    }
    const prefix = header.subarray(257, 262).toString("latin1") === "ustar" ? cstring(header.subarray(345, 500)) : "";
    const name =
      longName ?? (prefix !== "" ? `${prefix}/${cstring(header.subarray(0, 100))}` : cstring(header.subarray(0, 100)));
    longName = undefined;
    const dest = type === "0" || type === "\0" ? wanted.get(name) : undefined;
    if (dest === undefined) {
      for await (const _ of reader.chunks(padded)) void _;
      continue;
    }
    const hash = createHash("sha256");
    const out = createWriteStream(dest, { mode: 0o755 });
    let failed: Error | undefined;
    out.on("error", (e) => (failed = e));
    for await (const chunk of reader.chunks(size)) {
      hash.update(chunk);
      if (!out.write(chunk)) await once(out, "drain");
    }
    out.end();
    if (!out.closed) await once(out, "close");
    if (failed !== undefined) throw failed;
    for await (const _ of reader.chunks(padded - size)) void _;
    digests.set(name, hash.digest("hex"));
  }
  const missing = [...wanted.keys()].filter((k) => !digests.has(k));
  if (missing.length > 0) throw new Error(`not in the archive: ${missing.join(", ")}`);
  return digests;
}
