/**
 * glibc malloc settings for the node processes the product starts (`framefarm cluster`, the node
 * images; the test farms start theirs the same way).
 *
 * A node's large buffers (decoded objects in its cache, tensors handed to and from onnxruntime,
 * images) are malloc'd. glibc serves a request of M_MMAP_THRESHOLD or more with a mapping of its
 * own, unmapped when freed, but by default raises that threshold to the size of each mapped block
 * freed, up to 32 MiB; past the first few tasks every buffer under 32 MiB comes from the main
 * heap instead, where long-lived ones (the cache's) sit between short-lived ones, and the holes
 * they leave stay resident: free to malloc, never given back. In the soak (test/soak/RESULTS.md)
 * a VAE node's heap held 175 MiB of which 79 MiB was free, and its RSS stepped up by 81 MiB over
 * 22 minutes without a leak; with the threshold fixed at glibc's own starting value (128 KiB, set
 * explicitly, which also turns the raising off) the heap held 34 MiB (8 free), the buffers were
 * mapped (66 MiB in 32 blocks), and RSS stayed about 90 MiB lower and flat.
 *
 * The cost: a buffer of 128 KiB or more is mapped and faulted in afresh every time, so a CPU
 * decode's attention blocks (16 MiB, DEFAULT_ATTENTION_BLOCK_BYTES) spend more system time
 * (test/bench/memory/RESULTS.md measured 38 s against 20 s for blocks above the threshold). An
 * operator who prefers that speed to a flat RSS sets MALLOC_MMAP_THRESHOLD_ (any value wins over
 * this one) in the node's environment.
 */
export const NODE_MALLOC_ENV: Readonly<Record<string, string>> = { MALLOC_MMAP_THRESHOLD_: String(128 * 1024) };

/** A node process's environment: NODE_MALLOC_ENV under what `env` sets. */
export function nodeProcessEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return { ...NODE_MALLOC_ENV, ...env };
}
