/**
 * The manifests and the image recipe agree with what the code reads: subcommands, FRAMEFARM_*
 * variables and their values, the gRPC port and its health probes, the dashboard's HTTP port and
 * Prometheus scrape annotations, the token file and operators, server addresses, stage groups,
 * execution providers, JetStream stream/consumer names (for KEDA), bundle location, tracing, the
 * NATS users and their permissions.
 * Names come from the sources (support/code-facts.ts) or from the modules themselves.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { TARGETS, render, type K8sObject, type Target } from "./support/render.js";
import { byKind, byName, containerEnv, generated, podSpecs, type Container } from "./support/query.js";
import {
  cliCommands,
  compiledSourceDirs,
  dockerStages,
  effective,
  envVarsReadByCode,
  envVarsUsedByScript,
  packageJson,
} from "./support/code-facts.js";
import pino from "pino";
import { DEFAULT_API_PORT, DEFAULT_HTTP_PORT, parsePort, securityOptions } from "../../coordinator/cli/coordinator.js";
import { TENANT_PATTERN } from "../../coordinator/auth/tokens.js";
import { JOB_SERVICE_NAME } from "../../coordinator/api/server.js";
import { STATIC_DIR } from "../../coordinator/dashboard/http-server.js";
import { STAGE_GROUPS, parseStages } from "../../gpu-node/main.js";
import { farmConnection } from "../../coordinator/cli/farm-options.js";
import { tracingSettings } from "../../shared/telemetry/tracing.js";
import { defaultBundleDir, packageRoot } from "../../coordinator/cli/defaults.js";
import { EXECUTION_PROVIDERS } from "../../gpu-node/runtime/execution-provider.js";
import { CUDA_PROVIDER_LIBRARY, CUDA_PROVIDER_PACKAGE } from "../../gpu-node/runtime/cuda-provider.js";
import { natsServers, streamOf } from "../../shared/bus/nats-bus.js";
import { MANIFEST_FILE } from "../../shared/bundle/manifest.js";
import { stageConsumerName } from "../../shared/farm/protocol.js";
import { natsAuthorizationConfig, natsPasswordEnv } from "../../shared/farm/nats-permissions.js";
import { natsUsersFromArgs } from "../../coordinator/cli/nats-auth.js";
import { NODE_MALLOC_ENV, nodeProcessEnv } from "../../gpu-node/malloc-env.js";

const NAMESPACE = "framefarm";
const stages = dockerStages();
const FRAMEFARM_IMAGE = /^framefarm\/([a-z0-9-]+)(?::[\w.-]+)?$/;

interface Role {
  workload: K8sObject;
  container: Container;
  env: Map<string, string>;
}

/** Every container that runs a framefarm image, with the environment it starts with. */
function framefarmContainers(objects: K8sObject[]): Role[] {
  return byKind(objects, "Deployment").flatMap((w) =>
    podSpecs(w).flatMap((p) =>
      p.containers
        .filter((c) => FRAMEFARM_IMAGE.test(c.image))
        .map((container) => ({ workload: w, container, env: containerEnv(objects, container) })),
    ),
  );
}

const roleOf = (r: Role): string => r.container.args?.[0] ?? "";

/** The environment with the process's own, for calling the code's own parsers with it. */
function withEnv<T>(env: Map<string, string>, fn: () => T): T {
  const saved = { ...process.env };
  try {
    for (const k of Object.keys(process.env)) if (k.startsWith("FRAMEFARM_")) delete process.env[k];
    for (const [k, v] of env) process.env[k] = v;
    return fn();
  } finally {
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
  }
}

/** host:port of a Service in this namespace, resolved to the container port it forwards to. */
function servicePort(
  objects: K8sObject[],
  host: string,
  port: number,
): { service: K8sObject; containerPort: number; workload: K8sObject } {
  const name = host.replace(new RegExp(`\\.${NAMESPACE}(\\.svc(\\.cluster\\.local)?)?$`), "");
  const service = byName(objects, "Service", name);
  const spec = service["spec"] as {
    selector: Record<string, string>;
    ports: { port: number; targetPort: string | number }[];
  };
  const sp = spec.ports.find((p) => p.port === port);
  assert.ok(sp, `Service ${name} has no port ${port}`);
  const workload = [...byKind(objects, "Deployment"), ...byKind(objects, "StatefulSet")].find((w) => {
    const labels = (w["spec"] as { template: { metadata: { labels: Record<string, string> } } }).template.metadata
      .labels;
    return Object.entries(spec.selector).every(([k, v]) => labels[k] === v);
  });
  assert.ok(workload, `Service ${name} selects nothing`);
  const cp = podSpecs(workload)
    .flatMap((p) => p.containers.flatMap((c) => c.ports ?? []))
    .find((p) => (typeof sp.targetPort === "number" ? p.containerPort === sp.targetPort : p.name === sp.targetPort));
  assert.ok(cp, `Service ${name} port ${port} forwards to no container port`);
  return { service, containerPort: cp.containerPort, workload };
}

/** A `key: value` setting at the top level of a NATS config file (numbers only). */
function natsSetting(conf: string, key: string): number | undefined {
  const m = new RegExp(`^${key}\\s*[:=]\\s*(\\d+)\\s*$`, "m").exec(conf);
  return m === null ? undefined : Number(m[1]);
}

function natsConf(objects: K8sObject[]): string {
  const cm = generated(objects, "ConfigMap", "nats-config");
  assert.ok(cm, "nats-config rendered");
  return (cm["data"] as Record<string, string>)["nats.conf"]!;
}

test("the Dockerfile builds what the CLI runs: entrypoint is the package's bin, every source folder is copied", () => {
  const bin = Object.values(packageJson().bin)[0]!;
  for (const target of ["coordinator", "node-cpu", "node-cuda"]) {
    assert.deepEqual(effective(stages, target, "ENTRYPOINT"), ["node", bin], `${target} ENTRYPOINT`);
    const cmd = effective(stages, target, "CMD");
    assert.equal(cmd?.length, 1, `${target} CMD`);
    assert.ok(cliCommands().has(cmd![0]!), `${target} CMD ${cmd} is a framefarm subcommand`);
    // The manifests say runAsNonRoot, which the kubelet can only verify for a numeric user.
    const user = effective(stages, target, "USER")?.[0];
    assert.ok(user !== undefined && /^[1-9]\d*$/.test(user), `${target} USER ${user} is a numeric non-root user`);
  }
  assert.deepEqual(effective(stages, "coordinator", "EXPOSE"), [String(DEFAULT_API_PORT), String(DEFAULT_HTTP_PORT)]);
  const build = stages.find((s) => s.name === "build")!;
  const copied = build.instructions.filter(([k]) => k === "COPY").map(([, v]) => v.split(/\s+/)[0]);
  for (const dir of compiledSourceDirs()) assert.ok(copied.includes(dir), `build stage copies ${dir}/`);
  // The default bundle (FRAMEFARM_BUNDLE unset) is where the images put the tiny bundle.
  const bundleRel = withEnv(new Map(), () => path.relative(packageRoot(), defaultBundleDir()));
  for (const target of ["runtime-cpu", "node-cuda"]) {
    const s = stages.find((x) => x.name === target)!;
    assert.ok(
      s.instructions.some(([k, v]) => k === "COPY" && v.split(/\s+/).at(-1) === bundleRel),
      `${target} copies the default bundle to ${bundleRel}`,
    );
  }
  // The coordinator's HTTP server reads its pages (dashboard, submit page) from there at start.
  const pages = path.relative(packageRoot(), STATIC_DIR);
  assert.ok(
    stages
      .find((x) => x.name === "runtime-cpu")!
      .instructions.some(([k, v]) => k === "COPY" && v.split(/\s+/).at(-1) === pages),
    `runtime-cpu copies the HTTP server's pages to ${pages}`,
  );
});

test("the node images start the node with the malloc settings `framefarm cluster` gives it (gpu-node/malloc-env.ts)", () => {
  /** Every ENV of a stage and the stages it is built FROM, later ones winning. */
  const envOf = (name: string): Map<string, string> => {
    const s = stages.find((x) => x.name === name);
    if (s === undefined) return new Map();
    const env = envOf(s.from);
    for (const [k, v] of s.instructions)
      if (k === "ENV") for (const m of v.matchAll(/(\w+)=(\S+)/g)) env.set(m[1]!, m[2]!.replace(/^"(.*)"$/, "$1"));
    return env;
  };
  for (const target of ["node-cpu", "node-cuda"]) {
    const env = envOf(target);
    for (const [k, v] of Object.entries(NODE_MALLOC_ENV)) assert.equal(env.get(k), v, `${target} ENV ${k}`);
  }
  // Only the nodes: the coordinator's RSS stays flat without it (test/soak/RESULTS.md).
  for (const k of Object.keys(NODE_MALLOC_ENV))
    assert.equal(envOf("coordinator").get(k), undefined, `coordinator ENV ${k}`);
  // What the node is started with, unless its environment says otherwise.
  assert.deepEqual(nodeProcessEnv({ A: "1" }), { ...NODE_MALLOC_ENV, A: "1" });
  assert.equal(nodeProcessEnv({ MALLOC_MMAP_THRESHOLD_: "65536" })["MALLOC_MMAP_THRESHOLD_"], "65536");
});

test("the CUDA image installs the provider with `framefarm setup cuda`, on a CUDA 13 + cuDNN base that the build checks", () => {
  const bin = Object.values(packageJson().bin)[0]!;
  assert.ok(cliCommands().has("setup"), "setup is a framefarm subcommand");
  const cuda = stages.find((s) => s.name === "node-cuda")!;
  const from = cuda.instructions.find(([k, v]) => k === "COPY" && v.includes("node_modules"))?.[1];
  const source = /--from=(\S+)/.exec(from ?? "")?.[1];
  assert.ok(source, "node-cuda copies node_modules from a build stage");
  const runs = (stage: string): string[] =>
    stages
      .find((s) => s.name === stage)!
      .instructions.filter(([k]) => k === "RUN")
      .map(([, v]) => (v.startsWith("[") ? (JSON.parse(v) as string[]).join(" ") : v));
  const build = runs(source).join("\n");
  assert.match(
    build,
    new RegExp(`node ${bin.replace(/\./g, "\\.")} setup cuda(\\s|$)`),
    `${source} runs framefarm setup cuda`,
  );
  assert.ok(!build.includes("--onnxruntime-node-install"), "not onnxruntime-node's NuGet download");
  // setup's default cache folder is a BuildKit cache mount, so rebuilds do not download 180 MB again.
  assert.match(build, /--mount=type=cache,target=\/app\/\.cache\/cuda\s/);
  assert.ok(build.includes(path.basename(CUDA_PROVIDER_LIBRARY)), "the build checks the provider file is there");
  // The base image: NVIDIA's CUDA runtime with cuDNN, of the CUDA major the provider is built for
  // (a tag of nvidia/cuda's <version>-cudnn-runtime-<os> form; CUDA 13 tags carry cuDNN 9).
  const base = /^nvidia\/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu\d+\.\d+$/.exec(cuda.from);
  assert.ok(base, `node-cuda is FROM an nvidia/cuda cudnn-runtime image (${cuda.from})`);
  assert.equal(base[1], CUDA_PROVIDER_PACKAGE.cuda, `CUDA ${CUDA_PROVIDER_PACKAGE.cuda} base image`);
  assert.equal(CUDA_PROVIDER_PACKAGE.cudnn, "9");
  // ... and the image build fails unless the base has every library the provider needs.
  assert.ok(
    runs("node-cuda").some((r) => r === `node ${bin} setup cuda --check --skip-driver`),
    "node-cuda runs setup cuda --check (driver aside)",
  );
  const user = cuda.instructions.findIndex(([k]) => k === "USER");
  const check = cuda.instructions.findIndex(([k, v]) => k === "RUN" && v.includes("--check"));
  assert.ok(check < user, "the check runs before USER (as root, like the rest of the build)");
});

test("gpu overlay: every node runs --ep cuda on the node-cuda image", () => {
  const nodes = framefarmContainers(render("overlays/gpu")).filter((r) => roleOf(r) === "node");
  assert.equal(nodes.length, 2);
  for (const n of nodes) {
    assert.equal(n.env.get("FRAMEFARM_EP"), "cuda", `${n.workload.metadata.name}: FRAMEFARM_EP (--ep)`);
    assert.equal(
      FRAMEFARM_IMAGE.exec(n.container.image)?.[1],
      "node-cuda",
      `${n.workload.metadata.name}: image ${n.container.image}`,
    );
  }
});

for (const target of TARGETS) {
  test(`${target}: every FRAMEFARM_* variable set is one the code reads, and it accepts the values`, () => {
    const objects = render(target);
    const read = envVarsReadByCode();
    const roles = framefarmContainers(objects);
    assert.deepEqual(roles.map(roleOf).sort(), ["coordinator", "node", "node"]);
    for (const r of roles) {
      const unknown = [...r.env.keys()].filter((k) => k.startsWith("FRAMEFARM_") && !read.has(k));
      assert.deepEqual(unknown, [], `${r.workload.metadata.name}: variables no code reads`);
      assert.ok(
        cliCommands().has(roleOf(r)),
        `${r.workload.metadata.name}: args ${r.container.args} name a subcommand`,
      );
      // Settings come from the environment; a flag only where the code reads no variable for it
      // (node --device), and then its $(VAR)s must be ones the container defines, or the kubelet
      // passes them through literally.
      for (const arg of r.container.args?.slice(1) ?? []) {
        for (const m of arg.matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g))
          assert.ok(
            r.env.has(m[1]!),
            `${r.workload.metadata.name}: args use $(${m[1]}), which the container does not define`,
          );
      }
      const flags = (r.container.args ?? [])
        .filter((a) => a.startsWith("--"))
        .map((a) => a.replace(/^--([\w-]+).*$/, "$1"));
      assert.deepEqual(
        flags.filter((f) => read.has(`FRAMEFARM_${f.toUpperCase().replace(/-/g, "_")}`)),
        [],
        `${r.workload.metadata.name}: flags whose variable the ConfigMap or env should set instead`,
      );
      const level = r.env.get("FRAMEFARM_LOG_LEVEL");
      if (level !== undefined)
        assert.ok(level === "silent" || level in pino.levels.values, `FRAMEFARM_LOG_LEVEL ${level} is a pino level`);
      assert.equal(
        (r.container as { securityContext?: { runAsNonRoot?: boolean } }).securityContext?.runAsNonRoot,
        true,
        `${r.workload.metadata.name}: runs as non-root`,
      );
      for (const key of ["FRAMEFARM_S3_ACCESS_KEY", "FRAMEFARM_S3_SECRET_KEY"]) {
        const e = r.container.env?.find((x) => x.name === key);
        assert.ok(e?.valueFrom?.secretKeyRef, `${r.workload.metadata.name}: ${key} comes from a Secret`);
      }
      const conn = withEnv(r.env, () => farmConnection({}));
      assert.equal(conn.s3.bucket, r.env.get("FRAMEFARM_S3_BUCKET"));
    }
    for (const cm of byKind(objects, "ConfigMap")) {
      for (const k of Object.keys((cm["data"] ?? {}) as object))
        assert.ok(
          !/SECRET|ACCESS_KEY|PASSWORD|TOKEN/.test(k),
          `ConfigMap ${cm.metadata.name} holds ${k}: use a Secret`,
        );
    }
    // Scripts run in init containers read the same settings.
    for (const cm of byKind(objects, "ConfigMap")) {
      for (const [file, text] of Object.entries((cm["data"] ?? {}) as Record<string, string>)) {
        if (!file.endsWith(".sh")) continue;
        assert.deepEqual(
          [...envVarsUsedByScript(text)].filter((k) => !read.has(k)),
          [],
          `${file}: variables no code reads`,
        );
      }
    }
  });

  test(`${target}: the coordinator listens where its Service, probes and image say`, () => {
    const objects = render(target);
    const [coord] = framefarmContainers(objects).filter((r) => roleOf(r) === "coordinator") as [Role];
    assert.equal(coord.env.get("FRAMEFARM_HOST"), "0.0.0.0", "listens beyond loopback, where the kubelet probes");
    const port = Number(coord.env.get("FRAMEFARM_PORT") ?? DEFAULT_API_PORT);
    assert.equal(port, DEFAULT_API_PORT, "the image's EXPOSE and the docs use the default port");
    const httpPort = withEnv(coord.env, () =>
      parsePort("--http-port", process.env["FRAMEFARM_HTTP_PORT"], DEFAULT_HTTP_PORT),
    );
    assert.equal(httpPort, DEFAULT_HTTP_PORT, "the image's EXPOSE and the docs use the default dashboard port");
    assert.deepEqual(
      coord.container.ports?.map((p) => [p.name, p.containerPort]),
      [
        ["grpc", port],
        ["http", httpPort],
      ],
    );
    for (const kind of ["startupProbe", "readinessProbe", "livenessProbe"] as const) {
      const probe = coord.container[kind];
      // The dashboard answers as soon as it listens; SERVING means NATS, S3 and the bundle are open.
      assert.equal(probe?.grpc?.port, port, `${kind} is a gRPC health check on the API port`);
      assert.ok(
        ["", JOB_SERVICE_NAME].includes(probe.grpc.service ?? ""),
        `${kind} asks for a service the coordinator reports`,
      );
    }
    assert.equal(servicePort(objects, "framefarm-coordinator", port).containerPort, port);
    const service = byName(objects, "Service", "framefarm-coordinator")["spec"] as {
      ports: { name: string; port: number }[];
    };
    const http = service.ports.find((p) => p.name === "http");
    assert.ok(http, "the Service names the dashboard port http (for port-forward and scrape configs)");
    assert.equal(servicePort(objects, "framefarm-coordinator", http.port).containerPort, httpPort);
    // The prometheus.io/* convention: the pod says where its metrics are.
    const annotations =
      (coord.workload["spec"] as { template: { metadata: { annotations?: Record<string, string> } } }).template.metadata
        .annotations ?? {};
    assert.equal(annotations["prometheus.io/scrape"], "true");
    assert.equal(Number(annotations["prometheus.io/port"]), httpPort, "Prometheus scrapes the dashboard's port");
    assert.equal(
      annotations["prometheus.io/path"],
      "/metrics",
      "the path the dashboard serves metrics on (fetched in container-start.test.ts)",
    );
    assert.equal(annotations["prometheus.io/scheme"] ?? "http", "http", "the dashboard is plain HTTP");
    assert.equal(
      FRAMEFARM_IMAGE.exec(coord.container.image)?.[1],
      "coordinator",
      "coordinator image is the Dockerfile's coordinator target",
    );
  });

  test(`${target}: the token file is a read-only Secret mount, with operators who can open the dashboard`, async () => {
    const objects = render(target);
    const [coord] = framefarmContainers(objects).filter((r) => roleOf(r) === "coordinator") as [Role];
    const file = coord.env.get("FRAMEFARM_TOKENS_FILE");
    // Only the coordinator checks tokens; nodes never see them.
    for (const r of framefarmContainers(objects))
      if (roleOf(r) !== "coordinator")
        assert.equal(r.env.get("FRAMEFARM_TOKENS_FILE"), undefined, `${r.workload.metadata.name} gets no token file`);
    if (file === undefined) {
      // dev (and the base) run open, as deploy/README.md says; the real farm must not.
      assert.notEqual(target, "overlays/gpu", "the gpu overlay turns tokens on");
      return;
    }
    assert.ok(path.posix.isAbsolute(file), `${file} is an absolute path`);
    const mount = coord.container.volumeMounts?.find((m) => path.posix.dirname(file) === m.mountPath);
    assert.ok(mount, `${file} lies directly in a mounted volume`);
    assert.equal(mount.readOnly, true, "the token file is mounted read-only");
    const volume = (podSpecs(coord.workload)[0]!.volumes ?? []).find((v) => v.name === mount.name);
    assert.ok(volume?.secret, "the token file comes from a Secret");
    const item = volume.secret.items?.find((i) => i.path === path.posix.basename(file));
    assert.ok(item, `the Secret volume names the key that becomes ${path.posix.basename(file)}`);
    assert.equal(
      generated(objects, "Secret", volume.secret.secretName),
      undefined,
      "tokens are made by hand (deploy/README.md), never rendered",
    );
    // securityOptions reads FRAMEFARM_OPERATORS before its first await; without the token file (not here) it reads nothing else.
    const env = new Map(coord.env);
    env.delete("FRAMEFARM_TOKENS_FILE");
    const security = await withEnv(env, () => securityOptions({}));
    assert.ok(
      (security.operators ?? []).length > 0,
      "FRAMEFARM_OPERATORS names tenants (else the dashboard and /metrics refuse everyone)",
    );
    for (const t of security.operators!) assert.match(t, TENANT_PATTERN);
    // The scraper's tenant: /metrics only, and not an operator (deploy/README.md, "Metrics").
    for (const t of security.metricsTenants ?? []) {
      assert.match(t, TENANT_PATTERN);
      assert.ok(!security.operators!.includes(t), `${t} scrapes /metrics without being an operator`);
    }
  });

  test(`${target}: node pools serve every stage, on an execution provider their image has`, () => {
    const objects = render(target);
    const nodes = framefarmContainers(objects).filter((r) => roleOf(r) === "node");
    const served = new Set<string>();
    for (const n of nodes) {
      for (const s of withEnv(n.env, () => parseStages(n.env.get("FRAMEFARM_STAGES") ?? "all"))) served.add(s);
      assert.equal(n.env.get("FRAMEFARM_NODE_ID"), "<fieldRef:metadata.name>", "node id is the pod name");
      const ep = n.env.get("FRAMEFARM_EP") ?? "cpu";
      assert.ok((EXECUTION_PROVIDERS as readonly string[]).includes(ep), `execution provider ${ep}`);
      const imageTarget = FRAMEFARM_IMAGE.exec(n.container.image)?.[1];
      assert.ok(
        imageTarget !== undefined && stages.some((s) => s.name === imageTarget),
        `image ${n.container.image} is a Dockerfile target`,
      );
      assert.equal(
        imageTarget,
        ep === "cuda" ? "node-cuda" : "node-cpu",
        `${n.workload.metadata.name}: image for ${ep}`,
      );
      const pod = podSpecs(n.workload)[0]!;
      if (ep === "cuda") {
        assert.equal(String(n.container.resources?.limits?.["nvidia.com/gpu"]), "1", "one GPU per node");
        assert.ok(
          pod.tolerations?.some((t) => t.key === "nvidia.com/gpu"),
          "tolerates GPU taints",
        );
        assert.ok(pod.nodeSelector !== undefined && Object.keys(pod.nodeSelector).length > 0, "selects GPU hosts");
      } else {
        assert.equal(n.container.resources?.limits?.["nvidia.com/gpu"], undefined);
      }
    }
    assert.deepEqual([...served].sort(), Object.values(STAGE_GROUPS).flat().sort());
  });

  test(`${target}: NATS and S3 addresses lead to the servers, with JetStream replicas matching the cluster`, () => {
    const objects = render(target);
    const conf = natsConf(objects);
    for (const r of framefarmContainers(objects)) {
      const urls = natsServers(r.env.get("FRAMEFARM_NATS")!);
      const natsSts = byName(objects, "StatefulSet", "nats")["spec"] as { replicas: number; serviceName: string };
      // One URL (a Service), or every server of a cluster by its pod name (nats-<i>.<headless Service>).
      if (urls.length > 1) assert.equal(urls.length, natsSts.replicas, "every NATS server is listed");
      for (const [i, u] of urls.entries()) {
        const nats = new URL(u);
        assert.equal(nats.protocol, "nats:");
        let host = nats.hostname;
        if (urls.length > 1) {
          assert.ok(host.startsWith(`nats-${i}.${natsSts.serviceName}`), `${u} names pod nats-${i}`);
          host = host.slice(`nats-${i}.`.length);
        }
        const n = servicePort(objects, host, Number(nats.port));
        assert.equal(n.workload.metadata.name, "nats");
        assert.equal(n.containerPort, natsSetting(conf, "port"), "the client port nats.conf listens on");
      }
      const conn = withEnv(r.env, () => farmConnection({}));
      const s3 = servicePort(objects, conn.s3.host, conn.s3.port);
      assert.equal(s3.workload.metadata.name, "minio");
      const minioArgs = podSpecs(s3.workload)[0]!.containers[0]!.args ?? [];
      assert.ok(
        !minioArgs.includes("--address") || minioArgs.includes(`:${s3.containerPort}`),
        "MinIO serves S3 on the forwarded port",
      );
      const replicas = conn.natsReplicas;
      const sts = byName(objects, "StatefulSet", "nats")["spec"] as { replicas: number; serviceName: string };
      assert.equal(replicas, sts.replicas, "streams are replicated once per NATS server");
      const routes = [...conf.matchAll(/nats:\/\/([\w.-]+):(\d+)/g)];
      assert.deepEqual(
        routes.map((m) => m[1]),
        sts.replicas === 1 ? [] : Array.from({ length: sts.replicas }, (_, i) => `nats-${i}.${sts.serviceName}`),
      );
    }
  });

  test(`${target}: the model bundle is where the code looks for it`, () => {
    const objects = render(target);
    for (const r of framefarmContainers(objects)) {
      const bundle = r.env.get("FRAMEFARM_BUNDLE");
      const pod = podSpecs(r.workload)[0]!;
      if (bundle === undefined) {
        assert.notEqual(target, "overlays/gpu", "the gpu overlay runs the real bundle");
        continue; // the tiny bundle inside the image (checked against the Dockerfile above)
      }
      const mount = r.container.volumeMounts?.find(
        (m) => bundle === m.mountPath || bundle.startsWith(`${m.mountPath}/`),
      );
      assert.ok(mount, `${r.workload.metadata.name}: ${bundle} is on a volume`);
      const fillers = (pod.initContainers ?? []).filter((c) =>
        c.volumeMounts?.some((m) => m.name === mount.name && m.readOnly !== true),
      );
      assert.equal(fillers.length, 1, `${r.workload.metadata.name}: one init step fills the bundle volume`);
      const fillerEnv = containerEnv(objects, fillers[0]!);
      assert.equal(fillerEnv.get("FRAMEFARM_BUNDLE"), bundle, "the init step writes where the node reads");
      const script = byKind(objects, "ConfigMap")
        .flatMap((cm) => Object.values((cm["data"] ?? {}) as Record<string, string>))
        .find((t) => t.startsWith("#!") && t.includes("FRAMEFARM_BUNDLE"));
      assert.ok(script?.includes(MANIFEST_FILE), "the init step checks for the bundle manifest the code opens");
    }
  });
}

test("gpu: KEDA scales denoise nodes on the consumer they pull from, read from the NATS monitoring port", () => {
  const objects = render("overlays/gpu" satisfies Target);
  const [scaled] = byKind(objects, "ScaledObject") as [K8sObject];
  const spec = scaled["spec"] as {
    scaleTargetRef: { name: string; kind?: string };
    triggers: { type: string; metadata: Record<string, string> }[];
  };
  const workload = byName(objects, spec.scaleTargetRef.kind ?? "Deployment", spec.scaleTargetRef.name);
  const node = framefarmContainers(objects).find((r) => r.workload === workload);
  assert.ok(node, "the target runs framefarm nodes");
  const served = withEnv(node.env, () => parseStages(node.env.get("FRAMEFARM_STAGES")!));
  assert.deepEqual(served, ["denoise"]);
  assert.equal((workload["spec"] as { replicas?: number }).replicas, undefined, "KEDA owns the replica count");
  const [trigger] = spec.triggers as [{ type: string; metadata: Record<string, string> }];
  assert.equal(trigger.type, "nats-jetstream");
  assert.equal(trigger.metadata["stream"], streamOf(served[0]!));
  assert.equal(trigger.metadata["consumer"], stageConsumerName(served[0]!));
  const [host, port] = trigger.metadata["natsServerMonitoringEndpoint"]!.split(":") as [string, string];
  assert.match(
    host,
    new RegExp(`\\.${NAMESPACE}\\.svc\\.cluster\\.local$`),
    "KEDA runs in its own namespace: the address is fully qualified",
  );
  const monitor = servicePort(objects, host, Number(port));
  assert.equal(monitor.workload.metadata.name, "nats");
  assert.equal(
    monitor.containerPort,
    natsSetting(natsConf(objects), "http_port"),
    "the monitoring port nats.conf opens",
  );
  assert.ok(Number(trigger.metadata["lagThreshold"]) >= 1);
});

for (const target of TARGETS) {
  test(`${target}: the OTEL_* settings are ones the code accepts, tracing off as shipped, alike everywhere`, () => {
    const roles = framefarmContainers(render(target));
    const otel = (r: Role): string =>
      JSON.stringify([...r.env].filter(([k]) => k.startsWith("OTEL_")).sort(([a], [b]) => a.localeCompare(b)));
    for (const r of roles) {
      // Only the OTEL_* part of the environment: the test process's own must not decide.
      const env = Object.fromEntries([...r.env].filter(([k]) => k.startsWith("OTEL_")));
      assert.equal(tracingSettings(undefined, env), null, `${r.workload.metadata.name}: tracing is off until asked`);
    }
    // One trace per job needs the coordinator and every node exporting to the same place.
    assert.equal(new Set(roles.map(otel)).size, 1, "coordinator and nodes get the same OTEL_* settings");
  });
}

for (const target of TARGETS) {
  test(`${target}: NATS admits only the farm's users, each with the rights of its role (nats-auth.conf is the code's)`, () => {
    const objects = render(target);
    const files = generated(objects, "ConfigMap", "nats-config")!["data"] as Record<string, string>;
    assert.match(files["nats.conf"]!, /^include \.\/nats-auth\.conf$/m, "nats.conf includes the users");
    const auth = files["nats-auth.conf"]!;
    // The file is what its header's command prints.
    const command = /^#\s+framefarm nats-auth (.+)$/m.exec(auth);
    assert.ok(command, "nats-auth.conf names the command that wrote it");
    const specs = command[1]!.trim().split(/\s+/);
    assert.equal(auth.slice(auth.indexOf("authorization {")), natsAuthorizationConfig(natsUsersFromArgs(specs)));
    const roles = new Map(specs.map((s) => s.split("=") as [string, string]));
    // Every framefarm container connects as one of them, in its role, with its password from the Secret the server reads.
    const nats = podSpecs(byName(objects, "StatefulSet", "nats"))[0]!.containers[0]!;
    const serverSecret = nats.envFrom?.find((f) => f.secretRef !== undefined)?.secretRef?.name;
    assert.ok(serverSecret, "nats-server gets the passwords from a Secret");
    for (const r of framefarmContainers(objects)) {
      const name = r.workload.metadata.name;
      const user = r.env.get("FRAMEFARM_NATS_USER");
      assert.ok(user !== undefined && roles.has(user), `${name}: connects as one of the farm's NATS users`);
      const role = roles.get(user)!;
      if (roleOf(r) === "coordinator") assert.equal(role, "coordinator", `${name}: the coordinator's user`);
      else
        assert.deepEqual(
          parseStages(role),
          withEnv(r.env, () => parseStages(r.env.get("FRAMEFARM_STAGES") ?? "all")),
          `${name}: its user has exactly the rights of the stages it serves`,
        );
      const secret = r.container.env?.find((x) => x.name === "FRAMEFARM_NATS_PASSWORD")?.valueFrom?.secretKeyRef;
      assert.deepEqual(secret, { name: serverSecret, key: natsPasswordEnv(user) }, `${name}: its password`);
    }
  });
}
