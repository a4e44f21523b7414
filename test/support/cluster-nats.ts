/**
 * The NATS of a `framefarm cluster` as its operator reaches it: the cluster admits only its users
 * and prints where their credentials are (`NATS users in FILE`); tests watch events and queues as
 * the coordinator's user.
 */
import { readFile } from "node:fs/promises";
import { NatsBus, type NatsCredentials } from "../../shared/bus/nats-bus.js";

/** The path the cluster printed, once its output has it (null before). */
export const natsUsersFileIn = (output: string): string | null => /NATS users in (\S+)/.exec(output)?.[1] ?? null;

/** A user's credentials from the cluster's users file (the coordinator's by default). */
export async function clusterCoordinatorCredentials(usersFile: string, user = "coordinator"): Promise<NatsCredentials> {
  const users = JSON.parse(await readFile(usersFile, "utf8")) as Record<string, { password: string }>;
  const u = users[user];
  if (u === undefined) throw new Error(`${usersFile} has no NATS user ${user}`);
  return { user, password: u.password };
}

export async function connectClusterNats(natsUrl: string, usersFile: string, name = "test"): Promise<NatsBus> {
  return NatsBus.connect(natsUrl, name, 1, { credentials: await clusterCoordinatorCredentials(usersFile) });
}
