/**
 * The token file kept current while the coordinator runs: a change (in place or by rename, as
 * editors and Kubernetes Secret volumes do it) and SIGHUP take effect; a bad file keeps the
 * previous tokens and logs an error that names the line, never the token.
 */
import { afterEach, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rename, rm, unlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { pino } from "pino";
import { TokenAuth } from "../../coordinator/auth/tokens.js";
import { watchTokenFile, type TokenFileWatcher } from "../../coordinator/auth/token-file.js";
import { FarmError } from "../../shared/errors.js";
import { sleep, until } from "../support/wait.js";

const A = "aaaaaaaaaaaaaaaa-token-a";
const B = "bbbbbbbbbbbbbbbb-token-b";
const C = "cccccccccccccccc-token-c";

const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

/** A token file in a fresh directory, its TokenAuth, a watcher and the log lines it wrote. */
async function setUp(
  text: string,
  options: { debounceMs?: number; signal?: NodeJS.Signals | null } = {},
): Promise<{
  file: string;
  auth: TokenAuth;
  watcher: TokenFileWatcher;
  logs: { level: number; msg: string; err?: string }[];
}> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "framefarm-tokens-"));
  cleanup.push(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, "tokens");
  await writeFile(file, text);
  const auth = await TokenAuth.fromFile(file);
  const logs: { level: number; msg: string; err?: string }[] = [];
  const log = pino({ level: "info" }, { write: (line: string) => void logs.push(JSON.parse(line)) });
  const watcher = await watchTokenFile(file, auth, log, { debounceMs: 50, signal: null, ...options });
  cleanup.push(() => watcher.stop());
  return { file, auth, watcher, logs };
}
const tenant = (auth: TokenAuth, token: string): string | undefined => {
  try {
    return auth.tenantForToken(token);
  } catch (e) {
    if (e instanceof FarmError && e.status === "UNAUTHENTICATED") return undefined;
    throw e;
  }
};

test("an edit in place adds and revokes tokens, and listeners hear of it", async () => {
  const { file, auth } = await setUp(`acme:${A}\nbeta:${B}\n`);
  let changes = 0;
  cleanup.push(auth.onChange(() => changes++));
  await writeFile(file, `acme:${A}\ngamma:${C}\n`);
  await until("beta revoked", () => tenant(auth, B) === undefined, 5_000);
  assert.equal(tenant(auth, A), "acme");
  assert.equal(tenant(auth, C), "gamma");
  assert.deepEqual(auth.tenants, ["acme", "gamma"]);
  assert.equal(changes, 1);
});

test("a file replaced by rename (editors, Kubernetes' ..data swap) is followed, again and again", async () => {
  const { file, auth } = await setUp(`acme:${A}\n`);
  for (const [token, name] of [
    [B, "beta"],
    [C, "gamma"],
  ] as const) {
    const tmp = `${file}.swp`;
    await writeFile(tmp, `${name}:${token}\n`);
    await rename(tmp, file);
    await until(`${name} admitted`, () => tenant(auth, token) === name, 5_000);
  }
  assert.equal(tenant(auth, A), undefined);
  assert.equal(tenant(auth, B), undefined);
});

test("a malformed or missing file keeps the previous tokens and logs the line at fault", async () => {
  const { file, auth, watcher, logs } = await setUp(`acme:${A}\nbeta:${B}\n`);
  await writeFile(file, `# rotated\nacme:${A}\nbeta ${C}\n`);
  await until("the refusal logged", () => logs.some((l) => l.level === 50), 5_000);
  const refusal = logs.find((l) => l.level === 50)!;
  assert.match(refusal.msg, /previous tokens stay in force/);
  assert.match(refusal.err!, /line 3: expected tenant:token/);
  assert.equal(tenant(auth, A), "acme");
  assert.equal(tenant(auth, B), "beta", "the old file's tokens still work");
  assert.equal(tenant(auth, C), undefined);
  // A short token is named by its line too, and the token is never in the log.
  await writeFile(file, `acme:${A}\n\nbeta:short\n`);
  assert.equal(await watcher.reload(), false);
  assert.match(logs.at(-1)!.err!, /line 3 \(tenant "beta"\): the token is 5 characters/);
  await writeFile(file, "# everyone removed by mistake\n");
  assert.equal(await watcher.reload(), false);
  assert.match(logs.at(-1)!.err!, /names no tokens/);
  await unlink(file);
  assert.equal(await watcher.reload(), false);
  assert.match(logs.at(-1)!.err!, /ENOENT/);
  assert.ok(!JSON.stringify(logs).includes(A), "no token in the logs");
  assert.equal(tenant(auth, B), "beta");
  // Fixed: the new file takes effect.
  await writeFile(file, `acme:${A}\n`);
  await until("beta revoked", () => tenant(auth, B) === undefined, 5_000);
});

test("SIGHUP re-reads the file; an unchanged file changes nothing", async () => {
  // A debounce far beyond the test: only the signal can reload in time.
  const { file, auth, watcher } = await setUp(`acme:${A}\n`, { debounceMs: 600_000, signal: "SIGHUP" });
  let changes = 0;
  cleanup.push(auth.onChange(() => changes++));
  assert.equal(await watcher.reload(), false, "unchanged");
  await writeFile(file, `beta:${B}\n`);
  await sleep(100);
  assert.equal(tenant(auth, A), "acme");
  process.kill(process.pid, "SIGHUP");
  await until("the signal's reload", () => tenant(auth, B) === "beta", 5_000);
  assert.equal(tenant(auth, A), undefined);
  assert.equal(changes, 1);
});

test("a farm with tokens cannot become open by a reload", () => {
  const auth = TokenAuth.parse(`acme:${A}`);
  assert.throws(() => auth.replaceWith(TokenAuth.open()), /cannot become open/);
  assert.equal(auth.tenantForToken(A), "acme");
});
