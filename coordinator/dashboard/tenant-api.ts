/**
 * The submit page's HTTP API, for any tenant's token (not operators' alone): the JobService that
 * serves gRPC, behind the same token check (JobService.tenantForAuthorization), so a submission
 * meets SubmitJob's checks and a tenant sees only its own jobs. Requests and replies are
 * jobs.proto's messages in their JSON form (proto-json.ts); an error carries its gRPC status name
 * and code (http-replies.ts).
 *
 *   GET  /api/tenant/session              {authorized, tenant}, or {authorized: false, error}
 *   GET  /api/tenant/options              what a submission may ask (submit-options.ts)
 *   GET  /api/tenant/bucket?resolution=R&width=W&height=H   the bucket an image of W x H gets
 *   POST /api/tenant/jobs                 SubmitJobRequest -> SubmitJobResponse
 *   GET  /api/tenant/jobs/ID              GetJobResponse
 *   POST /api/tenant/jobs/ID/cancel       CancelJobResponse
 *   POST /api/tenant/jobs/ID/resubmit     {seed?} -> SubmitJobResponse: same settings, new seed
 *   GET  /api/tenant/events               server-sent events: "jobs" (the newest, first), then
 *                                         "job" (a WatchJobResponse) for each change of any of them
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import {
  CancelJobResponse,
  GetJobResponse,
  Job,
  SubmitJobRequest,
  SubmitJobResponse,
  WatchJobResponse,
} from "../../proto/gen/framefarm/v1/jobs.js";
import type { Bus } from "../../shared/bus/bus.js";
import { FarmError } from "../../shared/errors.js";
import type { Logger } from "../../shared/log/logger.js";
import { findNearestBucket } from "../../shared/framepack/buckets.js";
import { parseSeed } from "../../shared/job/render-params.js";
import type { JobService } from "../api/job-service.js";
import { replyToJson, requestFromJson } from "../api/proto-json.js";
import { MAX_REQUEST_BYTES } from "../api/server.js";
import { TenantJobFeed, type FeedEvent } from "../api/tenant-job-feed.js";
import { fail, readJsonBody, requireJson, sendJson } from "./http-replies.js";

export interface TenantApi {
  /** Answers a request under /api/tenant/. */
  handle(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void>;
  /** Ends the open event streams. */
  stop(): void;
}

export interface TenantApiOptions {
  jobs: Pick<
    JobService,
    | "submit"
    | "get"
    | "cancel"
    | "resubmit"
    | "toJob"
    | "newest"
    | "options"
    | "tenantForAuthorization"
    | "onAuthChange"
  >;
  bus: Bus;
  log: Logger;
}

/** A submission's JSON: gRPC's message limit with its images in base64 (4/3), and room for the settings. */
const MAX_SUBMIT_JSON_BYTES = Math.ceil((MAX_REQUEST_BYTES * 4) / 3) + 1024 * 1024;
const GET_PATHS = new Set(["/api/tenant/options", "/api/tenant/bucket", "/api/tenant/events", "/api/tenant/session"]);
const JOB = /^\/api\/tenant\/jobs\/([A-Za-z0-9_-]{1,64})(?:\/(cancel|resubmit))?$/;

/** A query parameter as a whole number (the bucket's own checks give the ranges). */
function intParam(url: URL, name: string): number {
  const v = url.searchParams.get(name) ?? "";
  if (!/^\d{1,6}$/.test(v))
    throw new FarmError("INVALID_ARGUMENT", `${name} must be a whole number, got ${JSON.stringify(v)}`);
  return Number(v);
}

export function tenantApi(o: TenantApiOptions): TenantApi {
  const { jobs } = o;
  /** Open event streams: the request (its token is checked again when tokens change), its tenant and feed. */
  const streams = new Map<ServerResponse, { req: IncomingMessage; tenant: string; feed: TenantJobFeed }>();
  const close = (res: ServerResponse): void => {
    streams.get(res)?.feed.stop();
    streams.delete(res);
    res.end();
  };
  // A revoked token's stream ends at once (the page then asks for a token again).
  const offAuth = jobs.onAuthChange(() => {
    for (const [res, s] of streams) {
      let tenant: string | undefined;
      try {
        tenant = jobs.tenantForAuthorization(s.req.headers.authorization);
      } catch {
        // no longer valid
      }
      if (tenant !== s.tenant) close(res);
    }
  });
  const keepAlive = setInterval(() => {
    for (const res of streams.keys()) res.write(": keep-alive\n\n");
  }, 15_000);

  const frame = (e: FeedEvent): string =>
    e.type === "jobs"
      ? `event: jobs\ndata: ${JSON.stringify({ jobs: e.jobs.map((j) => replyToJson(Job, "framefarm.v1.Job", j)) })}\n\n`
      : `event: job\ndata: ${JSON.stringify(replyToJson(WatchJobResponse, "framefarm.v1.WatchJobResponse", e.response))}\n\n`;

  const events = (req: IncomingMessage, res: ServerResponse, tenant: string): void => {
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-store", connection: "keep-alive" });
    res.write("retry: 2000\n\n");
    const feed = new TenantJobFeed(o.bus, jobs, tenant, (e) => res.write(frame(e)), { log: o.log });
    streams.set(res, { req, tenant, feed });
    req.on("close", () => {
      feed.stop();
      streams.delete(res);
    });
  };

  /** Submits with the caller's deadline: a page that goes away stops a submission not yet stored. */
  const submit = async (req: IncomingMessage, res: ServerResponse, tenant: string): Promise<void> => {
    const body = await readJsonBody(req, MAX_SUBMIT_JSON_BYTES);
    const request = requestFromJson(SubmitJobRequest, "framefarm.v1.SubmitJobRequest", body);
    const abort = new AbortController();
    const gone = (): void => {
      if (!res.writableFinished)
        abort.abort(new FarmError("CANCELLED", "the page went away before the job was submitted"));
    };
    res.once("close", gone);
    try {
      const reply = await jobs.submit(request, tenant, abort.signal);
      sendJson(res, 200, replyToJson(SubmitJobResponse, "framefarm.v1.SubmitJobResponse", reply));
    } finally {
      res.off("close", gone);
    }
  };

  const handle = async (req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> => {
    const path = url.pathname;
    if (path === "/api/tenant/session" && req.method === "GET") {
      // Answered 200 either way, so the page can ask without a failed request in the browser's log.
      try {
        return sendJson(res, 200, { authorized: true, tenant: jobs.tenantForAuthorization(req.headers.authorization) });
      } catch (err) {
        if (!(err instanceof FarmError)) throw err;
        return sendJson(res, 200, {
          authorized: false,
          error: { code: err.status, grpcCode: err.code, message: err.message },
        });
      }
    }
    const tenant = jobs.tenantForAuthorization(req.headers.authorization);
    const job = JOB.exec(path);
    if (req.method === "POST") {
      if (path !== "/api/tenant/jobs" && (job === null || job[2] === undefined))
        return job !== null || GET_PATHS.has(path)
          ? fail(res, 405, "METHOD_NOT_ALLOWED", "use GET")
          : fail(res, 404, "NOT_FOUND", `no such page ${path}`);
      if (!requireJson(req, res)) return;
      if (path === "/api/tenant/jobs") return submit(req, res, tenant);
      const [, id, verb] = job!;
      if (verb === "cancel")
        return sendJson(
          res,
          200,
          replyToJson(CancelJobResponse, "framefarm.v1.CancelJobResponse", {
            job: await jobs.toJob(await jobs.cancel(id!, tenant)),
          }),
        );
      const body = await readJsonBody(req, 64 * 1024);
      // Read as strictly as a message: a key meant for something else is refused, not ignored.
      const unknown = Object.keys(body).filter((k) => k !== "seed");
      if (unknown.length > 0)
        throw new FarmError("INVALID_ARGUMENT", `a re-submission takes only "seed", got ${JSON.stringify(unknown)}`);
      const reply = await jobs.resubmit(id!, tenant, body["seed"] === undefined ? undefined : parseSeed(body["seed"]));
      return sendJson(res, 200, replyToJson(SubmitJobResponse, "framefarm.v1.SubmitJobResponse", reply));
    }
    if (req.method !== "GET" && req.method !== "HEAD") return fail(res, 405, "METHOD_NOT_ALLOWED", "use GET or POST");
    if (job !== null && job[2] === undefined)
      return sendJson(
        res,
        200,
        replyToJson(GetJobResponse, "framefarm.v1.GetJobResponse", {
          job: await jobs.toJob(await jobs.get(job[1]!, tenant)),
        }),
      );
    if (path === "/api/tenant/options") return sendJson(res, 200, jobs.options());
    if (path === "/api/tenant/bucket")
      return sendJson(
        res,
        200,
        findNearestBucket(intParam(url, "height"), intParam(url, "width"), intParam(url, "resolution")),
      );
    if (path === "/api/tenant/events") return events(req, res, tenant);
    fail(res, 404, "NOT_FOUND", `no such page ${path}`);
  };

  return {
    handle,
    stop: () => {
      offAuth();
      clearInterval(keepAlive);
      for (const res of [...streams.keys()]) close(res);
    },
  };
}
