/**
 * Which webhook URLs a farm accepts, and which secret signs a tenant's events.
 *
 * - Hosts: only those the operator lists (`--webhook-allow host[:port],...`, FRAMEFARM_WEBHOOK_ALLOW;
 *   an entry without a port allows any port of that host). Anything else is INVALID_ARGUMENT
 *   naming the host, at SubmitJob.
 * - Addresses: a hostname must resolve to public addresses only: loopback, private (RFC 1918, ULA),
 *   link-local (cloud metadata), CGNAT, unspecified, multicast and reserved addresses are refused,
 *   so a webhook cannot reach into the farm's own network. An allow entry that is an IP literal
 *   (`127.0.0.1:8080`, `[::1]`) is the explicit permission for that address. Checked at SubmitJob
 *   and again before every delivery (a name may resolve elsewhere later); fetch resolves the name
 *   once more itself, so a DNS server that answers differently within that moment is not stopped.
 * - URLs: http or https, no user:password part; redirects are never followed (deliverer.ts).
 * - Secrets (`--webhook-secret`, FRAMEFARM_WEBHOOK_SECRET): on a farm without tokens the secret
 *   itself signs every event; with tokens each tenant's events are signed with
 *   HMAC-SHA256(secret, "framefarm-webhook:" + tenant) in hex, which the operator hands to that
 *   tenant (`printf 'framefarm-webhook:%s' TENANT | openssl dgst -sha256 -hmac "$SECRET"`), so no
 *   tenant can forge another's events.
 */
import { createHmac } from "node:crypto";
import { lookup } from "node:dns/promises";
import { BlockList, isIP } from "node:net";
import { FarmError } from "../../shared/errors.js";

export interface WebhookPolicyOptions {
  /** `host[:port]` entries; none: every webhook is refused. */
  allow: readonly string[];
  /** The farm's webhook secret; without it webhooks are refused. */
  secret?: string;
  /** True when the farm has tokens: tenants get derived secrets. */
  perTenantSecrets: boolean;
  /** Name resolution (tests and callers may replace it). */
  resolve?: (host: string) => Promise<string[]>;
}

interface AllowEntry {
  host: string;
  port?: number;
}

const MIN_SECRET_LENGTH = 16;

/** Addresses a webhook may not reach unless allowed by IP (one list per family: a BlockList holding
 * ::ffff:0:0/96 would match every IPv4 address). */
const INTERNAL_V4 = new BlockList();
const INTERNAL_V6 = new BlockList();
for (const [net, bits] of [
  ["0.0.0.0", 8],
  ["10.0.0.0", 8],
  ["100.64.0.0", 10],
  ["127.0.0.0", 8],
  ["169.254.0.0", 16],
  ["172.16.0.0", 12],
  ["192.0.0.0", 24],
  ["192.168.0.0", 16],
  ["198.18.0.0", 15],
  ["224.0.0.0", 4],
  ["240.0.0.0", 4],
] as const)
  INTERNAL_V4.addSubnet(net, bits, "ipv4");
for (const [net, bits] of [
  ["::", 128],
  ["::1", 128],
  ["::ffff:0:0", 96],
  ["64:ff9b::", 96],
  ["fc00::", 7],
  ["fe80::", 10],
  ["ff00::", 8],
] as const)
  INTERNAL_V6.addSubnet(net, bits, "ipv6");

export function isInternalAddress(ip: string): boolean {
  const family = isIP(ip);
  if (family === 0) return true;
  if (family === 6) {
    // An IPv4-mapped address in dotted form is the IPv4 address; in hex form it is refused.
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
    if (mapped !== null) return INTERNAL_V4.check(mapped[1]!, "ipv4");
    return INTERNAL_V6.check(ip, "ipv6");
  }
  return INTERNAL_V4.check(ip, "ipv4");
}

/** A URL's host as written in allow entries: lower case, IPv6 without brackets. */
const bare = (host: string): string => host.toLowerCase().replace(/^\[(.*)\]$/, "$1");

function parseAllowEntry(raw: string): AllowEntry {
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?$/.exec(raw);
  const port = m?.[2] === undefined ? undefined : Number(m[2]);
  if (m === null || (port !== undefined && (port < 1 || port > 65535)))
    throw new FarmError("INVALID_ARGUMENT", `--webhook-allow entries are host[:port], got ${JSON.stringify(raw)}`);
  return { host: bare(m[1]!), ...(port !== undefined ? { port } : {}) };
}

const defaultResolve = async (host: string): Promise<string[]> =>
  (await lookup(host, { all: true, verbatim: true })).map((a) => a.address);

export class WebhookPolicy {
  private readonly allow: AllowEntry[];
  private readonly resolve: (host: string) => Promise<string[]>;

  constructor(private readonly options: WebhookPolicyOptions) {
    this.allow = options.allow.map(parseAllowEntry);
    this.resolve = options.resolve ?? defaultResolve;
    if (options.secret !== undefined && options.secret.length < MIN_SECRET_LENGTH)
      throw new FarmError(
        "INVALID_ARGUMENT",
        `the webhook secret is ${options.secret.length} characters; use at least ${MIN_SECRET_LENGTH} (e.g. openssl rand -hex 32)`,
      );
  }

  /** `a,b:1,...` as the flag and its variable give it. */
  static parseAllowList(text: string | undefined): string[] {
    return (text ?? "")
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s !== "");
  }

  /** The secret that signs a tenant's events. */
  secretFor(tenant: string): string {
    const secret = this.options.secret;
    if (secret === undefined) throw new FarmError("FAILED_PRECONDITION", "this farm has no webhook secret");
    return this.options.perTenantSecrets ? tenantWebhookSecret(secret, tenant) : secret;
  }

  /**
   * Checks a webhook URL: allowed host and port, addresses it may reach. Returns the URL as
   * normalised by WHATWG URL; INVALID_ARGUMENT naming the host otherwise.
   */
  async check(raw: string): Promise<string> {
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      throw new FarmError("INVALID_ARGUMENT", `webhook_url ${JSON.stringify(raw)} is not a URL`);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:")
      throw new FarmError("INVALID_ARGUMENT", `webhook_url must be http or https, got ${url.protocol}`);
    if (url.username !== "" || url.password !== "")
      throw new FarmError("INVALID_ARGUMENT", "webhook_url must not carry a user name or password");
    if (this.options.secret === undefined)
      throw new FarmError(
        "FAILED_PRECONDITION",
        "this farm sends no webhooks: the operator has set no --webhook-secret (FRAMEFARM_WEBHOOK_SECRET)",
      );
    const host = bare(url.hostname);
    const port = Number(url.port !== "" ? url.port : url.protocol === "https:" ? 443 : 80);
    const entries = this.allow.filter((e) => e.host === host && (e.port === undefined || e.port === port));
    if (entries.length === 0)
      throw new FarmError(
        "INVALID_ARGUMENT",
        `webhook host ${url.host} is not allowed on this farm (allowed: ${this.options.allow.join(", ") || "none"})`,
      );
    await this.checkAddresses(url);
    return url.href;
  }

  /** The URL's host resolves only to addresses it may reach; INVALID_ARGUMENT naming it otherwise. */
  async checkAddresses(url: URL): Promise<void> {
    const host = bare(url.hostname);
    // An IP literal passed the allow list: that is its explicit permission.
    if (isIP(host) !== 0) return;
    let addresses: string[];
    try {
      addresses = await this.resolve(host);
    } catch (err) {
      throw new FarmError("INVALID_ARGUMENT", `webhook host ${host} does not resolve: ${(err as Error).message}`);
    }
    const internal = addresses.filter(isInternalAddress);
    if (addresses.length === 0 || internal.length > 0)
      throw new FarmError(
        "INVALID_ARGUMENT",
        `webhook host ${host} resolves to ${internal.join(", ") || "nothing"}: loopback and private addresses are refused unless allowed by IP (--webhook-allow)`,
      );
  }
}

/** A tenant's webhook secret on a farm with tokens (see the file comment). */
export function tenantWebhookSecret(farmSecret: string, tenant: string): string {
  return createHmac("sha256", farmSecret).update(`framefarm-webhook:${tenant}`, "utf8").digest("hex");
}
