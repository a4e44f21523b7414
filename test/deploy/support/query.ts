/** Reading rendered manifests: pod templates, containers and the environment a container gets. */
import type { K8sObject } from "./render.js";

export interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: {
    fieldRef?: { fieldPath: string };
    secretKeyRef?: { name: string; key: string };
    configMapKeyRef?: { name: string; key: string };
  };
}
export interface Probe {
  grpc?: { port: number; service?: string };
  httpGet?: { path: string; port: string | number };
}
export interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
  envFrom?: { configMapRef?: { name: string }; secretRef?: { name: string } }[];
  ports?: { name?: string; containerPort: number }[];
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
  startupProbe?: Probe;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  resources?: { requests?: Record<string, string | number>; limits?: Record<string, string | number> };
}
export interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  volumes?: {
    name: string;
    configMap?: { name: string };
    secret?: { secretName: string; items?: { key: string; path: string }[] };
    emptyDir?: unknown;
    persistentVolumeClaim?: { claimName: string };
  }[];
  nodeSelector?: Record<string, string>;
  tolerations?: { key?: string; operator?: string; effect?: string }[];
}

export const byKind = (objects: K8sObject[], kind: string): K8sObject[] => objects.filter((o) => o.kind === kind);

export function byName(objects: K8sObject[], kind: string, name: string): K8sObject {
  const o = objects.find((x) => x.kind === kind && x.metadata.name === name);
  if (o === undefined) throw new Error(`no ${kind}/${name} rendered`);
  return o;
}

export function podSpecs(workload: K8sObject): PodSpec[] {
  const spec = workload["spec"] as { template?: { spec: PodSpec } } | undefined;
  return spec?.template ? [spec.template.spec] : [];
}

/** The generated ConfigMap whose name is `base` plus kustomize's hash suffix (or exactly `base`). */
export function generated(objects: K8sObject[], kind: "ConfigMap" | "Secret", base: string): K8sObject | undefined {
  return objects.find(
    (o) => o.kind === kind && (o.metadata.name === base || new RegExp(`^${base}-[a-z0-9]{10}$`).test(o.metadata.name)),
  );
}

/**
 * The environment a container starts with, as Kubernetes assembles it: envFrom ConfigMaps and
 * Secrets first, then env (which wins). Values from the downward API become `<fieldRef:PATH>`;
 * Secrets that are not rendered (made by hand) become `<secret:NAME/KEY>`.
 */
export function containerEnv(objects: K8sObject[], c: Container): Map<string, string> {
  const env = new Map<string, string>();
  const dataOf = (kind: "ConfigMap" | "Secret", name: string): Record<string, string> | undefined => {
    const o = objects.find((x) => x.kind === kind && x.metadata.name === name);
    if (o === undefined) return undefined;
    if (kind === "Secret") {
      const data = (o["data"] ?? {}) as Record<string, string>;
      return {
        ...Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v, "base64").toString("utf8")])),
        ...((o["stringData"] ?? {}) as Record<string, string>),
      };
    }
    return (o["data"] ?? {}) as Record<string, string>;
  };
  for (const from of c.envFrom ?? []) {
    const ref = from.configMapRef
      ? dataOf("ConfigMap", from.configMapRef.name)
      : from.secretRef
        ? dataOf("Secret", from.secretRef.name)
        : undefined;
    if (ref === undefined) throw new Error(`${c.name}: envFrom names nothing rendered`);
    for (const [k, v] of Object.entries(ref)) env.set(k, v);
  }
  for (const e of c.env ?? []) {
    if (e.value !== undefined) env.set(e.name, e.value);
    else if (e.valueFrom?.fieldRef) env.set(e.name, `<fieldRef:${e.valueFrom.fieldRef.fieldPath}>`);
    else if (e.valueFrom?.secretKeyRef) {
      const { name, key } = e.valueFrom.secretKeyRef;
      env.set(e.name, dataOf("Secret", name)?.[key] ?? `<secret:${name}/${key}>`);
    } else if (e.valueFrom?.configMapKeyRef) {
      const { name, key } = e.valueFrom.configMapKeyRef;
      const v = dataOf("ConfigMap", name)?.[key];
      if (v === undefined) throw new Error(`${c.name}: ${e.name} refers to missing ConfigMap key ${name}/${key}`);
      env.set(e.name, v);
    } else env.set(e.name, "");
  }
  return env;
}
