/**
 * glibc malloc settings for the node processes the product starts (`framefarm cluster`, the node
 * images; the test farms start theirs the same way).
 *
 * A node's large buffers (decoded objects in its cache, tensors handed to and from onnxruntime,
 * images) are malloc'd. glibc serves a request of M_MMAP_THRESHOLD or more with a mapping of its
 * own, unmapped when freed, but by default raises that threshold to the size of each mapped block
 * freed, up to 32 MiB; past the first few tasks every buffer under 32 MiB comes from the main
 * heap instead, where long-lived ones (the cache's) sit between short-lived ones, and the holes
 * they leave stay resident: free to malloc, never given back. Soak run 3 (test/soak/RESULTS.md)
 * saw a VAE node's RSS step up by 81 MiB over 22 minutes; in a shorter soak a VAE node's heap
 * held 175 MiB of which 79 MiB was free, while what malloc had in use (about 95 MiB, the cache's
 * 64 MiB included) did not grow: no leak. With the threshold fixed at glibc's own starting value
 * (128 KiB, set explicitly, which also turns the raising off) the other VAE node of that soak had
 * 34 MiB of heap (8 free) and its large buffers mapped on their own (66 MiB in 32 blocks), and
 * an RSS about 90 MiB lower.
 *
 * The cost: a buffer of 128 KiB or more is mapped and faulted in afresh every time. An embedded
 * CPU render at 384 (1 s, 1 step; tiny bundle, 2 shared cores, two runs each) took 5.7 s of system
 * time instead of 3.0, and 23-26 s of wall time instead of 22-24, with its peak RSS 0.99 GiB
 * instead of 1.21-1.47. An operator who prefers the speed sets MALLOC_MMAP_THRESHOLD_ in the
 * node's environment (any value wins over this one).
 */
export const NODE_MALLOC_ENV: Readonly<Record<string, string>> = { MALLOC_MMAP_THRESHOLD_: String(128 * 1024) };

/** A node process's environment: NODE_MALLOC_ENV under what `env` sets. */
export function nodeProcessEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return { ...NODE_MALLOC_ENV, ...env };
}
