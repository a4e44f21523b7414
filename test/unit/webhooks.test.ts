/**
 * Webhooks without servers: the events a record change makes, the body and its signature (and a
 * receiver's check of it, with the README's snippet), the allow list and the address check.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac, timingSafeEqual } from "node:crypto";
import {
  appendQueuedEvent,
  appendWebhookEvents,
  eventBody,
  signature,
  verifySignature,
} from "../../coordinator/webhooks/events.js";
import { WebhookPolicy, isInternalAddress, tenantWebhookSecret } from "../../coordinator/webhooks/policy.js";
import type { JobRecord } from "../../coordinator/dispatch/job-record.js";
import type { StageTask } from "../../shared/farm/protocol.js";
import { FarmError } from "../../shared/errors.js";

const task = (id: string, kind: StageTask["kind"], section?: number): StageTask => ({
  id,
  jobId: "j",
  kind,
  ...(section !== undefined ? { section } : {}),
  dependsOn: [],
  inputs: {},
  outputs: {},
});

function record(): JobRecord {
  const tasks = [
    task("j.encode_text", "encode_text"),
    task("j.denoise.0", "denoise", 0),
    task("j.denoise.1", "denoise", 1),
  ];
  return {
    spec: { jobId: "j" } as JobRecord["spec"],
    state: "QUEUED",
    tasks,
    taskStates: Object.fromEntries(tasks.map((t) => [t.id, "pending"])),
    attempts: {},
    createdAt: "",
    updatedAt: "",
    webhook: { url: "https://hooks.example/x", tenant: "default", events: [] },
  };
}

test("record changes append queued, running, each section, then the end, numbered in order", () => {
  const r = record();
  appendQueuedEvent(r, "t0");
  const step = (change: (n: JobRecord) => void): void => {
    const next = structuredClone(r);
    change(next);
    appendWebhookEvents(r, next, "t");
    Object.assign(r, next);
  };
  step((n) => ((n.taskStates["j.encode_text"] = "done"), (n.state = "RUNNING")));
  step((n) => (n.taskStates["j.denoise.0"] = "queued")); // no event
  step((n) => (n.taskStates["j.denoise.0"] = "done"));
  step((n) => {
    n.taskStates["j.denoise.1"] = "failed";
    n.state = "FAILED";
    n.error = "boom";
    n.errorStatus = "INTERNAL";
  });
  const events = r.webhook!.events;
  assert.deepEqual(
    events.map((e) => [e.seq, e.type, e.section, e.sectionsDone]),
    [
      [1, "job.queued", undefined, 0],
      [2, "job.running", undefined, 0],
      [3, "job.section_done", 0, 1],
      [4, "job.failed", undefined, 1],
    ],
  );
  assert.deepEqual(JSON.parse(eventBody("j", events[3]!)), {
    id: "j.4",
    type: "job.failed",
    sequence: 4,
    created_at: "t",
    job_id: "j",
    state: "FAILED",
    sections_done: 1,
    sections_total: 2,
    error: "boom",
    error_status: "INTERNAL",
  });
  // A job without a webhook gets nothing.
  const plain = record();
  delete plain.webhook;
  const next = structuredClone(plain);
  next.state = "CANCELLED";
  appendWebhookEvents(plain, next, "t");
  assert.equal(next.webhook, undefined);
});

test("the signature is HMAC-SHA256 over `t.body`; the receiver's check refuses tampering and old timestamps", () => {
  const secret = "s".repeat(32);
  const body = '{"id":"j.1"}';
  const t = 1_700_000_000;
  const sig = signature(secret, t, body);
  assert.equal(sig, `v1=${createHmac("sha256", secret).update(`${t}.${body}`).digest("hex")}`);
  const ok = { signature: sig, timestamp: String(t) };
  assert.equal(verifySignature(secret, ok, body, 300, t + 10), true);
  assert.equal(verifySignature(secret, ok, body + " ", 300, t + 10), false);
  assert.equal(verifySignature("x".repeat(32), ok, body, 300, t + 10), false);
  assert.equal(verifySignature(secret, ok, body, 300, t + 301), false, "a replay after 5 minutes");
  assert.equal(verifySignature(secret, { signature: sig, timestamp: String(t + 1) }, body, 300, t), false);
  assert.equal(verifySignature(secret, { signature: null, timestamp: null }, body, 300, t), false);

  // The README's snippet, as a receiver would write it.
  const readmeVerify = (raw: string, ts: string, header: string, now: number): boolean => {
    const expected = "v1=" + createHmac("sha256", secret).update(`${ts}.${raw}`).digest("hex");
    return (
      Math.abs(now - Number(ts)) <= 300 &&
      header.length === expected.length &&
      timingSafeEqual(Buffer.from(header), Buffer.from(expected))
    );
  };
  assert.equal(readmeVerify(body, String(t), sig, t), true);
});

test("tenants get their own secrets on a farm with tokens, the farm's secret without", () => {
  const secret = "farm-secret-0123456789";
  const open = new WebhookPolicy({ allow: [], secret, perTenantSecrets: false });
  const tenants = new WebhookPolicy({ allow: [], secret, perTenantSecrets: true });
  assert.equal(open.secretFor("default"), secret);
  assert.equal(tenants.secretFor("acme"), createHmac("sha256", secret).update("framefarm-webhook:acme").digest("hex"));
  assert.equal(tenants.secretFor("acme"), tenantWebhookSecret(secret, "acme"));
  assert.notEqual(tenants.secretFor("acme"), tenants.secretFor("globex"));
  assert.throws(() => new WebhookPolicy({ allow: [], secret: "short", perTenantSecrets: false }), /at least 16/);
});

test("internal addresses: loopback, private, link-local, CGNAT, ULA, mapped; public ones pass", () => {
  for (const ip of ["127.0.0.1", "10.1.2.3", "172.20.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0"])
    assert.equal(isInternalAddress(ip), true, ip);
  for (const ip of ["::1", "::", "fd00::1", "fe80::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1"])
    assert.equal(isInternalAddress(ip), true, ip);
  for (const ip of ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
    assert.equal(isInternalAddress(ip), false, ip);
});

test("the allow list and the address check refuse with INVALID_ARGUMENT naming the host", async () => {
  const names: Record<string, string[]> = {
    "hooks.example": ["93.184.216.34"],
    "inside.example": ["93.184.216.34", "10.0.0.7"],
  };
  const policy = new WebhookPolicy({
    allow: ["hooks.example", "inside.example", "127.0.0.1:8080", "[::1]:9000", "ports.example:8443"],
    secret: "s".repeat(32),
    perTenantSecrets: false,
    resolve: async (host) => names[host] ?? [],
  });
  assert.equal(await policy.check("https://hooks.example/a?b=1"), "https://hooks.example/a?b=1");
  assert.equal(await policy.check("http://hooks.example:81/"), "http://hooks.example:81/");
  assert.equal(await policy.check("http://127.0.0.1:8080/h"), "http://127.0.0.1:8080/h");
  assert.equal(await policy.check("http://[::1]:9000/h"), "http://[::1]:9000/h");
  const refused = async (url: string, re: RegExp, status = "INVALID_ARGUMENT"): Promise<void> => {
    await assert.rejects(policy.check(url), (err: unknown) => {
      assert.ok(err instanceof FarmError);
      assert.equal(err.status, status);
      assert.match(err.message, re);
      return true;
    });
  };
  await refused("https://evil.example/", /webhook host evil\.example is not allowed/);
  await refused("http://127.0.0.1:8081/", /webhook host 127\.0\.0\.1:8081 is not allowed/);
  await refused("http://2130706433:8081/", /127\.0\.0\.1:8081 is not allowed/); // WHATWG URL normalises it
  await refused("https://ports.example/", /ports\.example is not allowed/);
  await refused("http://inside.example/", /inside\.example resolves to 10\.0\.0\.7/);
  await refused("http://nowhere.example/", /nowhere\.example is not allowed/);
  await refused("ftp://hooks.example/", /http or https/);
  await refused("https://u:p@hooks.example/", /user name or password/);
  await refused("not a url", /not a URL/);
  const noSecret = new WebhookPolicy({ allow: ["hooks.example"], perTenantSecrets: false });
  await assert.rejects(noSecret.check("https://hooks.example/"), /FAILED_PRECONDITION|no --webhook-secret/);
});
