/**
 * Least privilege on NATS: the farm's users and what each may publish and subscribe to, written
 * as a nats-server `authorization` block (for `framefarm cluster` and deploy/k8s alike). The
 * coordinator owns job state and may do anything. A node may pull its own stages' queues (create
 * and read its stage's durable consumer, fetch, ack), publish results, read the jobs bucket (a
 * task's job may have ended), write its registry record (`nodes`) and clear its drain request
 * (`node-drain`, a delete being a purge of its key), publish its denoise steps and node events, and hear jobs' state changes. Nothing
 * else: no write to the jobs bucket, no other stage's queue, no job state subject, no stream.
 */
import { DRAIN_BUCKET, NODES_BUCKET } from "../nodes/node-registry.js";
import { inboxPrefixFor, kvStreamOf, queueSubjectOf, streamOf } from "../bus/nats-bus.js";
import { FarmError } from "../errors.js";
import {
  JOBS_BUCKET,
  RESULTS_QUEUE,
  jobStateSubject,
  jobStepSubject,
  nodeEventSubject,
  stageConsumerName,
  type StageKind,
} from "./protocol.js";

export interface NatsPermissions {
  publish: { allow: string[]; deny: string[] };
  subscribe: { allow: string[]; deny: string[] };
}

/** A user of the farm's NATS: the coordinator (everything), or a node serving these stages. */
export interface NatsUser {
  user: string;
  /** The password itself, or `{ env: NAME }`: the server reads it from its environment (`$NAME`). */
  password: string | { env: string };
  role: { kind: "coordinator" } | { kind: "node"; stages: readonly StageKind[] };
}

/**
 * The environment variable a nats-server reads a user's password from when the config names it
 * so (`password: $NATS_PASSWORD_NODE_DENOISE`): deploy/k8s fills them from a Secret.
 */
export const natsPasswordEnv = (user: string): string => `NATS_PASSWORD_${user.toUpperCase().replace(/-/g, "_")}`;

const USER = /^[A-Za-z0-9_-]{1,64}$/;
export function validateNatsUser(user: string): string {
  if (!USER.test(user))
    throw new FarmError("INVALID_ARGUMENT", `NATS user ${JSON.stringify(user)} must be 1-64 of [A-Za-z0-9_-]`);
  return user;
}

const API = "$JS.API";
/** Reading a KV bucket: its stream's info (the client opens it so) and its latest values. */
const kvRead = (bucket: string): string[] => [
  `${API}.STREAM.INFO.${kvStreamOf(bucket)}`,
  `${API}.DIRECT.GET.${kvStreamOf(bucket)}`,
  `${API}.DIRECT.GET.${kvStreamOf(bucket)}.>`,
  `${API}.STREAM.MSG.GET.${kvStreamOf(bucket)}`,
];
const kvWrite = (bucket: string): string => `$KV.${bucket}.>`;

/** What a node serving `stages` may do, as `user` (its replies come to its own inbox prefix). */
export function nodePermissions(user: string, stages: readonly StageKind[]): NatsPermissions {
  const queues = stages.flatMap((stage) => {
    const stream = streamOf(stage);
    const durable = stageConsumerName(stage);
    return [
      `${API}.STREAM.INFO.${stream}`,
      // Its durable only (the node sets its ack wait and delivery limit on it), old and new API forms.
      `${API}.CONSUMER.CREATE.${stream}.${durable}`,
      `${API}.CONSUMER.CREATE.${stream}.${durable}.>`,
      `${API}.CONSUMER.DURABLE.CREATE.${stream}.${durable}`,
      `${API}.CONSUMER.INFO.${stream}.${durable}`,
      `${API}.CONSUMER.MSG.NEXT.${stream}.${durable}`,
      // Acks, in-progress, naks and terms of the messages it was given.
      `$JS.ACK.${stream}.${durable}.>`,
    ];
  });
  return {
    publish: {
      allow: [
        `${API}.INFO`,
        ...queues,
        queueSubjectOf(RESULTS_QUEUE),
        ...kvRead(JOBS_BUCKET),
        ...kvRead(NODES_BUCKET),
        kvWrite(NODES_BUCKET),
        ...kvRead(DRAIN_BUCKET),
        kvWrite(DRAIN_BUCKET),
        // Clearing its drain request: a KV delete purges the key's subject (NatsKv.delete). No more
        // than writing the bucket allows already; the stream API's other calls stay denied.
        `${API}.STREAM.PURGE.${kvStreamOf(DRAIN_BUCKET)}`,
        jobStepSubject("*"),
        nodeEventSubject("*"),
      ],
      // Implied by the allow list; said outright so that a widened allow list cannot grant them.
      deny: [kvWrite(JOBS_BUCKET), jobStateSubject("*"), `${API}.STREAM.CREATE.>`, `${API}.STREAM.DELETE.>`],
    },
    subscribe: {
      allow: [`${inboxPrefixFor(user)}.>`, jobStateSubject("*")],
      deny: [],
    },
  };
}

const quote = (s: string): string => JSON.stringify(s);
/** A list, one subject a line (the file is read by people deciding what a node may do). */
const list = (items: readonly string[], indent: string): string =>
  items.length === 0 ? "[]" : `[\n${items.map((i) => `${indent}  ${quote(i)}`).join("\n")}\n${indent}]`;

/**
 * The `authorization { users = [...] }` block of a nats-server config. A password given as an
 * environment variable is written `$NAME` (nats-server resolves it from its environment).
 */
export function natsAuthorizationConfig(users: readonly NatsUser[]): string {
  const names = users.map((u) => validateNatsUser(u.user));
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice !== undefined) throw new FarmError("INVALID_ARGUMENT", `NATS user ${twice} is named twice`);
  const lines = ["authorization {", "  users = ["];
  for (const u of users) {
    if (typeof u.password === "string" && u.password.length < 16)
      throw new FarmError("INVALID_ARGUMENT", `NATS user ${u.user}: a password needs at least 16 characters`);
    const password = typeof u.password === "string" ? quote(u.password) : `$${validateEnvName(u.password.env)}`;
    if (u.role.kind === "coordinator") {
      lines.push(`    # ${u.user}: the coordinator, which owns job state: no limits.`);
      lines.push(`    { user: ${quote(u.user)}, password: ${password} }`);
      continue;
    }
    const p = nodePermissions(u.user, u.role.stages);
    lines.push(`    # ${u.user}: a node serving ${u.role.stages.join(", ")}.`);
    lines.push(`    {`);
    lines.push(`      user: ${quote(u.user)}, password: ${password}`);
    lines.push(`      permissions: {`);
    lines.push(`        publish: {`);
    lines.push(`          allow: ${list(p.publish.allow, "          ")}`);
    lines.push(`          deny: ${list(p.publish.deny, "          ")}`);
    lines.push(`        }`);
    lines.push(`        subscribe: { allow: ${list(p.subscribe.allow, "        ")} }`);
    lines.push(`      }`);
    lines.push(`    }`);
  }
  lines.push("  ]", "}");
  return `${lines.join("\n")}\n`;
}

function validateEnvName(name: string): string {
  if (!/^[A-Z_][A-Z0-9_]*$/.test(name))
    throw new FarmError(
      "INVALID_ARGUMENT",
      `environment variable name ${JSON.stringify(name)} must be [A-Z_][A-Z0-9_]*`,
    );
  return name;
}
