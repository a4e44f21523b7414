/**
 * Network namespaces for partitioning a process away from the rest of a farm (fault tests; needs
 * root and iproute2's `ip`, and util-linux's `nsenter`). The farm's servers listen on a service
 * address of their own (on the host namespace's loopback device), which every process reaches:
 * those on the host through the host's local routes, each namespace through its veth pair to the
 * host (a /30 of its own in 198.18.0.0/15, the range RFC 2544 sets aside for such tests). cut(i)
 * takes the host's end of namespace i's pair down: its packets go nowhere, its open connections
 * stall (no reset, no close: a pulled cable); restore(i) brings it back up, and those connections
 * carry on. Names carry the creating process's id, so two runs on one machine do not collide.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";

const run = promisify(execFile);

async function ip(...args: string[]): Promise<void> {
  await run("ip", args);
}

/** Why namespaces cannot be made here (not root, no `ip` or `nsenter`), or undefined if they can. */
export async function netnsUnavailable(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return "not root";
  for (const tool of ["ip", "nsenter"])
    try {
      await run(tool, ["-V"]);
    } catch {
      return `no ${tool}`;
    }
  const probe = `ffprobe${process.pid}`;
  try {
    await ip("netns", "add", probe);
  } catch (err) {
    return `ip netns add failed: ${(err as Error).message.trim()}`;
  }
  await ip("netns", "del", probe).catch(() => undefined);
  return undefined;
}

export class NetPartition {
  private readonly tag = `ff${process.pid % 1_000_000}`;
  private readonly net: string;
  private made: { namespaces: string[]; links: string[]; address: boolean } = {
    namespaces: [],
    links: [],
    address: false,
  };

  private constructor(readonly count: number) {
    const pid = process.pid;
    this.net = `198.${18 + ((pid >> 8) & 1)}.${pid & 255}`;
  }

  /** `count` namespaces, each joined to the host by a veth pair, and the service address. */
  static async create(count: number): Promise<NetPartition> {
    if (count < 1 || count > 60) throw new Error(`1 to 60 namespaces, not ${count}`);
    const p = new NetPartition(count);
    try {
      await p.make();
    } catch (err) {
      await p.destroy();
      throw err;
    }
    return p;
  }

  /** Where the farm's servers listen (NATS, S3): reachable from the host and every namespace. */
  get serviceHost(): string {
    return `${this.net}.1`;
  }

  /** Namespace i's own address (where a process in it serves, for the host to reach). */
  hostOf(i: number): string {
    return `${this.net}.${4 * i + 6}`;
  }

  /** The command prefix that runs a program in namespace i (nsenter execs it: same process id). */
  prefix(i: number): string[] {
    return ["nsenter", `--net=/run/netns/${this.namespace(i)}`, "--"];
  }

  private namespace(i: number): string {
    return `${this.tag}n${i}`;
  }

  private hostEnd(i: number): string {
    return `${this.tag}h${i}`;
  }

  private async make(): Promise<void> {
    // On the host's loopback device (kernels without the dummy module have that one too).
    await ip("addr", "add", `${this.serviceHost}/32`, "dev", "lo");
    this.made.address = true;
    for (let i = 0; i < this.count; i++) {
      const ns = this.namespace(i);
      const host = this.hostEnd(i);
      const inner = `${this.tag}i${i}`;
      const hostAddr = `${this.net}.${4 * i + 5}`;
      await ip("netns", "add", ns);
      this.made.namespaces.push(ns);
      await ip("link", "add", host, "type", "veth", "peer", "name", inner);
      this.made.links.push(host);
      await ip("link", "set", inner, "netns", ns);
      await ip("addr", "add", `${hostAddr}/30`, "dev", host);
      await ip("link", "set", host, "up");
      await ip("-n", ns, "addr", "add", `${this.hostOf(i)}/30`, "dev", inner);
      await ip("-n", ns, "link", "set", inner, "up");
      await ip("-n", ns, "link", "set", "lo", "up");
      await ip("-n", ns, "route", "add", "default", "via", hostAddr);
    }
  }

  /** Takes namespace i's link down: nothing passes either way until restore(i). */
  async cut(i: number): Promise<void> {
    await ip("link", "set", this.hostEnd(i), "down");
  }

  /** Brings namespace i's link up again (its default route survives the cut). */
  async restore(i: number): Promise<void> {
    await ip("link", "set", this.hostEnd(i), "up");
  }

  /** Removes the namespaces and links (processes still in a namespace should be gone first). */
  async destroy(): Promise<void> {
    for (const l of this.made.links.splice(0)) await ip("link", "del", l).catch(() => undefined);
    for (const ns of this.made.namespaces.splice(0)) await ip("netns", "del", ns).catch(() => undefined);
    if (this.made.address) await ip("addr", "del", `${this.serviceHost}/32`, "dev", "lo").catch(() => undefined);
    this.made.address = false;
  }
}
