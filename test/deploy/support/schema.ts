/**
 * Offline validation of rendered objects against the Kubernetes schemas: the JSON schemas that
 * kubernetes-models generates from the Kubernetes OpenAPI spec (and @kubernetes-models/keda from
 * KEDA's CRDs). Those schemas allow unknown fields, as the API server's own OpenAPI does, so a
 * typo such as `readinesProbe` would pass; `kubectl apply` would then drop it with at most a
 * warning. We are strict like `kubeconform -strict`: while the validator runs, every object is
 * watched, and a field it never looked at in an object whose fields it did look at is unknown.
 * Objects whose keys it enumerates are maps (labels, resources) and are left alone.
 */
import { createRequire } from "node:module";
import type { K8sObject } from "./render.js";

type ValidateFn = ((data: unknown) => boolean) & {
  errors?: { instancePath: string; message?: string; params?: unknown }[] | null;
};

const require = createRequire(import.meta.url);

/** The schema validator for apiVersion/kind, or null when no schema is known. */
function validatorFor(apiVersion: string, kind: string): ValidateFn | null {
  const group = apiVersion.includes("/") ? apiVersion.split("/")[0]! : "";
  const pkg = group === "keda.sh" ? "@kubernetes-models/keda" : "kubernetes-models";
  let mod: { [k: string]: { prototype: { validate(this: unknown): void } } };
  try {
    mod = require(`${pkg}/${apiVersion}/${kind}`);
  } catch {
    return null;
  }
  const model = mod[kind];
  if (model === undefined) return null;
  // The model's validate() runs the compiled schema on `this` and throws a readable error.
  const fn = ((data: unknown) => {
    try {
      model.prototype.validate.call(data);
      return true;
    } catch (err) {
      fn.errors = [{ instancePath: "", message: (err as Error).message }];
      return false;
    }
  }) as ValidateFn;
  return fn;
}

interface Watched {
  path: string;
  keys: string[];
  read: Set<string>;
  enumerated: boolean;
}

const isPlainObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

function watch(value: unknown, path: string, log: Watched[]): unknown {
  if (Array.isArray(value)) return value.map((v, i) => watch(v, `${path}[${i}]`, log));
  if (!isPlainObject(value)) return value;
  const target: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) target[k] = watch(v, `${path}.${k}`, log);
  const w: Watched = { path, keys: Object.keys(target), read: new Set(), enumerated: false };
  log.push(w);
  return new Proxy(target, {
    get(t, k, r) {
      if (typeof k === "string") w.read.add(k);
      return Reflect.get(t, k, r);
    },
    has(t, k) {
      if (typeof k === "string") w.read.add(k);
      return Reflect.has(t, k);
    },
    ownKeys(t) {
      w.enumerated = true;
      return Reflect.ownKeys(t);
    },
  });
}

/** Problems with one object: schema violations and unknown fields; empty when it is valid. */
export function validateObject(obj: K8sObject): string[] {
  const where = `${obj.kind}/${obj.metadata?.name}`;
  const validate = validatorFor(obj.apiVersion, obj.kind);
  if (validate === null) return [`${where}: no schema for ${obj.apiVersion} ${obj.kind}`];
  const log: Watched[] = [];
  const watched = watch(obj, "", log);
  const problems: string[] = [];
  if (!validate(watched))
    problems.push(`${where}: ${validate.errors?.map((e) => `${e.instancePath} ${e.message ?? ""}`).join("; ")}`);
  for (const w of log) {
    if (w.enumerated || w.read.size === 0) continue;
    for (const k of w.keys) if (!w.read.has(k)) problems.push(`${where}: unknown field ${w.path}.${k}`);
  }
  return problems;
}
