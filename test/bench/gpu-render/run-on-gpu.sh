#!/usr/bin/env bash
# The gpu-render benchmark on a lent GPU machine, step by step (each step fits one call; the work
# folder /tmp/ffdev/work lives while the machine stays warm). Needs test/bench/device/unpack.sh
# to have run (node, node_modules with the CUDA provider, diffusers source) and dist/ built here.
#   run-on-gpu.sh pipeline [DOUBLE SINGLE]   random real-width pipeline + bundle export (fp16, fused attention, CUDA graph
#                                            passes, the step caches' graphs)
#   run-on-gpu.sh pipeline-detached [D S]   the same, detached from the call (log in WORK/pipeline.log), on a copy of the exporter
#   run-on-gpu.sh diffusers-detached OUT     detached from the call: wait for the bundle export, images, then diffusers
#                                            inverted and vanilla into OUT (log in WORK/diffusers.log): the GPU works
#                                            while the CUDA provider's parts are still being carried
#   run-on-gpu.sh chain-detached OUT        detached, from a snapshot of the repository (each call replaces the copy
#                                            there): wait for the export, images, diffusers and framefarm inverted
#                                            (compared), then the step-cache benchmark (1 s, 1 rep), vanilla, and inverted
#                                            again without the decoded-tile cache (log in WORK/chain.log); poll for
#                                            "chain: done" only after checking that WORK exists
#   BLOCKS=D-S (default 2-4): the bundle wait-bundle, framefarm and step-cache use (pipeline D S exports it)
#   run-on-gpu.sh wait-bundle [SECONDS]     until the detached export is complete (exit 0) or failed (exit 1, its log's tail
#                                            printed), at most SECONDS (280): a failed export stops the waiting at once
#   run-on-gpu.sh images                     a start and an end image, 640x640
#   run-on-gpu.sh diffusers MODE OUT         diffusers' pipeline, the job RUNS (2) times in one process, the last reported (MODE inverted|vanilla)
#   run-on-gpu.sh framefarm MODE OUT [BUNDLE]  framefarm render --ep cuda, same job, lossless MP4, task timings, GPU memory;
#                                            WARMUP=off for a cold process (file suffix -cold); SUFFIX=x names the files
#                                            framefarm-MODE-x
#   run-on-gpu.sh compare MODE OUT           the table (compare.py)
#   run-on-gpu.sh step-cache OUT [ARGS]      test/bench/step-cache at 640x640 on the bundle's step-cache graphs: no cache,
#                                            TeaCache, MagCache (ARGS: more step-cache options)
#   run-on-gpu.sh vae OUT                    VAE section decode, PyTorch vs the exported graph and its rewritten form
#                                            (graph_passes: edge Pad as Concat, GroupNorm as ReduceMean), each one's kernels
#   run-on-gpu.sh vae-prep-detached          detached: the VAE benchmark's PyTorch side and graphs (log in WORK/vae-prep.log)
#   run-on-gpu.sh vae-memory OUT [GIB...]    the rewritten decoder's section decode alone, then while another process holds
#                                            each GIB of GPU memory (a job's other sessions hold ~90 GiB beside the VAE)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
source /tmp/ffdev/env.sh
# Each call brings a fresh copy of the repository: link the unpacked node_modules into it again.
[ -e "$repo/node_modules" ] || ln -s /tmp/ffdev/node_modules "$repo/node_modules"
work=/tmp/ffdev/work
mkdir -p "$work"
# pipeline-detached runs the exporter from a snapshot (EXPORTER_SRC), ahead of the repository's copy.
[ -n "${EXPORTER_SRC:-}" ] && export PYTHONPATH=$EXPORTER_SRC:$PYTHONPATH
frames=${FRAMES:-97} steps=${STEPS:-25} size=${SIZE:-640}
# The transformer's depth (double-single blocks) that wait-bundle, framefarm and step-cache use;
# pipeline takes it as its arguments.
blocks=${BLOCKS:-2-4}
step=$1
shift
case "$step" in
  pipeline)
    double=${1:-2} single=${2:-4}
    src=$work/pipeline-$double-$single bundle=$work/bundle-$double-$single
    rm -f "$work/pipeline.failed"
    # A failure leaves pipeline.failed, so that waiters stop at once instead of waiting out their limit.
    [ -f "$src/random-pipeline.json" ] || python3 -m framefarm_export.random_pipeline --like /tmp/ffdev/parts/tiny-like --out "$src" --double "$double" --single "$single" || { touch "$work/pipeline.failed"; exit 1; }
    # The transformer in fp16: the bf16 graph is invalid ONNX at the exported opset (test/bench/gpu-step/RESULTS.md).
    [ -f "$bundle/.complete" ] || python3 -m framefarm_export --src "$src" --out "$bundle" --dtype fp16 --transformer-dtype fp16 --attention fused --cuda-graph-passes --step-cache-graphs || { touch "$work/pipeline.failed"; exit 1; }
    du -sh "$src" "$bundle"
    touch "$bundle/.complete"  # the manifest is written before the split graphs: waiters look for this
    ;;
  pipeline-detached)
    # The repository there is replaced by each call's copy: run on a snapshot of the exporter.
    rm -rf "$work/exporter-src" && cp -r "$repo/gpu-node/export" "$work/exporter-src"
    cp "$0" "$work/exporter-src/run-on-gpu.sh"
    EXPORTER_SRC=$work/exporter-src setsid nohup bash "$work/exporter-src/run-on-gpu.sh" pipeline "$@" \
      > "$work/pipeline.log" 2>&1 < /dev/null &
    echo "pipeline export started, pid $!"
    ;;
  diffusers-detached)
    out=$1 snap=$work/render-src
    rm -rf "$snap" && cp -r "$here" "$snap"
    mkdir -p "$out"
    setsid nohup bash -c "
      bash '$snap/run-on-gpu.sh' wait-bundle 1200 || exit 1
      bash '$snap/run-on-gpu.sh' images
      for m in inverted vanilla; do bash '$snap/run-on-gpu.sh' diffusers \$m '$out'; done
      echo diffusers-detached: done" > "$work/diffusers.log" 2>&1 < /dev/null &
    echo "diffusers runs queued, pid $!"
    ;;
  chain-detached)
    out=$1 snap=$work/snap
    rm -rf "$snap" && mkdir -p "$snap" "$out/step-cache"
    (cd "$repo" && tar --exclude=./.cache --exclude=./node_modules -cf - .) | tar -x -C "$snap"
    s=$snap/test/bench/gpu-render/run-on-gpu.sh
    setsid nohup bash -c "
      bash '$s' wait-bundle 1200 || exit 1
      bash '$s' images
      RUNS=2 bash '$s' diffusers inverted '$out'
      bash '$s' framefarm inverted '$out' && bash '$s' compare inverted '$out'
      echo chain: inverted done
      REPS=1 bash '$s' step-cache '$out/step-cache' --seconds 1
      echo chain: step-cache done
      RUNS=2 bash '$s' diffusers vanilla '$out'
      bash '$s' framefarm vanilla '$out' && bash '$s' compare vanilla '$out'
      echo chain: vanilla done
      FRAMEFARM_DECODE_TILE_CACHE_MB=0 SUFFIX=no-tile-cache bash '$s' framefarm inverted '$out'
      echo chain: done" > "$work/chain.log" 2>&1 < /dev/null &
    echo "chain started, pid $!"
    ;;
  wait-bundle)
    for _ in $(seq 1 "${1:-280}"); do
      [ -f "$work/bundle-$blocks/.complete" ] && exit 0
      [ -f "$work/pipeline.failed" ] && { echo "wait-bundle: the export failed:"; tail -5 "$work/pipeline.log"; exit 1; }
      sleep 1
    done
    echo "wait-bundle: not complete after ${1:-280} s:"; tail -3 "$work/pipeline.log"; exit 1
    ;;
  images)
    python3 - "$work" "$size" <<'PY'
import sys, numpy as np
from PIL import Image
out, s = sys.argv[1], int(sys.argv[2])
for name, seed in (("first", 11), ("last", 12)):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:s, 0:s] / s
    img = np.stack([np.sin(x * rng.uniform(3, 9) + rng.uniform(0, 6)) + 0.3 * np.sin(y * rng.uniform(2, 7)) for _ in range(3)], -1)
    img = ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)
    Image.fromarray(img).save(f"{out}/{name}.png")
PY
    ;;
  diffusers)
    mode=$1 out=$2 end=()
    [ "$mode" = inverted ] && end=(--end-image "$work/last.png")
    FFMPEG=$NODE_PATH/@ffmpeg-installer/linux-x64/ffmpeg python3 "$here/diffusers_render.py" --src "$work/pipeline-2-4" --out "$out" --mode "$mode" --image "$work/first.png" "${end[@]}" \
      --frames "$frames" --steps "$steps" --height "$size" --width "$size" --transformer-dtype "${TRANSFORMER_DTYPE:-bf16}" --runs "${RUNS:-2}"
    ;;
  framefarm)
    mode=$1 out=$2 bundle=${3:-$work/bundle-$blocks} end=() warmup=${WARMUP:-on} name=framefarm-$1${SUFFIX:+-$SUFFIX}
    [ "$mode" = inverted ] && end=(--end-image "$work/last.png")
    [ "$warmup" = off ] && name=$name-cold
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$out/$name-gpu-mem.csv" &
    smi=$!
    node "$repo/dist/coordinator/cli/main.js" render --bundle "$bundle" --ep cuda --warmup "$warmup" --mode "$mode" --image "$work/first.png" "${end[@]}" \
      --prompt "A lighthouse on a cliff, waves crashing, seagulls circling" --frames "$frames" --steps "$steps" --height "$size" --width "$size" \
      --lossless --timings "$out/$name.json" -o "$out/$name.mp4" 2>&1 | tail -5
    rc=${PIPESTATUS[0]}
    kill $smi
    exit $rc
    ;;
  compare)
    mode=$1 out=$2
    python3 "$here/compare.py" --dir "$out" --mode "$mode" --ffmpeg "$NODE_PATH/@ffmpeg-installer/linux-x64/ffmpeg"
    ;;
  step-cache)
    out=$1
    shift
    node "$repo/dist/test/bench/step-cache/main.js" --bundle "$work/bundle-$blocks" --ep cuda --height "$size" --width "$size" \
      --steps "$steps" --seconds 2 --reps "${REPS:-2}" --image "$work/first.png" "$@" 2>&1 | tee "$out/step-cache.log" | tail -30
    ;;
  vae)
    out=$1 gv=$work/gv
    [ -f "$gv/vae.json" ] || python3 "$repo/test/bench/gpu-step/torch_vae.py" --out "$gv" > "$out/torch_vae.log" 2>&1 || { tail -20 "$out/torch_vae.log"; exit 1; }
    [ -f "$gv/vae_decoder_cuda.onnx" ] || python3 -m framefarm_export.graph_passes "$gv/vae_decoder.onnx" "$gv/vae_decoder_cuda.onnx"
    for g in vae_decoder vae_decoder_cuda; do
      node "$repo/dist/test/bench/gpu-step/vae.js" --dir "$gv" --ep cuda --repeat 2 --graph "$gv/$g.onnx" 2>&1 | tail -1
      bash "$repo/test/bench/gpu-step/vae-kernels.sh" "$gv" "$out" "$gv/$g.onnx" | head -14
    done
    cp "$gv"/vae-cuda-*.json "$out/" 2>/dev/null
    ;;
  vae-prep-detached)
    gv=$work/gv snap=$work/vae-src
    # The repository there is replaced by each call's copy: run on a snapshot of what this uses.
    rm -rf "$snap" && mkdir -p "$snap" && (cd "$repo" && tar -cf - gpu-node/export test/bench/gpu-step) | tar -x -C "$snap"
    PYTHONPATH=$snap/gpu-node/export:$snap/test/bench/gpu-step:$PYTHONPATH setsid nohup bash -c "
      python3 '$snap/test/bench/gpu-step/torch_vae.py' --out '$gv' &&
      python3 -m framefarm_export.graph_passes '$gv/vae_decoder.onnx' '$gv/vae_decoder_cuda.onnx' && touch '$gv/.complete'
      echo vae-prep: exit \$?" > "$work/vae-prep.log" 2>&1 < /dev/null &
    echo "vae prep started, pid $!"
    ;;
  vae-memory)
    out=$1 gv=$work/gv
    shift
    for _ in $(seq 1 400); do [ -f "$gv/.complete" ] && break; grep -q "vae-prep: exit [1-9]" "$work/vae-prep.log" && break; sleep 1; done
    [ -f "$gv/.complete" ] || { tail -20 "$work/vae-prep.log"; exit 1; }
    for gib in 0 "$@"; do
      holder=
      if [ "$gib" != 0 ]; then
        python3 -c "import torch, time, sys; x = torch.empty(int(float(sys.argv[1]) * 2**30), dtype=torch.uint8, device='cuda'); x.fill_(1); torch.cuda.synchronize(); print('held', flush=True); time.sleep(3600)" "$gib" > "$work/holder.log" 2>&1 &
        holder=$!
        for _ in $(seq 1 60); do grep -q held "$work/holder.log" && break; sleep 1; done
      fi
      echo "held by another process: $gib GiB; $(nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader)"
      node "$repo/dist/test/bench/gpu-step/vae.js" --dir "$gv" --ep cuda --repeat 2 --graph "$gv/vae_decoder_cuda.onnx" 2>&1 | tail -2 | tee "$out/vae-memory-$gib.log"
      [ -n "$holder" ] && kill "$holder" && wait "$holder" 2>/dev/null
    done
    ;;
  *) echo "unknown step $step"; exit 2 ;;
esac
