/**
 * The token file, kept current while the coordinator runs: re-read when it changes and on SIGHUP,
 * so tokens are added, rotated and revoked without a restart.
 *
 * The file's directory is watched, not the file: editors save by writing a new file and renaming
 * it over the old one, and Kubernetes swaps a Secret volume's `..data` symlink, and either way a
 * watch on the old file would go quiet. Changes are debounced (an editor's write and rename are one
 * change), and a read whose text is unchanged does nothing. A file that cannot be read or parsed
 * changes nothing: the previous tokens stay in force and the error is logged with the line it names,
 * so a bad edit never locks everyone out.
 */
import { watch, type FSWatcher } from "node:fs";
import { readFile } from "node:fs/promises";
import { createHash } from "node:crypto";
import path from "node:path";
import type { Logger } from "../../shared/log/logger.js";
import { TokenAuth } from "./tokens.js";

/** How long a change must settle before the file is read again. */
export const TOKEN_RELOAD_DEBOUNCE_MS = 250;

export interface TokenFileWatcher {
  /** Reads the file now: true when new tokens took effect, false when unchanged or refused. */
  reload(): Promise<boolean>;
  stop(): void;
}

/**
 * Keeps auth (read from file at start) in step with file. With signal (default SIGHUP; null for
 * none) a signal re-reads it too.
 */
export async function watchTokenFile(
  file: string,
  auth: TokenAuth,
  log: Logger,
  options: { debounceMs?: number; signal?: NodeJS.Signals | null } = {},
): Promise<TokenFileWatcher> {
  const digest = (text: string): string => createHash("sha256").update(text, "utf8").digest("hex");
  let current = digest(await readFile(file, "utf8").catch(() => ""));
  let running: Promise<boolean> = Promise.resolve(false);
  const readOnce = async (): Promise<boolean> => {
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch (err) {
      log.error({ file, err: (err as Error).message }, "token file cannot be read: the previous tokens stay in force");
      return false;
    }
    const d = digest(text);
    if (d === current) return false;
    let next: TokenAuth;
    try {
      next = TokenAuth.parse(text, `token file ${file}`);
    } catch (err) {
      // The message names the line (or the JSON error) and never the token itself.
      log.error({ file, err: (err as Error).message }, "token file refused: the previous tokens stay in force");
      return false;
    }
    auth.replaceWith(next);
    current = d;
    log.info({ file, tenants: next.tenants }, "token file reloaded");
    return true;
  };
  // One read at a time, in order.
  const reload = (): Promise<boolean> => (running = running.then(readOnce, readOnce));

  let timer: NodeJS.Timeout | undefined;
  const soon = (): void => {
    clearTimeout(timer);
    timer = setTimeout(() => void reload(), options.debounceMs ?? TOKEN_RELOAD_DEBOUNCE_MS);
  };
  const dir = path.dirname(path.resolve(file));
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(dir, { persistent: false }, soon);
    watcher.on("error", (err) => log.error({ dir, err: err.message }, "token file watch failed: reload with SIGHUP"));
  } catch (err) {
    log.error({ dir, err: (err as Error).message }, "token file cannot be watched: reload with SIGHUP");
  }
  const signal = options.signal === undefined ? "SIGHUP" : options.signal;
  const onSignal = (): void => {
    log.info({ file, signal }, "re-reading the token file");
    void reload();
  };
  if (signal !== null) process.on(signal, onSignal);
  return {
    reload,
    stop: () => {
      clearTimeout(timer);
      watcher?.close();
      if (signal !== null) process.off(signal, onSignal);
    },
  };
}
