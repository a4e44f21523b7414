/**
 * NodeModels mode as a farm in one process: the in-process bus, a local-directory object store, the
 * dispatcher, one node serving every stage, and the JobService that validates submissions. The
 * same planner, scheduler, workers and validation as a cluster, so embedded renders and farm
 * renders are the same code and the same frames.
 */
import path from "node:path";
import { MemoryBus } from "../../../shared/bus/memory-bus.js";
import { LocalObjectStore } from "../../../shared/store/local-store.js";
import { Dispatcher } from "../../dispatch/dispatcher.js";
import type { JobRecord } from "../../dispatch/job-record.js";
import { JobService } from "../../api/job-service.js";
import { NodeLoop } from "../../../gpu-node/worker/node-loop.js";
import { TensorCache } from "../../../gpu-node/worker/tensor-cache.js";
import type { NodeModels } from "../../../gpu-node/main.js";
import { bundleDigest } from "../../../gpu-node/runtime/bundle-digest.js";
import { admitJob } from "../../../gpu-node/runtime/memory-admission.js";
import type { JobSpec } from "../../../shared/job/job-spec.js";
import { STAGE_KINDS, decodeJobEvent, isStepEvent, jobEventSubject } from "../../../shared/farm/protocol.js";

export interface EmbeddedFarm {
  bus: MemoryBus;
  store: LocalObjectStore;
  dispatcher: Dispatcher;
  service: JobService;
  /** Resolves with the job's record once it has ended, reporting sections and steps on the way. */
  waitFor(jobId: string, progress?: SectionProgress): Promise<JobRecord>;
  stop(): Promise<void>;
}

export interface SectionProgress {
  start(sections: number, stepsPerSection: number): void;
  step(section: number, step: number): void;
}

const ENDED = new Set<JobRecord["state"]>(["SUCCEEDED", "FAILED", "CANCELLED"]);

function waitFor(
  bus: MemoryBus,
  dispatcher: Dispatcher,
  jobId: string,
  progress?: SectionProgress,
): Promise<JobRecord> {
  return new Promise<JobRecord>((resolve, reject) => {
    let started = false;
    let settled = false;
    const check = (): void => {
      void dispatcher.job(jobId).then((r) => {
        if (settled || r === null || !ENDED.has(r.state)) return;
        settled = true;
        off();
        resolve(r);
      }, reject);
    };
    const off = bus.events.subscribe(jobEventSubject(jobId), (subject, data) => {
      const e = decodeJobEvent(subject, data);
      if (e === null) return;
      if (!isStepEvent(e)) return check();
      if (!started && progress !== undefined) {
        const steps = e.steps;
        void dispatcher
          .job(jobId)
          .then((r) => r !== null && progress.start(r.tasks.filter((t) => t.kind === "denoise").length, steps));
      }
      started = true;
      progress?.step(e.section, e.step);
    });
    check(); // it may have ended before the subscription
  });
}

/** Starts a farm whose objects live under dataDir; the caller owns (and removes) that folder. */
export async function startEmbeddedFarm(
  embedded: NodeModels,
  dataDir: string,
  options: {
    cacheBytes?: number;
    beforeDispatch?: (spec: JobSpec) => Promise<void>;
    /** Decode tasks run at once (NodeOptions.decodeConcurrency). */
    decodeConcurrency?: number;
  } = {},
): Promise<EmbeddedFarm> {
  const bus = new MemoryBus();
  const store = new LocalObjectStore(dataDir);
  const dispatcher = await Dispatcher.start(bus, store);
  const cache = new TensorCache(options.cacheBytes ?? 512 * 2 ** 20);
  const node = await NodeLoop.start(
    bus,
    { ...embedded, store, cache },
    {
      nodeId: "embedded",
      stages: STAGE_KINDS,
      ...(options.decodeConcurrency !== undefined ? { decodeConcurrency: options.decodeConcurrency } : {}),
    },
  );
  const bundle = embedded.runtime.bundle;
  const service = new JobService({
    bus,
    store,
    dispatcher,
    manifest: bundle.manifest,
    bundleName: path.basename(bundle.dir),
    bundleDigest: await bundleDigest(bundle),
    // A job that cannot fit in this process's memory is refused before it starts, not killed by the kernel.
    admitMemory: (spec) => admitJob(embedded.runtime, spec),
    ...(options.beforeDispatch !== undefined ? { beforeDispatch: options.beforeDispatch } : {}),
  });
  return {
    bus,
    store,
    dispatcher,
    service,
    waitFor: (jobId, progress) => waitFor(bus, dispatcher, jobId, progress),
    stop: async () => {
      await node.stop();
      await dispatcher.stop();
      await bus.close();
    },
  };
}
