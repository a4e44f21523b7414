#!/usr/bin/env bash
# Here (the build machine): packs what a GPU benchmark run needs and the repository does not hold
# into .cache/device/ (git-ignored), in parts small enough to carry to a lent GPU machine one at a
# time: a call carries at most 64 MiB together with the tracked tree (~45 MiB with the fixtures), so
# the part size is what the tree leaves, less 1 MiB (PART_MB overrides); parts made for a smaller
# tree are split again:
#   parts/ort-cuda.part-NN   onnxruntime's CUDA provider (npm com.github.asus4.onnxruntime.linux-x64-gpu,
#                            the build of the pinned onnxruntime-node), tar | zstd -19 --long=27
#   parts/runtime.part-NN    this machine's node binary + production node_modules for linux-x64
#                            (no ffprobe), tar | zstd -19 --long=27 (the GPU machine has no node)
#   diffusers.tar.xz         diffusers' src/diffusers from a fetched snapshot (DIFFUSERS_SRC=.../src)
#   nats-server.xz           this machine's nats-server (Debian's, static) for farm benchmarks there
#   tiny-like/               the tiny reference model's tokenizers, template and scheduler (TINY=...)
# test/bench/device/unpack.sh puts them back together there; it prints the part counts to pass it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
out=$repo/.cache/device
# Files moved aside (travel-light.sh) do not travel, so only those present count.
tracked=$(cd "$repo" && { git ls-files -z | xargs -0 stat -c %s 2>/dev/null || true; } | awk '{s += $1} END {print s + 0}')
part_mb=${PART_MB:-$(((64 * 1048576 - tracked) / 1048576 - 1))}
[ "$part_mb" -ge 4 ] || { echo "stage: the tracked tree ($tracked bytes) leaves no room for parts"; exit 1; }
resplit() {  # NAME: parts larger than part_mb are joined and split again
  local big
  big=$(find "$out/parts" -name "$1.part-*" -size +"$((part_mb * 1024))"k | head -1)
  [ -n "$big" ] || return 0
  cat "$out"/parts/"$1".part-* > "$out/$1.joined" && rm "$out"/parts/"$1".part-*
  split -b "${part_mb}M" -d "$out/$1.joined" "$out/parts/$1.part-" && rm "$out/$1.joined"
}
mkdir -p "$out/parts" "$repo/.cache/cuda"
z() { zstd -19 --long=27 -T0 -q -c; }
if ! ls "$out"/parts/ort-cuda.part-* >/dev/null 2>&1; then
  cd "$repo/.cache/cuda"
  tgz=$(ls com.github.asus4.onnxruntime.linux-x64-gpu-0.4.9.tgz 2>/dev/null || npm pack --silent com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9)
  tar -xzf "$tgz" package/Plugins/Linux/x64/
  tar -C package/Plugins/Linux/x64 -cf - libonnxruntime_providers_cuda.so libonnxruntime_providers_shared.so | z \
    | split -b "${part_mb}M" -d - "$out/parts/ort-cuda.part-"
fi
# The runtime follows package-lock.json: parts made from another lock are made again.
lock=$(sha256sum "$repo/package-lock.json" | cut -c1-64)
if [ "$(cat "$out/runtime.lock-sha256" 2>/dev/null)" != "$lock" ]; then rm -f "$out"/parts/runtime.part-*; fi
if ! ls "$out"/parts/runtime.part-* >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  cp "$repo/package.json" "$repo/package-lock.json" "$repo/.npmrc" "$tmp/"
  (cd "$tmp" && npm ci --omit=dev --silent >/dev/null 2>&1)
  rm -rf "$tmp"/node_modules/onnxruntime-node/bin/napi-v6/{darwin,win32,linux/arm64} "$tmp"/node_modules/@ffprobe-installer
  mkdir -p "$tmp/bin" && cp "$(command -v node)" "$tmp/bin/node"
  tar -C "$tmp" -cf - bin node_modules | z | split -b "${part_mb}M" -d - "$out/parts/runtime.part-"
  rm -rf "$tmp"
  echo "$lock" > "$out/runtime.lock-sha256"
fi
resplit ort-cuda
resplit runtime
if [ -n "${DIFFUSERS_SRC:-}" ] && [ ! -f "$out/diffusers.tar.xz" ]; then
  tar -C "$DIFFUSERS_SRC" -cf - diffusers | xz -T0 -6 > "$out/diffusers.tar.xz"
fi
if [ ! -f "$out/nats-server.xz" ] && command -v nats-server >/dev/null; then
  xz -T0 -6 -c "$(command -v nats-server)" > "$out/nats-server.xz"
fi
if [ -n "${TINY:-}" ] && [ ! -d "$out/tiny-like" ]; then
  mkdir -p "$out/tiny-like"
  (cd "$TINY" && cp -r tokenizer tokenizer_2 scheduler feature_extractor model_index.json framepack_prompt_template.json "$out/tiny-like/")
fi
ls -la "$out" "$out/parts"
echo "unpack there with: bash test/bench/device/unpack.sh ort-cuda=$(ls "$out"/parts/ort-cuda.part-* | wc -l) runtime=$(ls "$out"/parts/runtime.part-* | wc -l)"
