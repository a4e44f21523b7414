#!/usr/bin/env bash
# Here (the build machine): moves the tracked files a GPU run does not need (reference cases,
# UniPC and VAE-tiling fixtures, committed screenshots: ~45 MB) into .cache/device/aside (ignored,
# so it does not travel) and back. With them aside the tree that travels is ~9 MB, parts can be
# 24 MiB (PART_MB=24 bash stage.sh) and two go in each call: the CUDA provider and the runtime
# arrive in 5 calls instead of 20. Put them back before testing or committing.
#   travel-light.sh aside | back
set -euo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
aside=$repo/.cache/device/aside
paths=(test/fixtures/reference-cases test/fixtures/unipc test/fixtures/vae-tiling test-output)
case "${1:-}" in
  aside)
    mkdir -p "$aside"
    for p in "${paths[@]}"; do
      [ -e "$repo/$p" ] || continue
      mkdir -p "$aside/$(dirname "$p")" && mv "$repo/$p" "$aside/$p"
    done
    echo "aside: $(du -sh "$aside" | cut -f1); put back with: $0 back"
    ;;
  back)
    for p in "${paths[@]}"; do
      [ -e "$aside/$p" ] || continue
      [ -e "$repo/$p" ] && { echo "travel-light: $p exists in the tree; left $aside/$p as it is"; continue; }
      mv "$aside/$p" "$repo/$p"
    done
    git -C "$repo" status --short -- "${paths[@]}" | head -5
    ;;
  *) echo "usage: travel-light.sh aside | back"; exit 2 ;;
esac
