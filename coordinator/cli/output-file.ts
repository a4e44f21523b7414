/** Writes a user's output file whole or not at all: a partial file is never left at the path. */
import { rename, rm, writeFile } from "node:fs/promises";

export async function writeFileAtomically(out: string, bytes: Uint8Array): Promise<void> {
  const temp = `${out}.${process.pid}.partial`;
  try {
    await writeFile(temp, bytes);
    await rename(temp, out);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
}
