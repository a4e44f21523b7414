#!/usr/bin/env node
/**
 * The framefarm command. Every failure ends with `error [STATUS]: message` on stderr and a non-zero
 * exit code (2 for bad input, 1 otherwise), matching the gRPC status the API would return.
 */
import { FarmError } from "../../shared/errors.js";
import { errorMessage } from "../../shared/shutdown.js";
import { renderCommand } from "./render.js";
import { checkReferenceCommand } from "./check-reference.js";
import { submitCommand, jobsCommand, cancelCommand } from "./submit.js";
import { nodeCommand } from "./node.js";
import { coordinatorCommand } from "./coordinator.js";
import { clusterCommand } from "./cluster.js";
import { setupCommand } from "./setup-cuda.js";
import { natsAuthCommand } from "./nats-auth.js";

const USAGE = `framefarm — FramePack image-to-video render farm

Usage:
  framefarm render --image a.png [--end-image b.png] [--keyframe T:k.png ...] [--lora f.safetensors:W ...] --prompt "..." (--seconds S | --frames N) -o out.mp4|out.webm [--save-frames DIR] [options]
  framefarm render --recipe out.mp4|out.recipe.json --image a.png -o again.mp4   (render a recipe again)
  framefarm check-reference <case.json> [--bundle DIR] [--ep cpu|webgpu|cuda] | [--server HOST:PORT ...]
  framefarm cluster [--port P] [--http-port P] [--nodes N] [--denoise-nodes M] [--bundle DIR] [--tokens FILE] [--operators TENANTS] [--metrics-tenants TENANTS] [--tenant-max-priority P] [--max-queued-per-tenant N] [--max-running-per-tenant N] [--retain-jobs 7d] [--otlp-endpoint URL]
  framefarm coordinator --nats URL [--nats-user U] --s3 HOST:PORT [--port P] [--http-port P] [--bundle DIR] [--tokens FILE] [--operators TENANTS] [--metrics-tenants TENANTS] [--tenant-max-priority P] [--max-queued-per-tenant N] [--max-running-per-tenant N] [--tls-cert PEM --tls-key PEM] [--webhook-secret S --webhook-allow HOST[:PORT],...] [--retain-jobs 7d] [--otlp-endpoint URL]
  framefarm node --nats URL [--nats-user U] --s3 HOST:PORT --stages text,image,vae,denoise|all [--bundle DIR] [--ep EP] [--id ID] [--device NAME] [--warmup WxH,...] [--otlp-endpoint URL]
  framefarm submit --server HOST:PORT --image a.png (--prompt "..." (--seconds S | --frames N) | --recipe FILE) [--wait -o out.mp4|out.webm [--save-frames DIR]] [--webhook URL]
  framefarm jobs --server HOST:PORT
  framefarm cancel --server HOST:PORT ID
  framefarm setup cuda [--from FILE] [--check]   install the CUDA provider for --ep cuda (from npm)
  framefarm nats-auth USER=ROLE ...              the nats-server users block: ROLE coordinator or a node's stage groups
  (client commands also take --token T (FRAMEFARM_TOKEN) and --tls or --ca FILE)

Run \`framefarm <command> --help\` for a command's options.`;

const COMMANDS: Record<string, (args: string[]) => Promise<number>> = {
  render: renderCommand,
  "check-reference": checkReferenceCommand,
  submit: submitCommand,
  jobs: jobsCommand,
  cancel: cancelCommand,
  node: nodeCommand,
  coordinator: coordinatorCommand,
  cluster: clusterCommand,
  setup: setupCommand,
  "nats-auth": natsAuthCommand,
};

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "--help" || command === "-h" || command === "help") {
    process.stdout.write(`${USAGE}\n`);
    return command === undefined ? 2 : 0;
  }
  const run = COMMANDS[command];
  if (run === undefined)
    throw new FarmError("INVALID_ARGUMENT", `unknown command ${JSON.stringify(command)}\n\n${USAGE}`);
  return run(rest);
}

export function reportError(err: unknown): number {
  if (err instanceof FarmError) {
    process.stderr.write(`error [${err.status}]: ${errorMessage(err)}\n`);
    return err.status === "INVALID_ARGUMENT" || err.status === "NOT_FOUND" || err.status === "RESOURCE_EXHAUSTED"
      ? 2
      : 1;
  }
  // parseArgs reports unknown or malformed options with these codes.
  const code = (err as { code?: string }).code;
  if (typeof code === "string" && code.startsWith("ERR_PARSE_ARGS")) {
    process.stderr.write(`error [INVALID_ARGUMENT]: ${(err as Error).message}\n`);
    return 2;
  }
  // Never an empty message: nats.js errors, for one, carry an empty stack ("connection
  // disconnected" printed as `error [INTERNAL]: ` before); such an error is named by its message,
  // type, code or cause.
  const message = errorMessage(err);
  const stack = err instanceof Error && typeof err.stack === "string" ? err.stack : "";
  process.stderr.write(
    `error [INTERNAL]: ${stack.includes(message) ? stack : stack === "" ? message : `${message}\n${stack}`}\n`,
  );
  return 1;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.exitCode = reportError(err);
  },
);
