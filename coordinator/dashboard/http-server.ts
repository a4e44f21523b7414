/**
 * The coordinator's HTTP server: the admin dashboard (a static page in ./static, beside this
 * file's source), its JSON API and live snapshots over server-sent events, and Prometheus
 * metrics. Every request for farm data or actions passes one authorize() check first (token auth
 * plugs in there); the page's own files hold no data and load without it, so a browser can show
 * a token prompt, and /api/session tells the page whether its token passes.
 */
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import { readFile, readdir } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { AddressInfo } from "node:net";
import { FarmError, type StatusName } from "../../shared/errors.js";
import type { Logger } from "../../shared/log/logger.js";
import type { JobRecord } from "../dispatch/job-record.js";
import type { FarmView } from "./farm-view.js";
import type { FarmMetrics } from "./metrics.js";

/** coordinator/dashboard/static at the package root (this file is dist/coordinator/dashboard/http-server.js). */
const STATIC_DIR = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  "..",
  "..",
  "..",
  "coordinator",
  "dashboard",
  "static",
);
const CONTENT_TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
};

/** What the dashboard's buttons do. A null job means the action does not apply in its state. */
export interface DashboardActions {
  cancel(jobId: string): Promise<JobRecord | null>;
  retry(jobId: string): Promise<JobRecord | null>;
  setPriority(jobId: string, priority: number): Promise<JobRecord | null>;
  drain(nodeId: string): Promise<void>;
}

/** The single gate of every request (issue 5 puts token auth here). */
export type Authorize = (req: IncomingMessage) => boolean | Promise<boolean>;

export interface DashboardServerOptions {
  view: FarmView;
  metrics: FarmMetrics;
  actions: DashboardActions;
  host: string;
  port: number;
  log: Logger;
  authorize?: Authorize;
}

export interface DashboardServer {
  readonly port: number;
  stop(): Promise<void>;
}

const HTTP_STATUS: Partial<Record<StatusName, number>> = {
  INVALID_ARGUMENT: 400,
  OUT_OF_RANGE: 400,
  UNAUTHENTICATED: 401,
  PERMISSION_DENIED: 403,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  ABORTED: 409,
  FAILED_PRECONDITION: 409,
  UNAVAILABLE: 503,
};

function send(res: ServerResponse, status: number, body: string | Uint8Array, contentType = "application/json"): void {
  res.writeHead(status, {
    "content-type": contentType,
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
  });
  res.end(body);
}
const sendJson = (res: ServerResponse, status: number, value: unknown): void =>
  send(res, status, JSON.stringify(value));
const fail = (res: ServerResponse, status: number, code: string, message: string): void =>
  sendJson(res, status, { error: { code, message } });

async function readJsonBody(req: IncomingMessage): Promise<Record<string, unknown>> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > 64 * 1024) throw new FarmError("INVALID_ARGUMENT", "request body over 64 KiB");
    chunks.push(c as Buffer);
  }
  if (size === 0) return {};
  try {
    const v: unknown = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    if (typeof v === "object" && v !== null && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // reported below
  }
  throw new FarmError("INVALID_ARGUMENT", "request body must be a JSON object");
}

const ID = "([A-Za-z0-9_-]{1,64})";
const JOB_ACTION = new RegExp(`^/api/jobs/${ID}/(cancel|retry|priority)$`);
const NODE_DRAIN = new RegExp(`^/api/nodes/${ID}/drain$`);

export async function startDashboardServer(o: DashboardServerOptions): Promise<DashboardServer> {
  // The page's files are read once: only these names are ever served (no paths from requests).
  const files = new Map<string, { body: Buffer; type: string }>();
  for (const name of await readdir(STATIC_DIR)) {
    const type = CONTENT_TYPES[path.extname(name)];
    if (type !== undefined) files.set(name, { body: await readFile(path.join(STATIC_DIR, name)), type });
  }
  const authorize: Authorize = o.authorize ?? (() => true);
  const streams = new Set<ServerResponse>();
  const offSnapshot = o.view.onSnapshot((s) => {
    if (streams.size === 0) return;
    const frame = `event: snapshot\ndata: ${JSON.stringify(s)}\n\n`;
    for (const res of streams) res.write(frame);
  });
  const keepAlive = setInterval(() => {
    for (const res of streams) res.write(": keep-alive\n\n");
  }, 15_000);

  const action = async (req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean> => {
    const job = JOB_ACTION.exec(url.pathname);
    const node = NODE_DRAIN.exec(url.pathname);
    if (job === null && node === null) return false;
    if (req.method !== "POST") return (fail(res, 405, "METHOD_NOT_ALLOWED", "use POST"), true);
    // A JSON content type cannot be sent by a plain cross-site form: no CSRF through this door.
    if (!(req.headers["content-type"] ?? "").startsWith("application/json"))
      return (fail(res, 415, "UNSUPPORTED_MEDIA_TYPE", "send Content-Type: application/json"), true);
    const body = await readJsonBody(req);
    if (node !== null) {
      await o.actions.drain(node[1]!);
      o.log.info({ nodeId: node[1] }, "drain requested");
    } else {
      const [, id, verb] = job!;
      let r: JobRecord | null;
      if (verb === "priority") {
        const p = body["priority"];
        // The dispatcher checks the range.
        if (typeof p !== "number" || !Number.isInteger(p))
          throw new FarmError("INVALID_ARGUMENT", "priority must be an integer");
        r = await o.actions.setPriority(id!, p);
      } else r = verb === "cancel" ? await o.actions.cancel(id!) : await o.actions.retry(id!);
      if (r === null)
        throw new FarmError(
          "FAILED_PRECONDITION",
          `job ${id} cannot be ${verb === "priority" ? "re-prioritised" : verb === "cancel" ? "cancelled" : "retried"} in its current state`,
        );
      o.log.info(
        { jobId: id, action: verb, ...(verb === "priority" ? { priority: body["priority"] } : {}) },
        "job action",
      );
    }
    await o.view.refresh();
    sendJson(res, 200, { ok: true });
    return true;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? "/", "http://dashboard");
    const file = files.get(url.pathname === "/" ? "index.html" : url.pathname.replace(/^\/static\//, ""));
    if (req.method === "GET" && file !== undefined && (url.pathname === "/" || url.pathname.startsWith("/static/")))
      return send(res, 200, file.body, file.type);
    // Answered 200 either way, so the page can ask without a failed request in the browser's log.
    if (url.pathname === "/api/session" && req.method === "GET")
      return sendJson(res, 200, { authorized: await authorize(req) });
    if (!(await authorize(req)))
      return fail(res, 401, "UNAUTHENTICATED", "a valid operator token is needed: Authorization: Bearer <token>");
    if (await action(req, res, url)) return;
    if (req.method !== "GET" && req.method !== "HEAD") return fail(res, 405, "METHOD_NOT_ALLOWED", "use GET");
    if (url.pathname === "/metrics")
      return send(res, 200, await o.metrics.registry.metrics(), o.metrics.registry.contentType);
    if (url.pathname === "/api/state") return sendJson(res, 200, o.view.snapshot());
    if (url.pathname === "/api/events") {
      res.writeHead(200, {
        "content-type": "text/event-stream",
        "cache-control": "no-store",
        connection: "keep-alive",
      });
      res.write(`retry: 2000\nevent: snapshot\ndata: ${JSON.stringify(o.view.snapshot())}\n\n`);
      streams.add(res);
      req.on("close", () => streams.delete(res));
      return;
    }
    fail(res, 404, "NOT_FOUND", `no such page ${url.pathname}`);
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      const status = err instanceof FarmError ? err.status : "INTERNAL";
      if (status === "INTERNAL") o.log.error({ err, path: req.url }, "dashboard request failed");
      if (!res.headersSent) fail(res, HTTP_STATUS[status] ?? 500, status, (err as Error).message);
      else res.end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port, o.host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    stop: async () => {
      offSnapshot();
      clearInterval(keepAlive);
      for (const res of streams) res.end();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
