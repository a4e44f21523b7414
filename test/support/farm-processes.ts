/**
 * A farm of real processes for fault injection: nats-server (JetStream, file storage), s3rver, one
 * or more coordinator processes (one leader, the others standing by) and node processes, each of which a test can SIGKILL and start again on the
 * same port and data folder. The test talks to the farm as a user does (gRPC) and watches it as an
 * operator would (NATS events, the object store). NATS admits only the farm's users, as `cluster`
 * and deploy/k8s run it: the coordinator's, and per kind of node one with the rights of its stages.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { appendFile, mkdir, open, rm } from "node:fs/promises";
import { promisify } from "node:util";
import path from "node:path";
import { credentials, Metadata, type ServiceError } from "@grpc/grpc-js";
import { JobServiceClient, type Job, type SubmitJobRequest } from "../../proto/gen/framefarm/v1/jobs.js";
import {
  freePort,
  LOOPBACK,
  S3_ACCESS_KEY,
  S3_SECRET_KEY,
  startNatsServer,
  startS3Server,
  LocalNatsCluster,
  type LocalServer,
} from "../../coordinator/cli/local-servers.js";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { NatsBus, natsServers, streamOf } from "../../shared/bus/nats-bus.js";
import { STAGE_KINDS } from "../../shared/farm/protocol.js";
import { COORDINATOR_BUCKET, LEADER_KEY, leaseValues } from "../../coordinator/dispatch/leader-lease.js";
import { S3ObjectStore } from "../../shared/store/s3-store.js";
import { cliPath, tinyBundleDir } from "./paths.js";
import { clusterNatsUsers, nodeNatsUser } from "../../coordinator/cli/cluster.js";
import { natsAuthorizationConfig, type NatsUser } from "../../shared/farm/nats-permissions.js";
import type { NatsCredentials } from "../../shared/bus/nats-bus.js";
import { nodeProcessEnv } from "../../gpu-node/malloc-env.js";

/** The kinds of node the farm's NATS has users for (besides those a farm starts with). */
const NODE_KINDS = ["text,image,vae", "denoise", "all"];

export interface FarmSettings {
  /** Redelivery delay of a dead node's task. */
  ackWaitMs: number;
  /** How long nodes and coordinator retry an unreachable object store. */
  s3RetryMs: number;
  /** The model bundle of coordinator and nodes (default: the tiny test bundle). */
  bundleDir?: string;
  /** Keep the S3 server's data on a tmpfs of this many MiB, so a test can fill its disk (needs root). */
  s3DiskMiB?: number;
  /** Coordinator processes (default 1), each with its own gRPC port. */
  coordinators?: number;
  /** Their leader lease TTL (`--lease-ttl-ms`). */
  leaseTtlMs?: number;
  /** More coordinator flags (`--retain-jobs 3m`, webhooks...). */
  coordinatorArgs?: string[];
  /** More flags of every node (`--cache-mb 64`; `--cache-mb 0`: every input read from the store). */
  nodeArgs?: string[];
  /**
   * Run on a JetStream cluster of this many nats-servers (3, as the gpu overlay) instead of one:
   * every process is given all their URLs, and FRAMEFARM_NATS_REPLICAS is this many.
   */
  natsCluster?: number;
  /**
   * Run the servers on a service address and each coordinator in a network namespace of its own
   * (test/support/net-partition.ts), so a test can cut one away; default: everything on loopback.
   */
  network?: FarmNetwork;
}

/** Where a farm's servers listen and its coordinators run (NetPartition is one). */
export interface FarmNetwork {
  /** The address NATS and the S3 server listen on, reachable by every process. */
  readonly serviceHost: string;
  /** The address coordinator i serves its API on. */
  hostOf(i: number): string;
  /** The command prefix that starts coordinator i where it runs (it must exec, keeping the pid). */
  prefix(i: number): string[];
}

/** A coordinator's log lines about its leader lease that the fault tests count (leaseLines). */
export const LEASE_LINES = ["leader lease acquired: dispatching", "leader lease lost: dispatching stopped"] as const;
export type LeaseLine = (typeof LEASE_LINES)[number];

/**
 * Log lines about one task that the fault tests count (taskLog): a node starting it or dropping a
 * copy done already, the coordinator ignoring a result of a task done already, and the
 * coordinator queueing it again after finding its message stranded or gone from the queues.
 */
export const TASK_LINES = [
  "task started",
  "task dropped: done already",
  "result for a task done already: ignored",
  "task queued but in no queue, twice: queued again",
  "stranded task message queued again",
  "taking over: task queued again",
] as const;
export type TaskLine = (typeof TASK_LINES)[number];

/**
 * FAULT_LOGS=DIR: every coordinator's and node's whole output is appended to DIR/<name>.log (the
 * farm otherwise keeps only each process's last lines), to follow a failed run task by task.
 */
const LOG_DIR = process.env["FAULT_LOGS"];

function keepLog(child: ChildProcess, name: string): void {
  if (LOG_DIR === undefined || LOG_DIR === "") return;
  const file = path.join(LOG_DIR, `${name.replace(/[^A-Za-z0-9_.-]/g, "_")}.log`);
  let writing: Promise<unknown> = mkdir(LOG_DIR, { recursive: true });
  const write = (b: Buffer): void => void (writing = writing.then(() => appendFile(file, b)).catch(() => undefined));
  child.stdout?.on("data", write);
  child.stderr?.on("data", write);
}

const BUCKET = "framefarm";
const run = promisify(execFile);

/** Resolves when the process prints a line matching pattern; rejects if it exits first. */
function waitForLine(child: ChildProcess, pattern: RegExp, what: string, timeoutMs = 30_000): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(
      () => done(new Error(`${what} printed no ${pattern} within ${timeoutMs} ms: ${out.slice(-500)}`)),
      timeoutMs,
    );
    const onData = (b: Buffer): void => {
      out += b.toString();
      const m = pattern.exec(out);
      if (m !== null) done(null, m);
    };
    const onExit = (code: number | null): void =>
      done(new Error(`${what} exited (${code}) before ${pattern}: ${out.slice(-500)}`));
    const done = (err: Error | null, m?: RegExpExecArray): void => {
      clearTimeout(timer);
      child.stdout?.off("data", onData);
      child.stderr?.off("data", onData);
      child.off("exit", onExit);
      if (err !== null) reject(err);
      else resolve(m!);
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    child.once("exit", onExit);
  });
}

async function killHard(child: ChildProcess | undefined): Promise<void> {
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGKILL");
  await exited;
}

export class FarmProcesses {
  /** The one nats-server (unset on a cluster farm). */
  nats!: LocalServer;
  /** The nats-servers of a cluster farm (settings.natsCluster). */
  natsCluster: LocalNatsCluster | undefined;
  s3!: LocalServer;
  private readonly coordinators: ({ child: ChildProcess; tail: string; httpPort: number } | undefined)[] = [];
  private readonly nodes = new Map<string, { child: ChildProcess; stages: string; tail: string }>();
  private nodeCount = 0;
  /** The test's own view: events and queues (NATS) and objects (S3), as an operator has. */
  bus!: NatsBus;
  store!: S3ObjectStore;
  private clients: JobServiceClient[] = [];
  /** The coordinator whose API submit, get and cancel call. */
  private apiIndex = 0;
  private grpcPorts: number[] = [];
  private s3Mounted = false;

  private constructor(
    private readonly dir: string,
    readonly settings: FarmSettings,
    private readonly users: NatsUser[],
  ) {}

  /** The coordinator's NATS user (every right): the test's own view uses it too. */
  get natsAdmin(): NatsCredentials {
    return this.credentials("coordinator");
  }

  private credentials(user: string): NatsCredentials {
    const u = this.users.find((x) => x.user === user);
    if (u === undefined) throw new Error(`the farm's NATS has no user ${user}`);
    return { user: u.user, password: u.password as string };
  }

  private startNats(port?: number): Promise<LocalServer> {
    return startNatsServer(path.join(this.dir, "nats"), port, {
      authorization: natsAuthorizationConfig(this.users),
      host: this.serviceHost,
    });
  }

  /** Where the servers listen: loopback, or the network's service address. */
  private get serviceHost(): string {
    return this.settings.network?.serviceHost ?? LOOPBACK;
  }

  /** Where coordinator i serves its API. */
  private coordinatorHost(i: number): string {
    return this.settings.network?.hostOf(i) ?? LOOPBACK;
  }

  /** nodes: id -> stage groups (`framefarm node --stages`). */
  static async start(dir: string, settings: FarmSettings, nodes: Record<string, string>): Promise<FarmProcesses> {
    const f = new FarmProcesses(dir, settings, clusterNatsUsers([...NODE_KINDS, ...Object.values(nodes)]));
    if (settings.natsCluster !== undefined)
      f.natsCluster = await LocalNatsCluster.start(path.join(dir, "nats"), settings.natsCluster, "ff-nats", {
        authorization: natsAuthorizationConfig(f.users),
      });
    else f.nats = await f.startNats();
    if (settings.s3DiskMiB !== undefined) {
      await mkdir(path.join(dir, "s3"), { recursive: true });
      await run("mount", ["-t", "tmpfs", "-o", `size=${settings.s3DiskMiB}m`, "tmpfs", path.join(dir, "s3")]);
      f.s3Mounted = true;
    }
    f.s3 = await startS3Server(path.join(dir, "s3"), undefined, f.serviceHost);
    for (let i = 0; i < (settings.coordinators ?? 1); i++) {
      f.grpcPorts.push(await freePort());
      // One at a time: the first is the leader, as in the single-coordinator runs.
      await f.startCoordinator(i);
    }
    await Promise.all(Object.entries(nodes).map(([id, stages]) => f.startNode(id, stages)));
    f.bus = await NatsBus.connect(f.natsUrl, "fault-injector", settings.natsCluster ?? 1, { credentials: f.natsAdmin });
    f.store = await S3ObjectStore.open({
      endpoint: f.serviceHost,
      port: f.s3.port,
      useSSL: false,
      accessKey: S3_ACCESS_KEY,
      secretKey: S3_SECRET_KEY,
      bucket: BUCKET,
      retryForMs: 60_000,
    });
    f.clients = f.grpcPorts.map(
      (p, i) => new JobServiceClient(`${f.coordinatorHost(i)}:${p}`, credentials.createInsecure()),
    );
    return f;
  }

  get client(): JobServiceClient {
    return this.clients[this.apiIndex]!;
  }

  /** Makes submit, get and cancel talk to coordinator i. */
  useCoordinator(i: number): void {
    this.apiIndex = i;
  }

  /** Which coordinator holds the leader lease now (by its pid in the lease), or undefined. */
  async leaderIndex(): Promise<number | undefined> {
    const e = await (await this.bus.kv(COORDINATOR_BUCKET)).get(LEADER_KEY);
    if (e === null) return undefined;
    const v = leaseValues.decode(e.value);
    if (v.released === true) return undefined;
    const i = this.coordinators.findIndex((c) => c !== undefined && v.holder.split(":")[1] === String(c.child.pid));
    return i < 0 ? undefined : i;
  }

  /**
   * Task messages ever stored on the stage queues: the streams' last sequence numbers, which a send
   * dropped by the queue's dedup window does not take (so one attempt queued twice counts once).
   */
  async storedTaskMessages(): Promise<number> {
    const nc = await connect({
      servers: natsServers(this.natsUrl),
      user: this.natsAdmin.user,
      pass: this.natsAdmin.password,
    });
    try {
      const jsm = await jetstreamManager(nc);
      let n = 0;
      for (const q of STAGE_KINDS)
        n += await jsm.streams.info(streamOf(q)).then(
          (i) => i.state.last_seq,
          () => 0,
        );
      return n;
    } finally {
      await nc.close();
    }
  }

  /** Coordinator i's Prometheus text (/metrics; the farm runs without tokens). */
  async coordinatorMetrics(i: number): Promise<string> {
    const c = this.coordinators[i];
    if (c === undefined) throw new Error(`coordinator ${i} is not running`);
    return (await fetch(`http://${this.coordinatorHost(i)}:${c.httpPort}/metrics`)).text();
  }

  /** The last output lines of coordinator i (for a failed run's notes). */
  coordinatorTail(i = 0): string {
    return this.coordinators[i]?.tail ?? "";
  }

  /** The NATS URL, or on a cluster farm every server's URL, comma-separated. */
  get natsUrl(): string {
    return this.natsCluster?.urls ?? `nats://${this.nats.host}:${this.nats.port}`;
  }

  /**
   * A JetStream stream's replicas (as configured) and leader server (its name, as the cluster
   * reports it): a stage queue's is `streamOf(queue)`, a KV bucket's `KV_<bucket>`.
   */
  async streamCluster(stream: string): Promise<{ replicas: number; leader: string | undefined }> {
    const nc = await connect({
      servers: natsServers(this.natsUrl),
      user: this.natsAdmin.user,
      pass: this.natsAdmin.password,
    });
    try {
      const info = await (await jetstreamManager(nc)).streams.info(stream);
      return { replicas: info.config.num_replicas, leader: info.cluster?.leader };
    } finally {
      await nc.close();
    }
  }

  /** A process's environment, with the NATS user it connects as (never in its arguments). */
  private env(user: string): NodeJS.ProcessEnv {
    const c = this.credentials(user);
    return {
      ...process.env,
      FRAMEFARM_S3_RETRY_MS: String(this.settings.s3RetryMs),
      FRAMEFARM_NATS_USER: c.user,
      FRAMEFARM_NATS_PASSWORD: c.password,
      ...(this.settings.natsCluster !== undefined
        ? { FRAMEFARM_NATS_REPLICAS: String(this.settings.natsCluster) }
        : {}),
    };
  }

  private connectionArgs(): string[] {
    return [
      "--nats",
      this.natsUrl,
      "--s3",
      `${this.s3.host}:${this.s3.port}`,
      "--bucket",
      BUCKET,
      "--bundle",
      this.settings.bundleDir ?? tinyBundleDir(),
    ];
  }

  async startCoordinator(i = 0): Promise<void> {
    const [command, ...prefix] = [...(this.settings.network?.prefix(i) ?? []), process.execPath];
    const child = spawn(
      command!,
      [
        ...prefix,
        cliPath(),
        "coordinator",
        ...this.connectionArgs(),
        "--host",
        this.coordinatorHost(i),
        "--port",
        String(this.grpcPorts[i]),
        "--http-port",
        "0",
        ...(this.settings.leaseTtlMs !== undefined ? ["--lease-ttl-ms", String(this.settings.leaseTtlMs)] : []),
        ...(this.settings.coordinatorArgs ?? []),
      ],
      { stdio: ["ignore", "pipe", "pipe"], env: this.env("coordinator") },
    );
    keepLog(child, `coordinator-${i}`);
    this.countTaskLines(child);
    this.countLeaseLines(child, i);
    // It prints its dashboard's address right after "gRPC listening on".
    const m = await waitForLine(child, /dashboard on http:\/\/\S+:(\d+)/, `coordinator ${i}`);
    // Keep reading its output (a full pipe would block it); its last lines are kept.
    const entry = { child, tail: "", httpPort: Number(m[1]) };
    const keep = (b: Buffer): void => {
      entry.tail = (entry.tail + b.toString()).slice(-4000);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    this.coordinators[i] = entry;
  }

  async killCoordinator(i = 0): Promise<void> {
    await killHard(this.coordinators[i]?.child);
    this.coordinators[i] = undefined;
  }

  /** SIGSTOP (true) or SIGCONT (false) coordinator i: a process stalled past its lease, then waking. */
  pauseCoordinator(i: number, paused: boolean): void {
    this.coordinators[i]?.child.kill(paused ? "SIGSTOP" : "SIGCONT");
  }

  /** The first coordinator process's pid (to sample its memory), or undefined while it is down. */
  get coordinatorPid(): number | undefined {
    return this.coordinators[0]?.child.pid;
  }

  /**
   * extra: more node flags (--ep, ...); env: more environment (a GPU index, say); readyTimeoutMs: how
   * long to wait for the node's "serving" line (default 30 s; a GPU node that loads a large bundle and
   * warms up takes minutes).
   */
  async startNode(
    id: string,
    stages: string,
    extra: { args?: string[]; env?: NodeJS.ProcessEnv; readyTimeoutMs?: number } = {},
  ): Promise<void> {
    const args = [
      cliPath(),
      "node",
      ...this.connectionArgs(),
      "--stages",
      stages,
      "--id",
      id,
      "--ack-wait-ms",
      String(this.settings.ackWaitMs),
      ...(this.settings.nodeArgs ?? []),
      ...(extra.args ?? []),
    ];
    const child = spawn(process.execPath, args, {
      stdio: ["ignore", "pipe", "pipe"],
      // As `framefarm cluster` and the node images start a node (gpu-node/malloc-env.ts).
      env: nodeProcessEnv({ ...this.env(nodeNatsUser(stages)), ...extra.env }),
    });
    keepLog(child, `node-${id}`);
    this.countTaskLines(child);
    await waitForLine(child, /serving/, `node ${id}`, extra.readyTimeoutMs).catch(async (err: unknown) => {
      await killHard(child);
      throw err;
    });
    // Keep reading its output so a chatty node never blocks on a full pipe; its last lines are kept.
    const entry = { child, stages, tail: "" };
    const keep = (b: Buffer): void => {
      entry.tail = (entry.tail + b.toString()).slice(-4000);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    this.nodes.set(id, entry);
    this.nodeCount++;
  }

  /** The running nodes: id, stage groups and process id (to sample their memory). */
  runningNodes(): { id: string; stages: string; pid: number | undefined }[] {
    return [...this.nodes].map(([id, n]) => ({ id, stages: n.stages, pid: n.child.pid }));
  }

  /**
   * Per coordinator index, how often its processes (a restart is the same index) said each of
   * LEASE_LINES, and the time the last one was logged (its "time", ms since the epoch).
   */
  private readonly leaseCounts = new Map<number, Map<LeaseLine, { n: number; at: number }>>();

  private countLeaseLines(child: ChildProcess, i: number): void {
    let partial = "";
    child.stderr?.on("data", (b: Buffer) => {
      const lines = (partial + b.toString()).split("\n");
      partial = lines.pop() ?? "";
      for (const line of lines) {
        const msg = LEASE_LINES.find((m) => line.includes(`"msg":"${m}"`));
        if (msg === undefined) continue;
        const at = Number(/"time":(\d+)/.exec(line)?.[1] ?? Date.now());
        const c = this.leaseCounts.get(i) ?? new Map<LeaseLine, { n: number; at: number }>();
        c.set(msg, { n: (c.get(msg)?.n ?? 0) + 1, at });
        this.leaseCounts.set(i, c);
      }
    });
  }

  /** How often coordinator i (all its processes so far) said `line` of its lease. */
  leaseLines(i: number, line: LeaseLine): number {
    return this.leaseCounts.get(i)?.get(line)?.n ?? 0;
  }

  /** When coordinator i last logged `line` (ms since the epoch), if ever. */
  leaseLineAt(i: number, line: LeaseLine): number | undefined {
    return this.leaseCounts.get(i)?.get(line)?.at;
  }

  /** Per task id, how often the logs of the farm's processes said each of TASK_LINES of it. */
  private readonly taskLines = new Map<string, Map<TaskLine, number>>();

  /** Follows a process's log lines (JSON, one a line, on stderr) for the task counts (taskLines). */
  private countTaskLines(child: ChildProcess): void {
    let partial = "";
    child.stderr?.on("data", (b: Buffer) => {
      const lines = (partial + b.toString()).split("\n");
      partial = lines.pop() ?? "";
      for (const line of lines) {
        const msg = TASK_LINES.find((m) => line.includes(`"msg":"${m}"`));
        if (msg === undefined) continue;
        let e: { taskId?: string };
        try {
          e = JSON.parse(line) as typeof e;
        } catch {
          continue;
        }
        if (e.taskId === undefined) continue;
        const c = this.taskLines.get(e.taskId) ?? new Map<TaskLine, number>();
        c.set(msg, (c.get(msg) ?? 0) + 1);
        this.taskLines.set(e.taskId, c);
      }
    });
  }

  /**
   * For each task of a job (its `<jobId>.` task ids), how often the coordinator's and nodes' logs
   * said each of TASK_LINES of it: what ran and what was queued again, whatever the queues counted.
   */
  taskLog(jobId: string): Map<string, Map<TaskLine, number>> {
    return new Map([...this.taskLines].filter(([t]) => t.startsWith(`${jobId}.`)));
  }

  /** The last output lines of a node (for a failed run's notes). */
  nodeTail(id: string): string {
    return this.nodes.get(id)?.tail ?? "";
  }

  /** The ids of the nodes started and not stopped (replaced nodes get new ids). */
  get nodeIds(): string[] {
    return [...this.nodes.keys()];
  }

  /** Nodes that exited without being stopped, with how and the last of their output. */
  exitedNodes(): { id: string; code: number | null; signal: NodeJS.Signals | null; tail: string }[] {
    return [...this.nodes]
      .filter(([, n]) => n.child.exitCode !== null || n.child.signalCode !== null)
      .map(([id, n]) => ({ id, code: n.child.exitCode, signal: n.child.signalCode, tail: n.tail }));
  }

  /** SIGTERM, as an orchestrator stops a node; resolves with how it exited and how long it took. */
  async stopNode(id: string): Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }> {
    const child = this.nodes.get(id)?.child;
    if (child === undefined) throw new Error(`no node ${id}`);
    const started = Date.now();
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
      child.exitCode !== null || child.signalCode !== null
        ? r({ code: child.exitCode, signal: child.signalCode })
        : child.once("exit", (code, signal) => r({ code, signal })),
    );
    child.kill("SIGTERM");
    const e = await exited;
    this.nodes.delete(id);
    return { ...e, ms: Date.now() - started };
  }

  async killNode(id: string): Promise<void> {
    await killHard(this.nodes.get(id)?.child);
    this.nodes.delete(id);
  }

  /** SIGKILLs every node serving these stages and starts one fresh node in their place. */
  async replaceNodes(stages: string): Promise<void> {
    for (const [id, n] of this.nodes) if (n.stages === stages) await this.killNode(id);
    await this.startNode(`${stages.replace(/\W/g, "-")}-${this.nodeCount}`, stages);
  }

  /** After a failed run: every server and process that should be up is up again. */
  async heal(nodes: Record<string, string>): Promise<void> {
    if (this.natsCluster !== undefined) {
      for (let i = 0; i < this.natsCluster.members.length; i++)
        if (!this.natsCluster.running(i)) await this.natsCluster.restart(i);
      await this.natsCluster.waitReady();
    } else if (this.nats.process.exitCode !== null || this.nats.process.signalCode !== null)
      this.nats = await this.startNats(this.nats.port);
    if (this.s3.process.exitCode !== null || this.s3.process.signalCode !== null) await this.startS3();
    for (let i = 0; i < this.grpcPorts.length; i++) {
      const c = this.coordinators[i];
      if (c === undefined || c.child.exitCode !== null || c.child.signalCode !== null) await this.startCoordinator(i);
    }
    for (const [id, n] of this.nodes)
      if (n.child.exitCode !== null || n.child.signalCode !== null) this.nodes.delete(id);
    const running = new Set([...this.nodes.values()].map((n) => n.stages));
    for (const stages of Object.values(nodes))
      if (!running.has(stages)) await this.startNode(`${stages.replace(/\W/g, "-")}-${this.nodeCount}`, stages);
  }

  /** SIGKILL nats-server and start it again on its port and store folder after pauseMs. */
  async restartNats(pauseMs: number): Promise<void> {
    const port = this.nats.port;
    this.nats.kill();
    await new Promise((r) => this.nats.process.once("exit", r));
    await new Promise((r) => setTimeout(r, pauseMs));
    this.nats = await this.startNats(port);
  }

  async stopS3(): Promise<void> {
    this.s3.kill();
    await new Promise((r) => this.s3.process.once("exit", r));
  }

  /**
   * Flips every bit of one byte of a stored object in the S3 server's files (its last byte: tensor
   * data in a tensor object), as a failing disk would; the server serves the bytes as they are.
   */
  async flipStoredByte(key: string): Promise<void> {
    const parts = key.split("/");
    const file = path.join(this.dir, "s3", BUCKET, ...parts.slice(0, -1), `${parts.at(-1)}._S3rver_object`);
    const f = await open(file, "r+");
    try {
      const { size } = await f.stat();
      const byte = Buffer.alloc(1);
      await f.read(byte, 0, 1, size - 1);
      byte[0] = byte[0]! ^ 0xff;
      await f.write(byte, 0, 1, size - 1);
    } finally {
      await f.close();
    }
  }

  /**
   * Removes a stored object from the S3 server's files (its data, metadata and checksum), as a lost
   * disk sector or an operator's stray `rm` would: the server answers NoSuchKey for it from then on.
   */
  async deleteStoredObject(key: string): Promise<void> {
    const parts = key.split("/");
    const base = path.join(this.dir, "s3", BUCKET, ...parts.slice(0, -1), parts.at(-1)!);
    await rm(`${base}._S3rver_object`);
    for (const extra of ["metadata.json", "object.md5"]) await rm(`${base}._S3rver_${extra}`, { force: true });
  }

  /** Fills the S3 server's disk (its tmpfs) to the last byte. */
  async fillS3Disk(): Promise<void> {
    const filler = await open(path.join(this.dir, "s3", "filler"), "w");
    const chunk = Buffer.alloc(1 << 20);
    try {
      for (;;) await filler.write(chunk);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOSPC") throw err;
    } finally {
      await filler.close();
    }
    // The last partial chunk may still fit: fill byte by byte blocks down to nothing.
    await appendFile(path.join(this.dir, "s3", "filler"), Buffer.alloc(4096)).catch(() => undefined);
  }

  /** False once the S3 server process has exited (s3rver, for one, dies when its disk fills). */
  s3Running(): boolean {
    return this.s3.process.exitCode === null && this.s3.process.signalCode === null;
  }

  async freeS3Disk(): Promise<void> {
    await rm(path.join(this.dir, "s3", "filler"), { force: true });
  }

  async startS3(): Promise<void> {
    this.s3 = await startS3Server(path.join(this.dir, "s3"), this.s3.port, this.serviceHost);
  }

  submit(req: SubmitJobRequest): Promise<Job> {
    return new Promise((resolve, reject) =>
      this.client.submitJob(req, (e: ServiceError | null, r) => (e ? reject(e) : resolve(r.job!))),
    );
  }

  cancel(id: string): Promise<Job> {
    return new Promise((resolve, reject) =>
      this.client.cancelJob({ id }, (e: ServiceError | null, r) => (e ? reject(e) : resolve(r.job!))),
    );
  }

  /**
   * GetJob, retried while the coordinator is away (a restart is part of the test); `via`: ask
   * coordinator i rather than the one useCoordinator chose.
   */
  async get(id: string, timeoutMs = 60_000, via = this.apiIndex): Promise<Job> {
    const end = Date.now() + timeoutMs;
    const client = this.clients[via]!;
    for (;;) {
      try {
        return await new Promise<Job>((resolve, reject) =>
          client.getJob({ id }, new Metadata(), { deadline: Date.now() + 2000 }, (e: ServiceError | null, r) =>
            e ? reject(e) : resolve(r.job!),
          ),
        );
      } catch (err) {
        if (Date.now() > end) throw err;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  async stop(): Promise<void> {
    for (const c of this.clients) c.close();
    await this.bus?.close().catch(() => undefined);
    await Promise.all([...this.nodes.keys()].map((id) => this.killNode(id)));
    for (let i = 0; i < this.grpcPorts.length; i++) await this.killCoordinator(i);
    await this.nats?.stop();
    await this.natsCluster?.stop();
    await this.s3?.stop();
    if (this.s3Mounted) await run("umount", [path.join(this.dir, "s3")]).catch(() => undefined);
  }
}
