/**
 * Durations as operators write them in flags and variables: a whole number and a unit, `30s`,
 * `30m`, `12h`, `7d`; and back to that form for messages.
 */
import { FarmError } from "./errors.js";

const UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/** Milliseconds of `<n>s|m|h|d` (n a positive whole number); INVALID_ARGUMENT naming `what` otherwise. */
export function parseDuration(what: string, text: string): number {
  const m = /^\s*(\d{1,9})\s*([smhd])\s*$/.exec(text);
  const ms = m === null ? NaN : Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS];
  if (!Number.isSafeInteger(ms) || ms <= 0)
    throw new FarmError(
      "INVALID_ARGUMENT",
      `${what} must be a positive whole number with a unit s, m, h or d (30m, 12h, 7d), got ${JSON.stringify(text)}`,
    );
  return ms;
}

/** The largest unit that divides ms exactly: 604800000 -> "7d", 90000 -> "90s". */
export function formatDuration(ms: number): string {
  for (const [unit, size] of Object.entries(UNIT_MS).reverse())
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  return `${ms}ms`;
}
