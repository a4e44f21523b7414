/**
 * Tenant fairness at the API, on real servers (nats-server, s3rver; no nodes, so jobs stay
 * queued): a tenant that is not an operator cannot jump the queue (its priority is capped), and
 * --max-queued-per-tenant refuses a tenant's submissions beyond its unfinished jobs with
 * RESOURCE_EXHAUSTED naming the limit, without touching other tenants.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { credentials, Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { JobServiceClient, JobState, type Job, type SubmitJobRequest } from "../../proto/gen/framefarm/v1/jobs.js";
import { TokenAuth } from "../../coordinator/auth/tokens.js";
import { startTestFarm, type TestFarm } from "../support/farm.js";
import { repoRoot } from "../support/paths.js";
import { bearer, smallJobRequest, unary } from "../support/grpc.js";
import { securityOptions } from "../../coordinator/cli/coordinator.js";

const ACME = "acme-token-0123456789abcdef";
const BETA = "beta-token-0123456789abcdef";
const OPS = "ops-token-0123456789abcdef";
const LIMIT = 2;
const png = await readFile(path.join(repoRoot(), "test", "fixtures", "images", "demo.png"));
let farm: TestFarm;
let client: JobServiceClient;

before(async () => {
  farm = await startTestFarm({
    auth: TokenAuth.fromEntries([
      { tenant: "acme", token: ACME },
      { tenant: "beta", token: BETA },
      { tenant: "ops", token: OPS },
    ]),
    tenancy: { operatorTenants: ["ops"], maxQueuedPerTenant: LIMIT },
  });
  client = new JobServiceClient(farm.address, credentials.createInsecure());
});

after(async () => {
  client.close();
  await farm.stop();
});

const submit = (token: string, over: Partial<SubmitJobRequest> = {}) =>
  unary<{ job?: Job; deduplicated: boolean }>((cb) => client.submitJob(smallJobRequest(png, over), bearer(token), cb));
const cancel = (token: string, id: string) => unary<{ job?: Job }>((cb) => client.cancelJob({ id }, bearer(token), cb));
const refused = (p: Promise<unknown>, code: status, pattern: RegExp): Promise<void> =>
  assert.rejects(p, (e: unknown) => {
    assert.equal(status[(e as ServiceError).code], status[code], (e as ServiceError).details);
    assert.match((e as ServiceError).details, pattern);
    return true;
  });

test("a tenant's priority is capped at 0 unless it is an operator; out of range is still refused", async () => {
  const urgent = (await submit(ACME, { priority: 50 })).job!;
  assert.equal(urgent.priority, 0, "a tenant cannot jump the queue");
  const low = (await submit(ACME, { priority: -5 })).job!;
  assert.equal(low.priority, -5, "lowering is always allowed");
  await refused(submit(BETA, { priority: 5000 }), status.INVALID_ARGUMENT, /priority must be an integer from/);
  const ops = (await submit(OPS, { priority: 50 })).job!;
  assert.equal(ops.priority, 50, "an operator's priority stands");
  for (const [token, job] of [
    [ACME, urgent],
    [ACME, low],
    [OPS, ops],
  ] as const)
    await cancel(token, job.id);
});

test("--max-queued-per-tenant refuses a tenant's job beyond the limit, names it, and spares other tenants", async () => {
  const first = (await submit(ACME, { idempotencyKey: "acme-1" })).job!;
  await submit(ACME);
  assert.equal(first.state, JobState.JOB_STATE_QUEUED);
  await refused(
    submit(ACME),
    status.RESOURCE_EXHAUSTED,
    /tenant acme has 2 unfinished jobs.*--max-queued-per-tenant 2/,
  );
  // Parallel submissions cannot slip past the limit together.
  const burst = await Promise.allSettled([submit(BETA), submit(BETA), submit(BETA)]);
  assert.deepEqual(burst.map((r) => r.status).sort(), ["fulfilled", "fulfilled", "rejected"]);
  // A repeated idempotency key still answers with its job at the limit.
  const again = await submit(ACME, { idempotencyKey: "acme-1" });
  assert.deepEqual([again.deduplicated, again.job!.id], [true, first.id]);
  // A finished (here cancelled) job frees its place.
  await cancel(ACME, first.id);
  await submit(ACME);
  await refused(submit(ACME), status.RESOURCE_EXHAUSTED, /--max-queued-per-tenant 2/);
});

test("the coordinator's flags: --tenant-max-priority, --max-queued-per-tenant and --max-running-per-tenant", async () => {
  assert.deepEqual(
    await securityOptions({ "tenant-max-priority": "3", "max-queued-per-tenant": "5", "max-running-per-tenant": "2" }),
    { tenantMaxPriority: 3, maxQueuedPerTenant: 5, maxRunningPerTenant: 2 },
  );
  await assert.rejects(
    securityOptions({ "max-running-per-tenant": "-1" }),
    /--max-running-per-tenant must be an integer 1\.\./,
  );
  await assert.rejects(
    securityOptions({ "max-queued-per-tenant": "0" }),
    /--max-queued-per-tenant must be an integer 1\.\./,
  );
  await assert.rejects(securityOptions({ "tenant-max-priority": "1.5" }), /--tenant-max-priority must be an integer/);
});
