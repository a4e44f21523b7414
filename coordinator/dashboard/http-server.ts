/**
 * The coordinator's HTTP server: the admin dashboard (a static page in ./static, beside this
 * file's source, and Chart.js from its npm package under /static/vendor/), its JSON API (the farm's
 * last hour and each job's timeline for its charts too) and live snapshots over server-sent events,
 * and Prometheus metrics; and the tenants' submit page (/submit) with its API (/api/tenant/...,
 * tenant-api.ts).
 * Every request for farm data or actions passes one authorize() check first (token auth plugs in
 * there; the tenant API checks any tenant's token instead); the pages' own files hold no data and
 * load without it, so a browser can show a token prompt, and /api/session tells the page whether
 * its token passes.
 */
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import { readFile, readdir } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { AddressInfo } from "node:net";
import { FarmError } from "../../shared/errors.js";
import type { Logger } from "../../shared/log/logger.js";
import type { JobRecord } from "../dispatch/job-record.js";
import type { FarmView } from "./farm-view.js";
import type { FarmMetrics } from "./metrics.js";
import { fail, httpStatusOf, readJsonBody, requireJson, send, sendJson } from "./http-replies.js";
import type { TenantApi } from "./tenant-api.js";
import type { FarmHistoryView } from "./farm-history.js";
import type { JobTimeline } from "./job-timeline.js";
import { readVendorFiles } from "./vendor-assets.js";

/** coordinator/dashboard/static at the package root (this file is dist/coordinator/dashboard/http-server.js). */
export const STATIC_DIR = path.resolve(
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
  /**
   * The gate of /metrics alone, when it admits more than authorize does (a scraper's token that
   * opens nothing else); authorize when absent.
   */
  authorizeMetrics?: Authorize;
  /**
   * Subscribes to changes of what authorize admits (tokens reloaded): open event streams are then
   * checked again and those no longer admitted are closed. Returns the unsubscribe.
   */
  authChanges?: (fn: () => void) => () => void;
  /** The submit page's API (/api/tenant/...), for tenants' tokens; absent: not served. */
  tenantApi?: TenantApi;
  /** The farm's last hour (/api/history); absent: not served. */
  history?: () => FarmHistoryView;
  /** A job's task timeline (/api/jobs/ID/timeline), NOT_FOUND for no such job; absent: not served. */
  timeline?: (jobId: string) => Promise<JobTimeline>;
}

export interface DashboardServer {
  readonly port: number;
  stop(): Promise<void>;
}

/** Pages by path; every other file is served under /static/ by its name. */
const PAGES = new Map([
  ["/", "index.html"],
  ["/submit", "submit.html"],
]);

const ID = "([A-Za-z0-9_-]{1,64})";
const JOB_ACTION = new RegExp(`^/api/jobs/${ID}/(cancel|retry|priority)$`);
const NODE_DRAIN = new RegExp(`^/api/nodes/${ID}/drain$`);
const JOB_TIMELINE = new RegExp(`^/api/jobs/${ID}/timeline$`);

export async function startDashboardServer(o: DashboardServerOptions): Promise<DashboardServer> {
  // The page's files are read once: only these names are ever served (no paths from requests).
  const files = new Map<string, { body: Buffer; type: string }>();
  for (const name of await readdir(STATIC_DIR)) {
    const type = CONTENT_TYPES[path.extname(name)];
    if (type !== undefined) files.set(name, { body: await readFile(path.join(STATIC_DIR, name)), type });
  }
  for (const [name, body] of await readVendorFiles())
    files.set(`vendor/${name}`, { body, type: CONTENT_TYPES[".js"]! });
  const authorize: Authorize = o.authorize ?? (() => true);
  const authorizeMetrics: Authorize = o.authorizeMetrics ?? authorize;
  /** Open event streams, with the request each answers (its token is checked again on changes). */
  const streams = new Map<ServerResponse, IncomingMessage>();
  const offSnapshot = o.view.onSnapshot((s) => {
    if (streams.size === 0) return;
    const frame = `event: snapshot\ndata: ${JSON.stringify(s)}\n\n`;
    for (const res of streams.keys()) res.write(frame);
  });
  // A revoked token's stream ends at once (the page then asks for a token again).
  const offAuth = o.authChanges?.(() => {
    for (const [res, req] of streams)
      void Promise.resolve(authorize(req)).then((ok) => {
        if (ok) return;
        streams.delete(res);
        res.end();
      });
  });
  const keepAlive = setInterval(() => {
    for (const res of streams.keys()) res.write(": keep-alive\n\n");
  }, 15_000);

  const action = async (req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean> => {
    const job = JOB_ACTION.exec(url.pathname);
    const node = NODE_DRAIN.exec(url.pathname);
    if (job === null && node === null) return false;
    if (req.method !== "POST") return (fail(res, 405, "METHOD_NOT_ALLOWED", "use POST"), true);
    if (!requireJson(req, res)) return true;
    const body = await readJsonBody(req, 64 * 1024);
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
    const page = PAGES.get(url.pathname);
    const file = files.get(page ?? url.pathname.replace(/^\/static\//, ""));
    if (req.method === "GET" && file !== undefined && (page !== undefined || url.pathname.startsWith("/static/")))
      return send(res, 200, file.body, file.type);
    // The submit page's API has its own gate: any tenant's token, each seeing its own jobs.
    if (url.pathname.startsWith("/api/tenant/") && o.tenantApi !== undefined) return o.tenantApi.handle(req, res, url);
    // Answered 200 either way, so the page can ask without a failed request in the browser's log.
    if (url.pathname === "/api/session" && req.method === "GET")
      return sendJson(res, 200, { authorized: await authorize(req) });
    // /metrics has its own gate: a scraper's token opens it and nothing else.
    if (url.pathname === "/metrics") {
      if (!(await authorizeMetrics(req)))
        return fail(
          res,
          401,
          "UNAUTHENTICATED",
          "a valid metrics or operator token is needed: Authorization: Bearer <token>",
        );
      if (req.method !== "GET" && req.method !== "HEAD") return fail(res, 405, "METHOD_NOT_ALLOWED", "use GET");
      return send(res, 200, await o.metrics.registry.metrics(), o.metrics.registry.contentType);
    }
    if (!(await authorize(req)))
      return fail(res, 401, "UNAUTHENTICATED", "a valid operator token is needed: Authorization: Bearer <token>");
    if (await action(req, res, url)) return;
    if (req.method !== "GET" && req.method !== "HEAD") return fail(res, 405, "METHOD_NOT_ALLOWED", "use GET");
    if (url.pathname === "/api/state") return sendJson(res, 200, o.view.snapshot());
    if (url.pathname === "/api/history" && o.history !== undefined) return sendJson(res, 200, o.history());
    const timeline = JOB_TIMELINE.exec(url.pathname);
    if (timeline !== null && o.timeline !== undefined) return sendJson(res, 200, await o.timeline(timeline[1]!));
    if (url.pathname === "/api/events") {
      res.writeHead(200, {
        "content-type": "text/event-stream",
        "cache-control": "no-store",
        connection: "keep-alive",
      });
      res.write(`retry: 2000\nevent: snapshot\ndata: ${JSON.stringify(o.view.snapshot())}\n\n`);
      streams.set(res, req);
      req.on("close", () => streams.delete(res));
      return;
    }
    fail(res, 404, "NOT_FOUND", `no such page ${url.pathname}`);
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      const status = err instanceof FarmError ? err.status : "INTERNAL";
      if (status === "INTERNAL") o.log.error({ err, path: req.url }, "dashboard request failed");
      if (!res.headersSent) fail(res, httpStatusOf(status), status, (err as Error).message);
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
      offAuth?.();
      o.tenantApi?.stop();
      clearInterval(keepAlive);
      for (const res of streams.keys()) res.end();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
