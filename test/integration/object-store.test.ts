/**
 * One contract for both object stores: the local directory and S3 against a real S3 server
 * (s3rver, started as a child process on loopback; no mocks).
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { LocalObjectStore } from "../../shared/store/local-store.js";
import { S3ObjectStore } from "../../shared/store/s3-store.js";
import { validateObjectKey, type ObjectStore } from "../../shared/store/object-store.js";
import { startS3Server, S3_ACCESS_KEY, S3_SECRET_KEY, type LocalServer } from "../../coordinator/cli/local-servers.js";
import { FarmError } from "../../shared/errors.js";

function contract(name: string, open: () => Promise<ObjectStore>, close: () => Promise<void>): void {
  describe(`${name} object store`, () => {
    let store: ObjectStore;
    before(async () => {
      store = await open();
    });
    after(close);

    test("put, get, head, list, delete", async () => {
      const data = new TextEncoder().encode("hello tensors");
      const r = await store.put("jobs/a/section0/latents.safetensors", data);
      assert.equal(r.size, data.length);
      assert.match(r.sha256, /^[0-9a-f]{64}$/);
      assert.deepEqual(await store.get("jobs/a/section0/latents.safetensors"), data);
      assert.deepEqual(await store.head("jobs/a/section0/latents.safetensors"), { size: data.length });
      assert.equal(await store.head("jobs/a/missing"), null);
      await store.put("jobs/a/section1/latents.safetensors", data);
      await store.put("jobs/b/x", data);
      assert.deepEqual(await store.list("jobs/a/"), [
        "jobs/a/section0/latents.safetensors",
        "jobs/a/section1/latents.safetensors",
      ]);
      await store.delete("jobs/b/x");
      assert.deepEqual(await store.list("jobs/b/"), []);
    });

    test("a missing object is NOT_FOUND", async () => {
      await assert.rejects(
        store.get("jobs/none/here"),
        (e: unknown) => e instanceof FarmError && e.status === "NOT_FOUND",
      );
    });

    test("put replaces; putIfAbsent keeps the first", async () => {
      await store.put("k/one", Uint8Array.of(1));
      await store.put("k/one", Uint8Array.of(2));
      assert.deepEqual(await store.get("k/one"), Uint8Array.of(2));
      assert.equal(await store.putIfAbsent("k/two", Uint8Array.of(3)), true);
      assert.equal(await store.putIfAbsent("k/two", Uint8Array.of(4)), false);
      assert.deepEqual(await store.get("k/two"), Uint8Array.of(3));
    });

    test("a body in parts is stored as its parts joined, by put and putIfAbsent", async () => {
      const parts = [Uint8Array.of(1, 2), new Uint8Array(0), new Float32Array([0.5, -2]).subarray(1)].map(
        (p) => new Uint8Array(p.buffer, p.byteOffset, p.byteLength),
      );
      const joined = Uint8Array.of(1, 2, ...new Uint8Array(Float32Array.of(-2).buffer));
      const r = await store.put("parts/put", parts);
      assert.equal(r.size, joined.length);
      assert.equal(r.sha256, (await store.put("parts/whole", joined)).sha256);
      assert.deepEqual(await store.get("parts/put"), joined);
      assert.equal(await store.putIfAbsent("parts/if-absent", parts), true);
      assert.equal(await store.putIfAbsent("parts/if-absent", [Uint8Array.of(9)]), false);
      assert.deepEqual(await store.get("parts/if-absent"), joined);
    });

    test("deletePrefix removes exactly the prefix", async () => {
      for (const k of ["p/x/1", "p/x/2", "p/y/1"]) await store.put(k, Uint8Array.of(0));
      assert.equal(await store.deletePrefix("p/x/"), 2);
      assert.deepEqual(await store.list("p/"), ["p/y/1"]);
    });

    test("a large object round-trips (past the S3 client's 64 MiB multipart threshold)", async () => {
      const big = new Uint8Array(80 << 20);
      for (let i = 0; i < big.length; i += 4099) big[i] = i * 31;
      await store.put("big/blob", big);
      assert.deepEqual(await store.get("big/blob"), big);
    });

    test("keys with traversal or odd characters are refused before any I/O", async () => {
      for (const bad of ["../etc/passwd", "/abs", "a/../b", "a//b", "a/./b", "", "sp ace", "x".repeat(600)]) {
        await assert.rejects(
          store.put(bad, Uint8Array.of(1)),
          (e: unknown) => e instanceof FarmError && e.status === "INVALID_ARGUMENT",
          bad,
        );
      }
    });

    test("presigned URLs fetch the object", async () => {
      await store.put("share/video.mp4", Uint8Array.of(9, 8, 7));
      const url = await store.presignedGetUrl("share/video.mp4", 60);
      if (url.startsWith("file:")) return;
      const res = await fetch(url);
      assert.equal(res.status, 200);
      assert.deepEqual(new Uint8Array(await res.arrayBuffer()), Uint8Array.of(9, 8, 7));
      // A download URL: the same bytes, and a browser saves them under the name.
      const download = await fetch(await store.presignedGetUrl("share/video.mp4", 60, "job-1.mp4"));
      assert.equal(download.headers.get("content-disposition"), 'attachment; filename="job-1.mp4"');
      assert.deepEqual(new Uint8Array(await download.arrayBuffer()), Uint8Array.of(9, 8, 7));
    });
  });
}

const tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-store-"));
contract(
  "local directory",
  async () => new LocalObjectStore(path.join(tmp, "local")),
  async () => {},
);

let s3: LocalServer | undefined;
contract(
  "S3 (s3rver)",
  async () => {
    s3 = await startS3Server(path.join(tmp, "s3"));
    return S3ObjectStore.open({
      endpoint: s3.host,
      port: s3.port,
      useSSL: false,
      accessKey: S3_ACCESS_KEY,
      secretKey: S3_SECRET_KEY,
      bucket: "framefarm-test",
    });
  },
  async () => {
    await s3?.stop();
    await rm(tmp, { recursive: true, force: true });
  },
);

test("validateObjectKey accepts the farm's key shapes", () => {
  assert.equal(
    validateObjectKey("jobs/01HZX/section12/latents.safetensors"),
    "jobs/01HZX/section12/latents.safetensors",
  );
  assert.equal(validateObjectKey("jobs/01HZX/", true), "jobs/01HZX/");
});

test("S3: a server restart is ridden out; an outage past the limit fails UNAVAILABLE naming the store", async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-store-outage-"));
  let server = await startS3Server(path.join(dir, "s3"));
  const port = server.port;
  const config = {
    endpoint: server.host,
    port,
    useSSL: false,
    accessKey: S3_ACCESS_KEY,
    secretKey: S3_SECRET_KEY,
    bucket: "outage",
  };
  const patient = await S3ObjectStore.open({ ...config, retryForMs: 20_000 });
  const impatient = await S3ObjectStore.open({ ...config, retryForMs: 800 });
  try {
    const data = new TextEncoder().encode("kept across the outage");
    await patient.put("jobs/o/before", data);
    server.kill();
    await new Promise((r) => server.process.once("exit", r));
    const t0 = Date.now();
    await assert.rejects(
      impatient.get("jobs/o/before"),
      (e: unknown) =>
        e instanceof FarmError &&
        e.status === "UNAVAILABLE" &&
        /unreachable for \d+\.\d s \(read of jobs\/o\/before\)/.test(e.message),
    );
    assert.ok(Date.now() - t0 < 5000, "gave up after about its limit");
    // Writes and reads issued during the outage complete once the server is back.
    const during = Promise.all([patient.put("jobs/o/during", data), patient.get("jobs/o/before")]);
    await new Promise((r) => setTimeout(r, 1500));
    server = await startS3Server(path.join(dir, "s3"), port);
    const [, before] = await during;
    assert.deepEqual(before, data);
    assert.deepEqual(await patient.get("jobs/o/during"), data);
  } finally {
    await server.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
