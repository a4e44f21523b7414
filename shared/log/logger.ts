/**
 * Structured logs: one JSON line per event on stderr (stdout belongs to command output), through
 * pino. Components bind their ids once (node, job, task, section) so every line carries them.
 * FRAMEFARM_LOG_LEVEL picks the level (default info; "silent" turns logging off).
 */
import { pino, type Logger } from "pino";

export type { Logger };

export function createLogger(component: string, bindings: Record<string, unknown> = {}): Logger {
  return pino(
    { level: process.env["FRAMEFARM_LOG_LEVEL"] ?? "info", base: { component, ...bindings } },
    pino.destination({ fd: 2, sync: false }),
  );
}

/** A logger that writes nothing (library use and tests that do not look at logs). */
export const silentLogger = (): Logger => pino({ level: "silent" });
