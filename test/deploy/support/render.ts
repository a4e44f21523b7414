/**
 * Renders deploy/k8s with a real kustomize engine: `kubectl kustomize` from Debian's
 * kubernetes-client (deploy/k8s/install-kubectl.sh puts it in .cache/kubectl), or FRAMEFARM_KUBECTL.
 */
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { parseAllDocuments } from "yaml";
import { repoRoot } from "../../support/paths.js";

/** A rendered Kubernetes object; fields are checked by schema.ts, so tests read them loosely. */
export type K8sObject = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; [k: string]: unknown };
  [k: string]: unknown;
};

export const k8sDir = (): string => path.join(repoRoot(), "deploy", "k8s");
/** What `kubectl apply -k` takes: the base and each overlay. */
export const TARGETS = ["base", "overlays/dev", "overlays/gpu"] as const;
export type Target = (typeof TARGETS)[number];

export function pinnedKubectl(): string {
  const fromEnv = process.env["FRAMEFARM_KUBECTL"];
  if (fromEnv !== undefined) return fromEnv;
  const local = path.join(repoRoot(), ".cache", "kubectl", "usr", "bin", "kubectl");
  if (!existsSync(local))
    throw new Error(
      `no kubectl for the deploy tests: run bash deploy/k8s/install-kubectl.sh (or set FRAMEFARM_KUBECTL)`,
    );
  return local;
}

/** A kubectl on PATH other than the pinned one, if any (a newer kustomize to render with too). */
export function kubectlOnPath(): string | null {
  for (const dir of (process.env["PATH"] ?? "").split(path.delimiter)) {
    const candidate = path.join(dir, "kubectl");
    if (dir !== "" && existsSync(candidate) && candidate !== pinnedKubectl()) return candidate;
  }
  return null;
}

export function kustomizeText(target: Target, kubectl = pinnedKubectl()): string {
  return execFileSync(kubectl, ["kustomize", path.join(k8sDir(), target)], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
}

export function parseObjects(text: string): K8sObject[] {
  const out: K8sObject[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0)
      throw new Error(`rendered YAML does not parse: ${doc.errors.map((e) => e.message).join("; ")}`);
    const value = doc.toJS() as K8sObject | null;
    if (value !== null) out.push(value);
  }
  return out;
}

const cache = new Map<Target, K8sObject[]>();
/** The target rendered with the pinned kubectl (memoised: renders take a second each). */
export function render(target: Target): K8sObject[] {
  let objects = cache.get(target);
  if (objects === undefined) {
    objects = parseObjects(kustomizeText(target));
    cache.set(target, objects);
  }
  return structuredClone(objects);
}
