/**
 * `framefarm nats-auth USER=ROLE ...`: prints the nats-server `authorization` block that gives
 * each user its part of the farm and no more (shared/farm/nats-permissions.ts). ROLE is
 * `coordinator` or a node's stage groups (`text,image,vae`, `denoise`, `all`, as `node --stages`).
 * Passwords are not in it: nats-server reads each from its environment, NATS_PASSWORD_<USER>
 * (upper case, `-` as `_`). deploy/k8s/base/nats-auth.conf is this command's output.
 */
import { parseArgs } from "node:util";
import { FarmError } from "../../shared/errors.js";
import { natsAuthorizationConfig, natsPasswordEnv, type NatsUser } from "../../shared/farm/nats-permissions.js";
import { parseStages } from "../../gpu-node/main.js";

const HELP = `framefarm nats-auth USER=ROLE ... — the nats-server authorization block for the farm's users

  ROLE is coordinator (every right: it owns job state) or a node's stage groups as --stages takes
  them (text,image,vae | denoise | all ...): the node may pull those stages' queues, publish
  results, read job state and heartbeat, nothing else. Each password comes from the server's
  environment variable NATS_PASSWORD_<USER> (upper case, - as _). Example:
    framefarm nats-auth coordinator=coordinator node-encode=text,image,vae node-denoise=denoise`;

/** USER=ROLE arguments as the farm's users, passwords from the server's environment. */
export function natsUsersFromArgs(specs: readonly string[]): NatsUser[] {
  return specs.map((spec) => {
    const m = /^([^=]+)=(.+)$/.exec(spec);
    if (m === null) throw new FarmError("INVALID_ARGUMENT", `expected USER=ROLE, got ${JSON.stringify(spec)}`);
    const [, user, role] = m as unknown as [string, string, string];
    return {
      user,
      password: { env: natsPasswordEnv(user) },
      role: role === "coordinator" ? { kind: "coordinator" } : { kind: "node", stages: parseStages(role) },
    };
  });
}

export function natsAuthCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    strict: true,
    allowPositionals: true,
    options: { help: { type: "boolean", short: "h" } },
  });
  if (values.help === true || positionals.length === 0) {
    process.stdout.write(`${HELP}\n`);
    return Promise.resolve(values.help === true ? 0 : 2);
  }
  process.stdout.write(natsAuthorizationConfig(natsUsersFromArgs(positionals)));
  return Promise.resolve(0);
}
