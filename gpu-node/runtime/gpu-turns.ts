/**
 * GPU turns (FRAMEFARM_GPU_TURNS): the session workers of one node process take turns on the GPU,
 * one session.run at a time, first come first served, instead of running their kernels at once.
 *
 * Why: on an H200 a VAE decode beside a transformer denoise got far less than the sum of the two
 * alone (test/bench/gpu-render/RESULTS.md, run 5: a decode tile 1.65 s beside the denoise against
 * 0.60 s alone, the denoise 4.9-6.7 s against 4.05 s): both models fill the GPU by themselves,
 * so sharing it only makes their kernels compete. With turns each run has the GPU to itself and
 * the host work around a run (a step's feeds and outputs, a tile's blend) overlaps another's run.
 *
 * A ticket lock over a SharedArrayBuffer: [0] the next ticket, [1] the ticket being served. Taken
 * with Atomics.wait, so only on worker threads (session.run blocks a worker's thread anyway).
 */

const NEXT = 0;
const SERVING = 1;

/** The lock's memory, shared by every session worker of the process (see gpuTurnsBuffer). */
export function newGpuTurns(): SharedArrayBuffer {
  return new SharedArrayBuffer(2 * Int32Array.BYTES_PER_ELEMENT);
}

let processTurns: SharedArrayBuffer | undefined;

/** The process's one lock: a node runs on one GPU, so every session of it takes the same turns. */
export function processGpuTurns(): SharedArrayBuffer {
  processTurns ??= newGpuTurns();
  return processTurns;
}

/**
 * Runs `run` in its turn; returns its result and how long it waited for the turn (ms). The wait
 * blocks the calling thread; the turn is held until `run`'s promise settles (onnxruntime-node's
 * run settles after the native run, which is synchronous, has ended).
 */
export async function inTurn<T>(
  turns: SharedArrayBuffer,
  run: () => Promise<T>,
): Promise<{ result: T; waitedMs: number }> {
  const cells = new Int32Array(turns);
  const started = performance.now();
  const ticket = Atomics.add(cells, NEXT, 1);
  for (;;) {
    const serving = Atomics.load(cells, SERVING);
    if (serving === ticket) break;
    Atomics.wait(cells, SERVING, serving);
  }
  const waitedMs = performance.now() - started;
  try {
    return { result: await run(), waitedMs };
  } finally {
    Atomics.add(cells, SERVING, 1);
    Atomics.notify(cells, SERVING);
  }
}

/**
 * FRAMEFARM_GPU_TURNS: "1" makes a GPU node's session workers take turns (above), "0" lets their
 * runs overlap; unset: overlap (the default until the H200 says otherwise). Only with session
 * workers on a GPU provider: on the node's thread runs take turns already, and on the CPU provider
 * overlapping runs share cores, not a GPU.
 */
export function gpuTurnsFromEnv(ep: string, env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env["FRAMEFARM_GPU_TURNS"];
  if (v === undefined || v === "") return false;
  if (v === "1" || v === "0") return v === "1" && ep !== "cpu";
  throw new RangeError(`FRAMEFARM_GPU_TURNS must be 0 or 1, got ${JSON.stringify(v)}`);
}
