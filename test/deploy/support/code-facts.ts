/**
 * What the code and the image recipe say, read from the sources themselves so that a flag or
 * variable added later is checked against deploy/ without anyone updating a list here.
 */
import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { repoRoot } from "../../support/paths.js";

const SOURCE_DIRS = ["coordinator", "shared", "gpu-node"];

function tsFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory() && e.name !== "export") out.push(...tsFiles(p));
    else if (e.isFile() && e.name.endsWith(".ts") && !e.name.endsWith(".d.ts")) out.push(p);
  }
  return out;
}

/** FRAMEFARM_* variables the program reads (`env["X"]`, `process.env["X"]`, `env.X`). */
export function envVarsReadByCode(): Set<string> {
  const names = new Set<string>();
  const pattern = /\benv(?:\[\s*["'](FRAMEFARM_[A-Z0-9_]+)["']\s*\]|\.(FRAMEFARM_[A-Z0-9_]+))/g;
  for (const dir of SOURCE_DIRS) {
    for (const file of tsFiles(path.join(repoRoot(), dir))) {
      for (const m of readFileSync(file, "utf8").matchAll(pattern)) names.add((m[1] ?? m[2])!);
    }
  }
  return names;
}

/** FRAMEFARM_* variables a shell script uses. */
export function envVarsUsedByScript(text: string): Set<string> {
  return new Set([...text.matchAll(/\$\{?(FRAMEFARM_[A-Z0-9_]+)/g)].map((m) => m[1]!));
}

/** Subcommands of the `framefarm` CLI: the keys of COMMANDS in coordinator/cli/main.ts. */
export function cliCommands(): Set<string> {
  const text = readFileSync(path.join(repoRoot(), "coordinator", "cli", "main.ts"), "utf8");
  const block = /const COMMANDS\b.*=\s*\{\n([\s\S]*?)\n\};/.exec(text);
  if (block === null) throw new Error("COMMANDS not found in coordinator/cli/main.ts");
  return new Set([...block[1]!.matchAll(/^\s*(?:"([^"]+)"|([A-Za-z_$][\w$]*))\s*:/gm)].map((m) => (m[1] ?? m[2])!));
}

export function packageJson(): { bin: Record<string, string>; [k: string]: unknown } {
  return JSON.parse(readFileSync(path.join(repoRoot(), "package.json"), "utf8")) as { bin: Record<string, string> };
}

/** Top-level source folders the TypeScript build compiles (tsconfig.json "include"), tests aside. */
export function compiledSourceDirs(): string[] {
  const tsconfig = JSON.parse(readFileSync(path.join(repoRoot(), "tsconfig.json"), "utf8")) as { include: string[] };
  return [...new Set(tsconfig.include.map((p) => p.split("/")[0]!))].filter((d) => d !== "test");
}

export interface DockerStage {
  name: string;
  from: string;
  /** Instructions in order, continuation lines joined: [KEYWORD, rest]. */
  instructions: [string, string][];
}

export function dockerStages(file = path.join(repoRoot(), "deploy", "images", "Dockerfile")): DockerStage[] {
  const lines = readFileSync(file, "utf8")
    .replace(/\\\n/g, " ")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  const stages: DockerStage[] = [];
  for (const line of lines) {
    const m = /^(\w+)\s+(.*)$/.exec(line);
    if (m === null) continue;
    const keyword = m[1]!.toUpperCase();
    if (keyword === "FROM") {
      const f = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(m[2]!);
      if (f === null) throw new Error(`unreadable FROM: ${line}`);
      stages.push({ name: f[2] ?? `stage-${stages.length}`, from: f[1]!, instructions: [] });
    } else if (stages.length > 0) stages.at(-1)!.instructions.push([keyword, m[2]!]);
  }
  return stages;
}

/** The last value of an instruction in a stage or the stages it is built FROM (JSON form parsed). */
export function effective(stages: DockerStage[], stage: string, keyword: string): string[] | null {
  const s = stages.find((x) => x.name === stage);
  if (s === undefined) return null;
  const own = s.instructions.filter(([k]) => k === keyword).at(-1);
  if (own !== undefined) return own[1].startsWith("[") ? (JSON.parse(own[1]) as string[]) : own[1].split(/\s+/);
  return stages.some((x) => x.name === s.from) ? effective(stages, s.from, keyword) : null;
}
