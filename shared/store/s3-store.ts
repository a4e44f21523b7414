/**
 * Object store on S3 through the minio client: MinIO in production (deploy/), s3rver in local
 * runs and tests. Only the S3 API is used, so the code cannot tell the servers apart.
 */
import { Client, S3Error } from "minio";
import { FarmError } from "../errors.js";
import {
  bodyBytes,
  sha256Hex,
  validateObjectKey,
  type ObjectBody,
  type ObjectStore,
  type PutResult,
} from "./object-store.js";

export interface S3StoreConfig {
  endpoint: string;
  port: number;
  useSSL: boolean;
  accessKey: string;
  secretKey: string;
  bucket: string;
  region?: string;
  /**
   * How long an unreachable or overloaded server is retried (with backoff) before an operation
   * fails UNAVAILABLE; 0 never retries. Default 30 s: a server restart is ridden out, an outage
   * fails the task with a clear reason and the farm's retry budget takes over.
   */
  retryForMs?: number;
}

/** Errors of a server that is away or overloaded (worth another try), as opposed to answers. */
const TRANSIENT_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EAI_AGAIN",
  "SlowDown",
  "InternalError",
  "ServiceUnavailable",
  "RequestTimeout",
]);

export function isTransientStoreError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === "string" && TRANSIENT_CODES.has(code)) return true;
  return /socket hang up|ECONNREFUSED|ECONNRESET/.test(String((err as Error | null)?.message ?? ""));
}

const notFoundCodes = new Set(["NoSuchKey", "NotFound", "NoSuchObject"]);

function isNotFound(err: unknown): boolean {
  return (err instanceof S3Error || err instanceof Error) && notFoundCodes.has(String((err as { code?: string }).code));
}

async function collect(stream: NodeJS.ReadableStream): Promise<Uint8Array> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return new Uint8Array(Buffer.concat(chunks));
}

export class S3ObjectStore implements ObjectStore {
  private readonly client: Client;
  /** Bytes this client has read and written so far (node heartbeats, metrics). */
  readonly traffic = { read: 0, written: 0 };

  private constructor(
    client: Client,
    readonly bucket: string,
    private readonly where: string,
    private readonly retryForMs: number,
  ) {
    this.client = client;
  }

  /** Runs op, again after 100 ms, 200 ms, ... (at most 2 s apart) while the server is away, up to retryForMs. */
  private async retry<T>(what: string, op: () => Promise<T>): Promise<T> {
    const start = Date.now();
    for (let delay = 100; ; delay = Math.min(delay * 2, 2000)) {
      try {
        return await op();
      } catch (err) {
        if (!isTransientStoreError(err)) throw err;
        const waited = Date.now() - start;
        if (waited + delay > this.retryForMs) {
          throw new FarmError(
            "UNAVAILABLE",
            `object store ${this.where} unreachable for ${(waited / 1000).toFixed(1)} s (${what}): ${(err as Error).message}`,
            { cause: err },
          );
        }
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  /** Connects and creates the bucket if it does not exist yet. */
  static async open(config: S3StoreConfig): Promise<S3ObjectStore> {
    const client = new Client({
      endPoint: config.endpoint,
      port: config.port,
      useSSL: config.useSSL,
      accessKey: config.accessKey,
      secretKey: config.secretKey,
      region: config.region ?? "us-east-1",
      pathStyle: true,
      // One PUT per object up to S3's single-PUT limit: above its default 64 MiB the client
      // uploads in parts and first lists incomplete uploads, which s3rver (the local cluster's
      // store) refuses as not implemented; a 640x640 section's decoded video is ~340 MB.
      partSize: 5 * 1024 ** 3,
    });
    try {
      if (!(await client.bucketExists(config.bucket)))
        await client.makeBucket(config.bucket, config.region ?? "us-east-1");
    } catch (err) {
      throw new FarmError(
        "UNAVAILABLE",
        `object store ${config.endpoint}:${config.port} bucket ${config.bucket}: ${(err as Error).message}`,
        { cause: err },
      );
    }
    return new S3ObjectStore(client, config.bucket, `${config.endpoint}:${config.port}`, config.retryForMs ?? 30_000);
  }

  async put(key: string, parts: ObjectBody, contentType = "application/octet-stream"): Promise<PutResult> {
    validateObjectKey(key);
    // One request per object: minio sends a Buffer in one PUT (a stream goes multipart past 64 MiB).
    const data = bodyBytes(parts);
    const body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    await this.retry(`write of ${key}`, () =>
      this.client.putObject(this.bucket, key, body, data.byteLength, { "Content-Type": contentType }),
    );
    this.traffic.written += data.byteLength;
    return { key, size: data.length, sha256: sha256Hex(data) };
  }

  async putIfAbsent(key: string, data: ObjectBody, contentType?: string): Promise<boolean> {
    // S3 conditional writes are not available on every server; callers that need strict
    // exclusivity take it from the job state (a revision-checked KV update), not from here.
    if ((await this.head(key)) !== null) return false;
    await this.put(key, data, contentType);
    return true;
  }

  async get(key: string): Promise<Uint8Array> {
    validateObjectKey(key);
    try {
      const data = await this.retry(`read of ${key}`, async () =>
        collect(await this.client.getObject(this.bucket, key)),
      );
      this.traffic.read += data.byteLength;
      return data;
    } catch (err) {
      if (err instanceof FarmError) throw err;
      if (isNotFound(err)) throw new FarmError("NOT_FOUND", `object ${key} does not exist`, { cause: err });
      throw new FarmError("UNAVAILABLE", `object store read of ${key} failed: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  async head(key: string): Promise<{ size: number } | null> {
    validateObjectKey(key);
    try {
      return { size: (await this.retry(`stat of ${key}`, () => this.client.statObject(this.bucket, key))).size };
    } catch (err) {
      if (err instanceof FarmError) throw err;
      if (isNotFound(err)) return null;
      throw new FarmError("UNAVAILABLE", `object store stat of ${key} failed: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  async delete(key: string): Promise<void> {
    validateObjectKey(key);
    await this.retry(`delete of ${key}`, () => this.client.removeObject(this.bucket, key));
  }

  async list(prefix: string): Promise<string[]> {
    if (prefix !== "") validateObjectKey(prefix, true);
    return this.retry(`listing of ${prefix || "the bucket"}`, async () => {
      const keys: string[] = [];
      for await (const item of this.client.listObjectsV2(this.bucket, prefix, true)) {
        const name = (item as { name?: string }).name;
        if (name !== undefined) keys.push(name);
      }
      return keys.sort();
    });
  }

  async deletePrefix(prefix: string): Promise<number> {
    const keys = await this.list(prefix);
    if (keys.length > 0)
      await this.retry(`deletion under ${prefix}`, () => this.client.removeObjects(this.bucket, keys));
    return keys.length;
  }

  async presignedGetUrl(key: string, expirySeconds: number, downloadAs?: string): Promise<string> {
    validateObjectKey(key);
    if (downloadAs === undefined) return this.client.presignedGetObject(this.bucket, key, expirySeconds);
    // The name goes into a header: framefarm's own names only (ids and extensions), checked as keys are.
    validateObjectKey(downloadAs);
    return this.client.presignedGetObject(this.bucket, key, expirySeconds, {
      "response-content-disposition": `attachment; filename="${downloadAs}"`,
    });
  }

  async close(): Promise<void> {}
}
