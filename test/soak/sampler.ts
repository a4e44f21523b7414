/**
 * One sample of a farm's footprint, as an operator would read it from outside: each process's
 * resident memory (/proc/PID/status VmRSS), every JetStream stream's messages and bytes (the stage
 * queues FF_Q_* and the KV buckets KV_*), the object store's objects and bytes (an S3 listing of the
 * bucket), and the disk the NATS and S3 servers use (du).
 */
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { promisify } from "node:util";
import type { JetStreamManager } from "@nats-io/jetstream";
import type { Client as MinioClient } from "minio";

const run = promisify(execFile);
const MiB = 1024 * 1024;

export interface Probe {
  /** Process name -> pid, for the processes running now. */
  pids: () => Record<string, number | undefined>;
  jsm: JetStreamManager;
  s3: MinioClient;
  bucket: string;
  /** Name -> folder whose disk use is sampled. */
  dirs: Record<string, string>;
}

/** Resident memory in MiB, or undefined if the process is not running. */
async function rssMiB(pid: number | undefined): Promise<number | undefined> {
  if (pid === undefined) return undefined;
  try {
    const status = await readFile(`/proc/${pid}/status`, "utf8");
    const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    return kb === null ? undefined : Number(kb[1]) / 1024;
  } catch {
    return undefined; // exited between listing and reading (a node being restarted)
  }
}

async function duMiB(dir: string): Promise<number> {
  // A file removed while du walks (a job's objects expiring) fails du, which still prints the total.
  const { stdout } = await run("du", ["-sk", dir]).catch((err: { stdout?: string }) => ({ stdout: err.stdout ?? "" }));
  const kib = Number(stdout.split("\t")[0]);
  if (!Number.isFinite(kib) || stdout === "") throw new Error(`du -sk ${dir} printed no total`);
  return kib / 1024;
}

async function objects(s3: MinioClient, bucket: string): Promise<{ count: number; bytes: number }> {
  let count = 0;
  let bytes = 0;
  for await (const item of s3.listObjectsV2(bucket, "", true)) {
    const size = (item as { size?: number }).size;
    if (size === undefined) continue;
    count++;
    bytes += size;
  }
  return { count, bytes };
}

/** The footprint now, as series name -> value (names are `<kind>.<what>`; kinds end in _mib for MiB). */
export async function takeSample(p: Probe): Promise<Record<string, number>> {
  const values: Record<string, number> = {};
  for (const [name, pid] of Object.entries(p.pids())) {
    const rss = await rssMiB(pid);
    if (rss !== undefined) values[`rss_mib.${name}`] = rss;
  }
  for await (const s of p.jsm.streams.list()) {
    values[`stream_msgs.${s.config.name}`] = s.state.messages;
    values[`stream_mib.${s.config.name}`] = s.state.bytes / MiB;
  }
  const o = await objects(p.s3, p.bucket);
  values["objects_count.store"] = o.count;
  values["objects_mib.store"] = o.bytes / MiB;
  for (const [name, dir] of Object.entries(p.dirs)) values[`disk_mib.${name}`] = await duMiB(dir);
  return values;
}
