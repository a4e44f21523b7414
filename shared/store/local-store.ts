/**
 * Object store on a local directory, for embedded mode and single-machine runs. Writes go to a
 * temporary file that is renamed into place, so a crash never leaves a half-written object.
 */
import { randomBytes } from "node:crypto";
import { link, mkdir, open, readdir, rename, rm, stat, unlink } from "node:fs/promises";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { FarmError } from "../errors.js";
import {
  bodyLength,
  sha256Hex,
  validateObjectKey,
  type ObjectBody,
  type ObjectStore,
  type PutResult,
} from "./object-store.js";

const TEMP_SUFFIX = ".partial";

/*
 * Whole-file I/O in as few requests as the kernel allows. fs.promises.writeFile/readFile move
 * 512 KiB per request, each a trip through libuv's thread pool and back to the event loop; on a
 * GPU node those trips queue behind onnxruntime's runs and the node's own CPU work, and a section
 * video (~340 MB at 640x640) took 7 s to write beside a running denoise on an H200 node.
 */
async function writeWhole(file: string, body: ObjectBody): Promise<void> {
  const handle = await open(file, "wx");
  try {
    for (const data of body instanceof Uint8Array ? [body] : body)
      for (let at = 0; at < data.length;) at += (await handle.write(data, at, data.length - at)).bytesWritten;
  } finally {
    await handle.close();
  }
}

async function readWhole(file: string): Promise<Uint8Array> {
  const handle = await open(file, "r");
  try {
    const { size } = await handle.stat();
    const out = new Uint8Array(size);
    for (let at = 0; at < size;) {
      const { bytesRead } = await handle.read(out, at, size - at, at);
      if (bytesRead === 0) throw new FarmError("DATA_LOSS", `${file} ended after ${at} of its ${size} bytes`);
      at += bytesRead;
    }
    return out;
  } finally {
    await handle.close();
  }
}

export class LocalObjectStore implements ObjectStore {
  readonly root: string;

  constructor(root: string) {
    this.root = path.resolve(root);
  }

  private file(key: string): string {
    return path.join(this.root, ...validateObjectKey(key).split("/"));
  }

  private async writeTemp(file: string, data: ObjectBody): Promise<string> {
    await mkdir(path.dirname(file), { recursive: true });
    const temp = `${file}.${randomBytes(6).toString("hex")}${TEMP_SUFFIX}`;
    await writeWhole(temp, data);
    return temp;
  }

  async put(key: string, data: ObjectBody): Promise<PutResult> {
    const file = this.file(key);
    await rename(await this.writeTemp(file, data), file);
    return { key, size: bodyLength(data), sha256: sha256Hex(data) };
  }

  async putIfAbsent(key: string, data: ObjectBody): Promise<boolean> {
    const file = this.file(key);
    const temp = await this.writeTemp(file, data);
    try {
      // link() fails if the target exists: an atomic create-if-absent.
      await link(temp, file);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
      throw err;
    } finally {
      await unlink(temp).catch(() => undefined);
    }
  }

  async get(key: string): Promise<Uint8Array> {
    try {
      return await readWhole(this.file(key));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT")
        throw new FarmError("NOT_FOUND", `object ${key} does not exist`, { cause: err });
      throw err;
    }
  }

  async head(key: string): Promise<{ size: number } | null> {
    const s = await stat(this.file(key)).catch(() => null);
    return s?.isFile() === true ? { size: s.size } : null;
  }

  async delete(key: string): Promise<void> {
    await rm(this.file(key), { force: true });
  }

  async list(prefix: string): Promise<string[]> {
    const keys: string[] = [];
    const walk = async (dir: string, rel: string): Promise<void> => {
      const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
      for (const e of entries) {
        const key = rel === "" ? e.name : `${rel}/${e.name}`;
        if (e.isDirectory()) await walk(path.join(dir, e.name), key);
        else if (!e.name.endsWith(TEMP_SUFFIX) && key.startsWith(prefix)) keys.push(key);
      }
    };
    if (prefix !== "") validateObjectKey(prefix, true);
    await walk(this.root, "");
    return keys.sort();
  }

  async deletePrefix(prefix: string): Promise<number> {
    const keys = await this.list(prefix);
    await Promise.all(keys.map((k) => this.delete(k)));
    return keys.length;
  }

  /** A file: URL (embedded mode's reader is on this machine); there is no header to ask a download with. */
  async presignedGetUrl(key: string): Promise<string> {
    return pathToFileURL(this.file(key)).href;
  }

  async close(): Promise<void> {}
}
