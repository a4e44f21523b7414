/**
 * Bearer tokens and tenants: the one place that turns a caller's credential into a tenant, for the
 * gRPC API and the HTTP dashboard alike (tenantForAuthorization takes the Authorization header).
 *
 * Tokens come from a file (`--tokens FILE` or FRAMEFARM_TOKENS_FILE): either lines `tenant:token`
 * (# comments and blank lines ignored; several lines per tenant allow rotation) or JSON
 * `{"tenant": "token" | ["token", ...]}`. Only SHA-256 digests of the tokens are kept, and every
 * digest is compared in constant time, so neither memory dumps nor timing reveal a token.
 *
 * With no tokens the farm is open (development): every caller is DEFAULT_TENANT. Records written
 * before tenants existed also belong to DEFAULT_TENANT.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { readFile } from "node:fs/promises";
import { FarmError } from "../../shared/errors.js";

export const DEFAULT_TENANT = "default";
/** Tenant names end up in object keys (uploads/<tenant>/) and KV hashes: keep them plain. */
export const TENANT_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** Shorter tokens are guessable; refuse them at start-up rather than run with them. */
export const MIN_TOKEN_LENGTH = 16;
const TOKEN_PATTERN = /^[\x21-\x7e]+$/;

const digest = (token: string): Buffer => createHash("sha256").update(token, "utf8").digest();

export class TokenAuth {
  private constructor(private readonly entries: readonly { tenant: string; hash: Buffer }[]) {}

  /** No tokens: every caller is DEFAULT_TENANT. */
  static open(): TokenAuth {
    return new TokenAuth([]);
  }

  static fromEntries(entries: readonly { tenant: string; token: string }[], source = "tokens"): TokenAuth {
    if (entries.length === 0)
      throw new FarmError("INVALID_ARGUMENT", `${source} names no tokens; leave it out to run open (development only)`);
    const seen = new Set<string>();
    const out = entries.map(({ tenant, token }, i) => {
      const what = `${source}: entry ${i + 1} (tenant ${JSON.stringify(tenant)})`;
      if (!TENANT_PATTERN.test(tenant))
        throw new FarmError(
          "INVALID_ARGUMENT",
          `${what}: tenant names are 1-64 characters of [A-Za-z0-9._-], starting with a letter or digit`,
        );
      // The token itself is never echoed in messages.
      if (!TOKEN_PATTERN.test(token))
        throw new FarmError("INVALID_ARGUMENT", `${what}: a token is printable ASCII without spaces`);
      if (token.length < MIN_TOKEN_LENGTH)
        throw new FarmError(
          "INVALID_ARGUMENT",
          `${what}: the token is ${token.length} characters; use at least ${MIN_TOKEN_LENGTH} (e.g. openssl rand -hex 32)`,
        );
      const hash = digest(token);
      if (seen.has(hash.toString("hex")))
        throw new FarmError("INVALID_ARGUMENT", `${what}: the same token appears twice`);
      seen.add(hash.toString("hex"));
      return { tenant, hash };
    });
    return new TokenAuth(out);
  }

  /** Parses a token file's text (lines `tenant:token` or JSON, see the file comment). */
  static parse(text: string, source = "tokens"): TokenAuth {
    const entries: { tenant: string; token: string }[] = [];
    const trimmed = text.trim();
    if (trimmed.startsWith("{")) {
      let json: unknown;
      try {
        json = JSON.parse(trimmed);
      } catch (err) {
        throw new FarmError("INVALID_ARGUMENT", `${source} is not valid JSON: ${(err as Error).message}`, {
          cause: err,
        });
      }
      for (const [tenant, v] of Object.entries(json as Record<string, unknown>)) {
        const tokens = Array.isArray(v) ? v : [v];
        for (const token of tokens) {
          if (typeof token !== "string")
            throw new FarmError(
              "INVALID_ARGUMENT",
              `${source}: tenant ${JSON.stringify(tenant)} maps to a non-string token`,
            );
          entries.push({ tenant, token });
        }
      }
    } else {
      text.split(/\r?\n/).forEach((raw, i) => {
        const line = raw.trim();
        if (line === "" || line.startsWith("#")) return;
        const colon = line.indexOf(":");
        if (colon < 0) throw new FarmError("INVALID_ARGUMENT", `${source} line ${i + 1}: expected tenant:token`);
        entries.push({ tenant: line.slice(0, colon).trim(), token: line.slice(colon + 1).trim() });
      });
    }
    return TokenAuth.fromEntries(entries, source);
  }

  static async fromFile(file: string): Promise<TokenAuth> {
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch (err) {
      throw new FarmError("NOT_FOUND", `token file ${file} cannot be read: ${(err as Error).message}`, { cause: err });
    }
    return TokenAuth.parse(text, `token file ${file}`);
  }

  /** True when no tokens are configured (every caller is DEFAULT_TENANT). */
  get isOpen(): boolean {
    return this.entries.length === 0;
  }

  get tenants(): string[] {
    return [...new Set(this.entries.map((e) => e.tenant))].sort();
  }

  /** The tenant of a token; UNAUTHENTICATED if it is none of the configured ones. */
  tenantForToken(token: string): string {
    if (this.isOpen) return DEFAULT_TENANT;
    const hash = digest(token);
    let tenant: string | undefined;
    // Compare with every entry, match or not, so the time taken does not depend on which matched.
    for (const e of this.entries) if (timingSafeEqual(hash, e.hash) && tenant === undefined) tenant = e.tenant;
    if (tenant === undefined) throw new FarmError("UNAUTHENTICATED", "the bearer token is not valid for this farm");
    return tenant;
  }

  /**
   * The tenant of a request from its Authorization header value(s) (`Bearer <token>`); for gRPC,
   * pass metadata.get("authorization"), for HTTP, req.headers.authorization.
   */
  tenantForAuthorization(header: string | readonly (string | Buffer)[] | undefined): string {
    if (this.isOpen) return DEFAULT_TENANT;
    const values = header === undefined ? [] : typeof header === "string" ? [header] : header;
    if (values.length === 0)
      throw new FarmError("UNAUTHENTICATED", "no credentials: send the header authorization: Bearer <token>");
    if (values.length > 1) throw new FarmError("UNAUTHENTICATED", "more than one authorization header");
    const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(String(values[0]));
    if (m === null) throw new FarmError("UNAUTHENTICATED", "the authorization header must be: Bearer <token>");
    return this.tenantForToken(m[1]!);
  }

  /**
   * A gate for the HTTP dashboard, which shows every tenant's jobs and so is for operators only:
   * true for a valid bearer token of one of operatorTenants (anyone on an open farm), else false.
   */
  operatorGate(
    operatorTenants: readonly string[],
  ): (req: { headers: { authorization?: string | undefined } }) => boolean {
    const allowed = new Set(operatorTenants);
    return (req) => {
      if (this.isOpen) return true;
      try {
        return allowed.has(this.tenantForAuthorization(req.headers.authorization));
      } catch {
        return false;
      }
    };
  }
}
