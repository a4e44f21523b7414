/**
 * A coordinator's gRPC API on real servers for integration tests: nats-server (JetStream) and
 * s3rver as child processes, the dispatcher, the JobService with the tiny bundle's manifest, and
 * optionally node loops that run jobs. Callers pick auth, TLS and the presigned-URL lifetime.
 */
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import {
  LOOPBACK,
  S3_ACCESS_KEY,
  S3_SECRET_KEY,
  startNatsServer,
  startS3Server,
  type LocalServer,
} from "../../coordinator/cli/local-servers.js";
import { NatsBus } from "../../shared/bus/nats-bus.js";
import type { KeyValue } from "../../shared/bus/bus.js";
import { S3ObjectStore } from "../../shared/store/s3-store.js";
import { Dispatcher } from "../../coordinator/dispatch/dispatcher.js";
import { JobService, type JobServiceDeps } from "../../coordinator/api/job-service.js";
import { IDEMPOTENCY_BUCKET } from "../../coordinator/api/job-submission.js";
import { startApiServer, type ApiServer, type ApiServerOptions } from "../../coordinator/api/server.js";
import type { TokenAuth } from "../../coordinator/auth/tokens.js";
import { openBundle } from "../../gpu-node/runtime/bundle.js";
import { bundleDigest } from "../../gpu-node/runtime/bundle-digest.js";
import { openNodeModels, type NodeModels } from "../../gpu-node/main.js";
import { NodeLoop } from "../../gpu-node/worker/node-loop.js";
import { tinyBundleDir } from "./paths.js";
import { JOBS_BUCKET } from "../../shared/farm/protocol.js";
import type { WebhookPolicy } from "../../coordinator/webhooks/policy.js";
import { WebhookDeliverer, type DelivererOptions } from "../../coordinator/webhooks/deliverer.js";
import type { RetentionOptions } from "../../coordinator/dispatch/job-sweeper.js";

export interface TestFarm {
  address: string;
  api: ApiServer;
  bus: NatsBus;
  store: S3ObjectStore;
  s3: LocalServer;
  jobs: KeyValue;
  idempotency: KeyValue;
  /** nats://host:port of the farm's nats-server (to look at its streams as an operator would). */
  natsUrl: string;
  /**
   * Stops the coordinator's parts (API, dispatcher, webhook deliverer) and starts them again on the
   * same servers, as a restarted coordinator process; address changes (a new port). `whileDown` runs
   * in between.
   */
  restartCoordinator(whileDown?: () => Promise<void>): Promise<void>;
  /** Every job key, idempotency key and object, to prove a request left nothing behind. */
  snapshot(): Promise<{ jobs: string[]; idempotency: string[]; objects: string[] }>;
  stop(): Promise<void>;
}

export async function startTestFarm(
  options: {
    auth?: TokenAuth;
    tls?: ApiServerOptions["tls"];
    urlExpirySeconds?: number;
    nodes?: boolean;
    /** Tenant policy for the JobService (roles, priority cap, per-tenant limit). */
    tenancy?: Pick<
      JobServiceDeps,
      "operatorTenants" | "tenantMaxPriority" | "maxQueuedPerTenant" | "scrapeOnlyTenants"
    >;
    /** Webhooks: the policy submissions are checked against and the deliverer's options. */
    webhooks?: { policy: WebhookPolicy; delivery?: DelivererOptions };
    /** Job retention (the coordinator's --retain-jobs); jobs are kept for good without it. */
    retention?: RetentionOptions;
  } = {},
): Promise<TestFarm> {
  const tmp = await mkdtemp(path.join(os.tmpdir(), "framefarm-farm-"));
  const nats = await startNatsServer(path.join(tmp, "nats"));
  const s3 = await startS3Server(path.join(tmp, "s3"));
  const bus = await NatsBus.connect(`nats://${nats.host}:${nats.port}`, "test-farm");
  const store = await S3ObjectStore.open({
    endpoint: s3.host,
    port: s3.port,
    useSSL: false,
    accessKey: S3_ACCESS_KEY,
    secretKey: S3_SECRET_KEY,
    bucket: "framefarm",
  });
  const bundle = await openBundle(tinyBundleDir());
  let embedded: NodeModels | undefined;
  const nodes: NodeLoop[] = [];
  if (options.nodes === true) {
    embedded = await openNodeModels(tinyBundleDir(), "cpu");
    const ctx = { ...embedded, store };
    nodes.push(
      await NodeLoop.start(bus, ctx, {
        nodeId: "a",
        stages: ["encode_text", "encode_image", "vae_encode", "decode", "mux"],
      }),
    );
    nodes.push(await NodeLoop.start(bus, ctx, { nodeId: "b", stages: ["denoise"] }));
  }
  const digest = await bundleDigest(bundle);
  const startParts = async (): Promise<{
    api: ApiServer;
    dispatcher: Dispatcher;
    deliverer: WebhookDeliverer | undefined;
  }> => {
    let deliverer: WebhookDeliverer | undefined;
    const dispatcher = await Dispatcher.start(bus, store, {
      onRecord: (id) => deliverer?.notify(id),
      ...(options.retention !== undefined ? { retention: options.retention } : {}),
    });
    const hooks = options.webhooks;
    if (hooks !== undefined) deliverer = await WebhookDeliverer.start(bus, hooks.policy, hooks.delivery);
    const service = new JobService({
      bus,
      store,
      dispatcher,
      manifest: bundle.manifest,
      bundleName: "tiny",
      bundleDigest: digest,
      ...(options.auth !== undefined ? { auth: options.auth } : {}),
      ...(options.urlExpirySeconds !== undefined ? { urlExpirySeconds: options.urlExpirySeconds } : {}),
      ...(hooks !== undefined ? { webhooks: hooks.policy } : {}),
      ...(options.retention !== undefined ? { retainJobsMs: options.retention.retainMs } : {}),
      ...options.tenancy,
    });
    const api = await startApiServer(service, LOOPBACK, 0, options.tls !== undefined ? { tls: options.tls } : {});
    return { api, dispatcher, deliverer };
  };
  let parts = await startParts();
  const stopParts = async (): Promise<void> => {
    await parts.api.stop();
    await parts.dispatcher.stop();
    await parts.deliverer?.stop();
  };
  const jobs = await bus.kv(JOBS_BUCKET);
  const idempotency = await bus.kv(IDEMPOTENCY_BUCKET);
  const farm: TestFarm = {
    address: `${LOOPBACK}:${parts.api.port}`,
    api: parts.api,
    bus,
    store,
    s3,
    jobs,
    idempotency,
    snapshot: async () => ({
      jobs: (await jobs.keys()).sort(),
      idempotency: (await idempotency.keys()).sort(),
      objects: await store.list(""),
    }),
    natsUrl: `nats://${nats.host}:${nats.port}`,
    restartCoordinator: async (whileDown) => {
      await stopParts();
      await whileDown?.();
      parts = await startParts();
      farm.api = parts.api;
      farm.address = `${LOOPBACK}:${parts.api.port}`;
    },
    stop: async () => {
      await parts.api.stop();
      for (const n of nodes) await n.stop();
      await parts.dispatcher.stop();
      await parts.deliverer?.stop();
      await embedded?.close();
      await bus.close();
      await s3.stop();
      await nats.stop();
      await rm(tmp, { recursive: true, force: true });
    },
  };
  return farm;
}
