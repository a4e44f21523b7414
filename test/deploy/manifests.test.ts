/**
 * deploy/k8s renders with a real kustomize (Debian's kubectl) and every object validates against
 * the Kubernetes schemas offline (KEDA's ScaledObject against KEDA's CRD schema), strictly: no
 * unknown fields. Then what schemas cannot see: references between the objects resolve.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { TARGETS, kubectlOnPath, kustomizeText, parseObjects, render, type K8sObject } from "./support/render.js";
import { validateObject } from "./support/schema.js";
import { podSpecs, byKind } from "./support/query.js";

for (const target of TARGETS) {
  test(`${target}: renders and every object is valid against its schema`, () => {
    const objects = render(target);
    assert.ok(objects.length >= 10, `only ${objects.length} objects rendered`);
    const problems = objects.flatMap(validateObject);
    assert.deepEqual(problems, []);
    const ids = objects.map((o) => `${o.kind}/${o.metadata.name}`);
    assert.deepEqual(
      ids.filter((id, i) => ids.indexOf(id) !== i),
      [],
      "duplicate objects",
    );
    for (const o of objects)
      if (o.kind !== "Namespace")
        assert.equal(o.metadata.namespace, "framefarm", `${o.kind}/${o.metadata.name} namespace`);
  });

  test(`${target}: selectors, ports, ConfigMaps, Secrets and claims all refer to something`, () => {
    const objects = render(target);
    const workloads = [...byKind(objects, "Deployment"), ...byKind(objects, "StatefulSet")];
    for (const w of workloads) {
      const spec = w["spec"] as {
        selector: { matchLabels: Record<string, string> };
        template: { metadata: { labels: Record<string, string> } };
      };
      for (const [k, v] of Object.entries(spec.selector.matchLabels))
        assert.equal(spec.template.metadata.labels[k], v, `${w.metadata.name}: selector ${k}`);
    }
    const podLabels = workloads.map(
      (w) => (w["spec"] as { template: { metadata: { labels: Record<string, string> } } }).template.metadata.labels,
    );
    const selects = (sel: Record<string, string>): number =>
      podLabels.filter((l) => Object.entries(sel).every(([k, v]) => l[k] === v)).length;
    for (const s of byKind(objects, "Service")) {
      const spec = s["spec"] as {
        selector: Record<string, string>;
        ports: { name: string; targetPort: string | number }[];
      };
      assert.ok(selects(spec.selector) > 0, `Service ${s.metadata.name} selects no pods`);
      const selected = workloads.filter((w) => {
        const l = (w["spec"] as { template: { metadata: { labels: Record<string, string> } } }).template.metadata
          .labels;
        return Object.entries(spec.selector).every(([k, v]) => l[k] === v);
      });
      const containerPorts = selected.flatMap((w) =>
        podSpecs(w).flatMap((p) => p.containers.flatMap((c) => c.ports ?? [])),
      );
      for (const p of spec.ports) {
        const found = containerPorts.some((cp) =>
          typeof p.targetPort === "number" ? cp.containerPort === p.targetPort : cp.name === p.targetPort,
        );
        assert.ok(found, `Service ${s.metadata.name} port ${p.name}: targetPort ${p.targetPort} is no container port`);
      }
    }
    for (const pdb of byKind(objects, "PodDisruptionBudget")) {
      assert.equal(
        selects((pdb["spec"] as { selector: { matchLabels: Record<string, string> } }).selector.matchLabels),
        1,
        `PDB ${pdb.metadata.name} must cover one workload`,
      );
    }
    const names = (kind: string): Set<string> => new Set(byKind(objects, kind).map((o) => o.metadata.name));
    const configMaps = names("ConfigMap");
    const secrets = names("Secret");
    const missingSecrets = new Set<string>();
    for (const w of workloads) {
      for (const pod of podSpecs(w)) {
        for (const c of [...pod.containers, ...(pod.initContainers ?? [])]) {
          for (const e of c.envFrom ?? []) {
            if (e.configMapRef)
              assert.ok(configMaps.has(e.configMapRef.name), `${w.metadata.name}: ConfigMap ${e.configMapRef.name}`);
            if (e.secretRef && !secrets.has(e.secretRef.name)) missingSecrets.add(e.secretRef.name);
          }
          for (const e of c.env ?? []) {
            const cm = e.valueFrom?.configMapKeyRef;
            if (cm) assert.ok(configMaps.has(cm.name), `${w.metadata.name}: ConfigMap ${cm.name}`);
            const sk = e.valueFrom?.secretKeyRef;
            if (sk && !secrets.has(sk.name)) missingSecrets.add(sk.name);
          }
          const volumeNames = new Set((pod.volumes ?? []).map((v) => v.name));
          const claimNames = new Set(
            ((w["spec"] as { volumeClaimTemplates?: { metadata: { name: string } }[] }).volumeClaimTemplates ?? []).map(
              (t) => t.metadata.name,
            ),
          );
          for (const m of c.volumeMounts ?? [])
            assert.ok(
              volumeNames.has(m.name) || claimNames.has(m.name),
              `${w.metadata.name}/${c.name}: volume ${m.name}`,
            );
        }
        for (const v of pod.volumes ?? []) {
          if (v.configMap)
            assert.ok(configMaps.has(v.configMap.name), `${w.metadata.name}: ConfigMap volume ${v.configMap.name}`);
          if (v.secret && !secrets.has(v.secret.secretName)) missingSecrets.add(v.secret.secretName);
        }
      }
    }
    // Only the dev overlay ships credentials (and runs without tokens); elsewhere the S3 and NATS
    // Secrets, and in gpu the tokens Secret, are made by hand (deploy/README.md).
    const byHand = {
      base: ["framefarm-nats", "framefarm-s3"],
      "overlays/dev": [],
      "overlays/gpu": ["framefarm-nats", "framefarm-s3", "framefarm-tokens"],
    }[target];
    assert.deepEqual([...missingSecrets].sort(), byHand);
  });
}

test("the schema check rejects unknown fields and wrong types (so passing means something)", () => {
  const [deployment] = byKind(render("overlays/dev"), "Deployment") as [K8sObject];
  const typo = structuredClone(deployment) as {
    spec: { template: { spec: { containers: Record<string, unknown>[] } } };
  } & K8sObject;
  typo.spec.template.spec.containers[0]!["readinesProbe"] = { grpc: { port: 50051 } };
  assert.match(validateObject(typo).join("\n"), /unknown field \.spec\.template\.spec\.containers\[0\]\.readinesProbe/);
  const wrongType = structuredClone(deployment) as { spec: Record<string, unknown> } & K8sObject;
  wrongType.spec["replicas"] = "two";
  assert.notDeepEqual(validateObject(wrongType), []);
  const [scaled] = byKind(render("overlays/gpu"), "ScaledObject") as [K8sObject];
  const noTarget = structuredClone(scaled) as { spec: Record<string, unknown> } & K8sObject;
  delete noTarget.spec["scaleTargetRef"];
  assert.match(validateObject(noTarget).join("\n"), /scaleTargetRef/);
});

/**
 * What may differ between kustomize versions: generated names carry a content hash computed
 * differently, and v2 leaves empty labels/annotations on merged generator output.
 */
function normalised(objects: K8sObject[]): string[] {
  const text = JSON.stringify(objects).replace(/(framefarm-settings|nats-config|bundle-pull)-[a-z0-9]{10}\b/g, "$1");
  return (JSON.parse(text) as K8sObject[])
    .map((o) => {
      for (const k of ["labels", "annotations"]) if (JSON.stringify(o.metadata[k]) === "{}") delete o.metadata[k];
      return JSON.stringify(sortKeys(o));
    })
    .sort();
}
function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (typeof v === "object" && v !== null)
    return Object.fromEntries(
      Object.entries(v)
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([k, x]) => [k, sortKeys(x)]),
    );
  return v;
}

test("a newer kustomize (the kubectl on PATH, if any) renders the same objects", (t) => {
  const other = kubectlOnPath();
  if (other === null) {
    t.skip("no other kubectl on PATH");
    return;
  }
  for (const target of TARGETS) {
    const newer = normalised(parseObjects(kustomizeText(target, other)));
    const pinned = normalised(render(target));
    const differing = [...newer.filter((o) => !pinned.includes(o)), ...pinned.filter((o) => !newer.includes(o))].map(
      (o) => {
        const { kind, metadata } = JSON.parse(o) as K8sObject;
        return `${kind}/${metadata.name}`;
      },
    );
    assert.deepEqual(differing, [], `${target}: these objects render differently with ${other}`);
  }
});
