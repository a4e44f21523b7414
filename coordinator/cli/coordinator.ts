/**
 * `framefarm coordinator`: the dispatcher and the public gRPC API, against NATS and S3.
 */
import { parseArgs } from "node:util";
import { Dispatcher } from "../dispatch/dispatcher.js";
import { JobService } from "../api/job-service.js";
import { startApiServer } from "../api/server.js";
import { openBundle } from "../../gpu-node/runtime/bundle.js";
import { FARM_OPTIONS, connectFarm, farmConnection, untilSignal, type FarmConnection } from "./farm-options.js";
import { defaultBundleDir } from "./defaults.js";
import path from "node:path";

/** The gRPC API's port when neither --port nor FRAMEFARM_PORT says otherwise. */
export const DEFAULT_API_PORT = 50051;

export interface RunningCoordinator {
  port: number;
  stop(): Promise<void>;
}

export async function startCoordinator(conn: FarmConnection, bundleDir: string, host: string, port: number): Promise<RunningCoordinator> {
  const bundle = await openBundle(bundleDir);
  const { bus, store } = await connectFarm(conn, "coordinator");
  const dispatcher = await Dispatcher.start(bus, store);
  const service = new JobService({ bus, store, dispatcher, manifest: bundle.manifest, bundleName: path.basename(bundle.dir) });
  const api = await startApiServer(service, host, port);
  return {
    port: api.port,
    stop: async () => {
      await api.stop();
      await dispatcher.stop();
      await bus.close();
    },
  };
}

export async function coordinatorCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, strict: true, options: { ...FARM_OPTIONS, bundle: { type: "string" }, host: { type: "string" }, port: { type: "string" } } });
  // Flags win over FRAMEFARM_HOST / FRAMEFARM_PORT (containers set those: deploy/k8s).
  const host = values.host ?? process.env["FRAMEFARM_HOST"] ?? "127.0.0.1";
  const c = await startCoordinator(farmConnection(values), values.bundle ?? defaultBundleDir(), host, Number(values.port ?? process.env["FRAMEFARM_PORT"] ?? DEFAULT_API_PORT));
  process.stdout.write(`gRPC listening on ${host}:${c.port}\n`);
  await untilSignal();
  await c.stop();
  return 0;
}
