/**
 * Preloaded into a measured process (node --import): on exit, writes the process's peak resident
 * memory (getrusage maxRSS, KiB) to the file named by FRAMEFARM_PEAK_RSS_FILE.
 */
import { writeFileSync } from "node:fs";

const file = process.env["FRAMEFARM_PEAK_RSS_FILE"];
if (file !== undefined && file !== "")
  process.on("exit", () => writeFileSync(file, String(process.resourceUsage().maxRSS)));
