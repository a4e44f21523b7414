/** Token files and bearer headers: what is accepted, what is refused, and which tenant a token is. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { DEFAULT_TENANT, TokenAuth } from "../../coordinator/auth/tokens.js";
import { FarmError } from "../../shared/errors.js";

const A = "aaaaaaaaaaaaaaaa-token-a";
const B = "bbbbbbbbbbbbbbbb-token-b";
const refused = (fn: () => unknown, status: string, pattern: RegExp): void =>
  assert.throws(fn, (e: unknown) => e instanceof FarmError && e.status === status && pattern.test(e.message));

test("lines tenant:token, with comments, blank lines and a rotated second token", () => {
  const auth = TokenAuth.parse(`# farm tokens\nacme:${A}\n\nbeta : ${B}\nacme:${A}-next\n`);
  assert.equal(auth.isOpen, false);
  assert.deepEqual(auth.tenants, ["acme", "beta"]);
  assert.equal(auth.tenantForAuthorization(`Bearer ${A}`), "acme");
  assert.equal(auth.tenantForAuthorization(`bearer ${A}-next`), "acme");
  assert.equal(auth.tenantForAuthorization([`Bearer ${B}`]), "beta");
});

test("JSON: tenant to token or tokens", () => {
  const auth = TokenAuth.parse(JSON.stringify({ acme: A, beta: [B] }));
  assert.equal(auth.tenantForToken(A), "acme");
  assert.equal(auth.tenantForToken(B), "beta");
});

test("bad token files are refused without echoing tokens", () => {
  refused(() => TokenAuth.parse("acme:short"), "INVALID_ARGUMENT", /the token is 5 characters; use at least 16/);
  refused(() => TokenAuth.parse(`a/b:${A}`), "INVALID_ARGUMENT", /tenant names are 1-64 characters/);
  refused(() => TokenAuth.parse(`acme:${A}\nbeta:${A}`), "INVALID_ARGUMENT", /the same token appears twice/);
  refused(() => TokenAuth.parse(`acme ${A}`), "INVALID_ARGUMENT", /line 1: expected tenant:token/);
  refused(() => TokenAuth.parse("# nothing\n"), "INVALID_ARGUMENT", /names no tokens/);
  refused(() => TokenAuth.parse("{oops"), "INVALID_ARGUMENT", /not valid JSON/);
  refused(() => TokenAuth.parse(`acme:${A} x`), "INVALID_ARGUMENT", /printable ASCII without spaces/);
  try {
    TokenAuth.parse(`acme:${A}\nbeta:${A}`);
  } catch (e) {
    assert.ok(!(e as Error).message.includes(A), "the message must not contain the token");
  }
});

test("missing, malformed, repeated and unknown credentials are UNAUTHENTICATED", () => {
  const auth = TokenAuth.fromEntries([{ tenant: "acme", token: A }]);
  refused(() => auth.tenantForAuthorization(undefined), "UNAUTHENTICATED", /no credentials/);
  refused(() => auth.tenantForAuthorization([]), "UNAUTHENTICATED", /no credentials/);
  refused(() => auth.tenantForAuthorization(`Basic ${A}`), "UNAUTHENTICATED", /Bearer <token>/);
  refused(() => auth.tenantForAuthorization("Bearer "), "UNAUTHENTICATED", /Bearer <token>/);
  refused(() => auth.tenantForAuthorization([`Bearer ${A}`, `Bearer ${A}`]), "UNAUTHENTICATED", /more than one/);
  refused(() => auth.tenantForAuthorization(`Bearer ${B}`), "UNAUTHENTICATED", /not valid for this farm/);
  refused(() => auth.tenantForAuthorization(`Bearer ${A.slice(0, -1)}`), "UNAUTHENTICATED", /not valid for this farm/);
});

test("an open farm makes every caller the default tenant", () => {
  const auth = TokenAuth.open();
  assert.equal(auth.isOpen, true);
  assert.equal(auth.tenantForAuthorization(undefined), DEFAULT_TENANT);
  assert.equal(auth.tenantForAuthorization(`Bearer ${A}`), DEFAULT_TENANT);
});

test("the dashboard gate lets in operators' tokens only (everyone on an open farm)", () => {
  const gate = TokenAuth.fromEntries([
    { tenant: "ops", token: A },
    { tenant: "acme", token: B },
  ]).operatorGate(["ops"]);
  assert.equal(gate({ headers: { authorization: `Bearer ${A}` } }), true);
  assert.equal(gate({ headers: { authorization: `Bearer ${B}` } }), false);
  assert.equal(gate({ headers: {} }), false);
  assert.equal(gate({ headers: { authorization: "Bearer nope-nope-nope-nope" } }), false);
  assert.equal(TokenAuth.open().operatorGate([])({ headers: {} }), true);
});
