/**
 * The environment fallbacks containers rely on (deploy/k8s): read when no flag is given, a flag
 * wins, and bad values are refused with a message naming the variable.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { farmConnection } from "../../coordinator/cli/farm-options.js";
import { FarmError } from "../../shared/errors.js";
import { natsServers } from "../../shared/bus/nats-bus.js";
import { decodeConcurrencyFor } from "../../gpu-node/worker/node-loop.js";

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
