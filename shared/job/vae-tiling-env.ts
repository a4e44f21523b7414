/**
 * FRAMEFARM_VAE_TILING, which once switched spatial VAE tiling on for every decode a process ran.
 * Tiling changes the frames, so it is now a job option (RenderParams.vaeTiling, recorded in the
 * recipe). The variable is kept only where one process is the whole farm: `framefarm render`
 * takes it as its --vae-tiling flag's default (the recipe then records what was used). A farm node
 * (and `cluster`, whose nodes inherit its environment) refuses to start with it set, rather than
 * ignore it: an operator who set it to save memory would otherwise believe the node tiles.
 */
import { FarmError } from "../errors.js";

export const VAE_TILING_ENV = "FRAMEFARM_VAE_TILING";

/** `render`'s --vae-tiling default: "1" on, "0" or unset off; anything else is refused, not guessed. */
export function vaeTilingFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env[VAE_TILING_ENV];
  if (v === undefined || v === "" || v === "0") return false;
  if (v === "1") return true;
  throw new FarmError("INVALID_ARGUMENT", `${VAE_TILING_ENV} must be 0 or 1, got ${JSON.stringify(v)}`);
}

/** A node's start: FAILED_PRECONDITION when the variable is set at all (any value: none has an effect there). */
export function refuseNodeVaeTiling(env: NodeJS.ProcessEnv = process.env): void {
  const v = env[VAE_TILING_ENV];
  if (v === undefined || v === "") return;
  throw new FarmError(
    "FAILED_PRECONDITION",
    `${VAE_TILING_ENV}=${JSON.stringify(v)} is set, but VAE tiling is no longer a node setting: it is a job option (render/submit --vae-tiling, RenderSettings.vae_tiling), so that a job's frames do not depend on the node that decodes them; unset ${VAE_TILING_ENV} on farm nodes`,
  );
}
