/**
 * The environment fallbacks containers rely on (deploy/k8s): read when no flag is given, a flag
 * wins, and bad values are refused with a message naming the variable.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { farmConnection, natsCredentials } from "../../coordinator/cli/farm-options.js";
import { FarmError } from "../../shared/errors.js";
import { natsServers } from "../../shared/bus/nats-bus.js";
import { decodeConcurrencyFor } from "../../gpu-node/worker/node-loop.js";
import { decodedTileCacheBytes } from "../../gpu-node/stages/decode-latents.js";

function withEnv<T>(vars: Record<string, string>, fn: () => T): T {
  const saved = { ...process.env };
  Object.assign(process.env, vars);
  try {
    return fn();
  } finally {
    for (const k of Object.keys(vars)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
  }
}

test("farm connection settings come from FRAMEFARM_* when no flag is given; flags win", () => {
  const env = {
    FRAMEFARM_NATS: "nats://nats:4222",
    FRAMEFARM_S3: "minio:9000",
    FRAMEFARM_S3_BUCKET: "b",
    FRAMEFARM_NATS_REPLICAS: "3",
  };
  const c = withEnv(env, () => farmConnection({}));
  assert.deepEqual(
    [c.nats, c.s3.host, c.s3.port, c.s3.bucket, c.natsReplicas],
    ["nats://nats:4222", "minio", 9000, "b", 3],
  );
  const f = withEnv(env, () => farmConnection({ nats: "nats://other:1", s3: "s3.example:443", bucket: "x" }));
  assert.deepEqual([f.nats, f.s3.host, f.s3.port, f.s3.bucket], ["nats://other:1", "s3.example", 443, "x"]);
  assert.equal(
    withEnv({ FRAMEFARM_NATS: "nats://n:1", FRAMEFARM_S3: "s:1" }, () => {
      delete process.env["FRAMEFARM_NATS_REPLICAS"];
      return farmConnection({}).natsReplicas;
    }),
    1,
  );
});

test("FRAMEFARM_NATS_REPLICAS must be a whole number of replicas JetStream supports", () => {
  for (const bad of ["0", "6", "2.5", "three"]) {
    assert.throws(
      () =>
        withEnv({ FRAMEFARM_NATS: "nats://n:1", FRAMEFARM_S3: "s:1", FRAMEFARM_NATS_REPLICAS: bad }, () =>
          farmConnection({}),
        ),
      (e: unknown) =>
        e instanceof FarmError && e.status === "INVALID_ARGUMENT" && /FRAMEFARM_NATS_REPLICAS/.test(e.message),
      bad,
    );
  }
});

test("--nats takes a cluster's servers, comma-separated", () => {
  assert.deepEqual(natsServers("nats://a:1, nats://b:2,nats://c:3,"), ["nats://a:1", "nats://b:2", "nats://c:3"]);
  assert.deepEqual(natsServers("nats://a:1"), ["nats://a:1"]);
});

test("FRAMEFARM_DECODE_CONCURRENCY: two decodes on CUDA, one elsewhere, an override, and bad values named", () => {
  assert.equal(decodeConcurrencyFor("cuda", {}), 2);
  assert.equal(decodeConcurrencyFor("cpu", {}), 1);
  assert.equal(decodeConcurrencyFor("webgpu", { FRAMEFARM_DECODE_CONCURRENCY: "" }), 1);
  assert.equal(decodeConcurrencyFor("cuda", { FRAMEFARM_DECODE_CONCURRENCY: "1" }), 1);
  assert.equal(decodeConcurrencyFor("cpu", { FRAMEFARM_DECODE_CONCURRENCY: "3" }), 3);
  for (const bad of ["0", "two", "1.5", "9"])
    assert.throws(
      () => decodeConcurrencyFor("cuda", { FRAMEFARM_DECODE_CONCURRENCY: bad }),
      /FRAMEFARM_DECODE_CONCURRENCY/,
    );
});

test("FRAMEFARM_DECODE_TILE_CACHE_MB: 512 MB unless given, 0 turns it off, bad values named", () => {
  assert.equal(decodedTileCacheBytes({}), 512 * 2 ** 20);
  assert.equal(decodedTileCacheBytes({ FRAMEFARM_DECODE_TILE_CACHE_MB: "" }), 512 * 2 ** 20);
  assert.equal(decodedTileCacheBytes({ FRAMEFARM_DECODE_TILE_CACHE_MB: "0" }), 0);
  assert.equal(decodedTileCacheBytes({ FRAMEFARM_DECODE_TILE_CACHE_MB: "256" }), 256 * 2 ** 20);
  for (const bad of ["-1", "lots", "1.5"])
    assert.throws(
      () => decodedTileCacheBytes({ FRAMEFARM_DECODE_TILE_CACHE_MB: bad }),
      /FRAMEFARM_DECODE_TILE_CACHE_MB must be a whole number of MB/,
    );
});

test("the NATS user: --nats-user with its password from a file, FRAMEFARM_NATS_PASSWORD or the flag; none without a user", async () => {
  const { mkdtemp, rm, writeFile } = await import("node:fs/promises");
  const { tmpdir } = await import("node:os");
  const path = await import("node:path");
  const dir = await mkdtemp(path.join(tmpdir(), "framefarm-nats-pw-"));
  try {
    const file = path.join(dir, "password");
    await writeFile(file, "from-the-file-0123456789\n"); // a Secret's file often ends with a newline
    const clear = { FRAMEFARM_NATS_USER: "", FRAMEFARM_NATS_PASSWORD: "", FRAMEFARM_NATS_PASSWORD_FILE: "" };
    assert.equal(
      withEnv(clear, () => natsCredentials({})),
      undefined,
    );
    assert.deepEqual(
      withEnv({ ...clear, FRAMEFARM_NATS_USER: "node-denoise", FRAMEFARM_NATS_PASSWORD: "from-env-0123456789" }, () =>
        natsCredentials({}),
      ),
      { user: "node-denoise", password: "from-env-0123456789" },
    );
    assert.deepEqual(
      withEnv({ ...clear, FRAMEFARM_NATS_PASSWORD: "from-env-0123456789" }, () =>
        natsCredentials({ "nats-user": "coordinator", "nats-password-file": file }),
      ),
      { user: "coordinator", password: "from-the-file-0123456789" },
      "the file wins over the variable",
    );
    const refused = (values: Parameters<typeof natsCredentials>[0], env: Record<string, string>, pattern: RegExp) =>
      assert.throws(
        () => withEnv({ ...clear, ...env }, () => natsCredentials(values)),
        (e: unknown) => e instanceof FarmError && pattern.test(e.message),
      );
    refused({ "nats-user": "coordinator" }, {}, /NATS user coordinator without a password/);
    refused({ "nats-password": "p-0123456789abcdef" }, {}, /a NATS password without --nats-user/);
    refused({ "nats-user": "no good", "nats-password": "p-0123456789abcdef" }, {}, /must be 1-64 of/);
    refused(
      { "nats-user": "u", "nats-password-file": path.join(dir, "missing") },
      {},
      /password file .* cannot be read/,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
