#!/usr/bin/env python3
"""Renders a video on a framefarm farm from Python: submit, watch with a progress line, download.

    python3 shared/clients/python/example.py --server 127.0.0.1:PORT --image start.png \
        --prompt "A lighthouse on a cliff" --seconds 2 [--sampler unipc] [--cache teacache|magcache] [--format webm] \
        [--keyframe 1.5:key.png ...] -o out.mp4
    python3 shared/clients/python/example.py --server 127.0.0.1:PORT --image start.png \
        --recipe out.recipe.json -o again.mp4
    python3 shared/clients/python/example.py --server 127.0.0.1:PORT --video in.mp4 [--context-frames 5] \
        --mode vanilla --prompt "The lighthouse keeps turning" --seconds 2 -o longer.mp4

Writes the video and its recipe beside it (out.mp4 -> out.recipe.json); --recipe FILE renders
such a recipe again (same image and keyframes; the recipe sets the prompt, length and settings). Prints the job
id on stdout and progress on stderr; exits 1 with `error: STATUS: message` (or `error: message`
for a bad argument) when a call or the job fails. --token (or FRAMEFARM_TOKEN), --tls and --ca
FILE as for `framefarm submit`.
"""
import argparse
import sys

from framefarm_client import (SAMPLERS, UNIPC_VARIANTS, VIDEO_FORMATS, FarmError, connect, download,
                              progress_text, recipe_sidecar, submit, watch)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", help="HOST:PORT of the coordinator (default: $FRAMEFARM_SERVER)")
    ap.add_argument("--token", help="bearer token (default: $FRAMEFARM_TOKEN)")
    ap.add_argument("--tls", action="store_true", help="TLS with the system's CAs")
    ap.add_argument("--ca", help="TLS with this CA or self-signed certificate (PEM)")
    ap.add_argument("--timeout", type=float, default=60.0, help="deadline of each unary call, seconds")
    start = ap.add_mutually_exclusive_group(required=True)
    start.add_argument("--image")
    start.add_argument("--video", help="a video to extend instead of --image")
    ap.add_argument("--context-frames", type=int, help="with --video: Studio's context frames, 2 to 10 (default 5)")
    ap.add_argument("--end-image")
    ap.add_argument("--keyframe", action="append", metavar="TIME:PATH",
                    help="an image the video passes through at TIME seconds (repeat, in time order; inverted mode)")
    ap.add_argument("--prompt", help="required unless --recipe")
    length = ap.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float)
    length.add_argument("--frames", type=int)
    ap.add_argument("--mode", choices=["inverted", "vanilla"])
    ap.add_argument("--steps", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--resolution", type=int)
    ap.add_argument("--sampler", choices=list(SAMPLERS), help="default flow_match_euler")
    ap.add_argument("--unipc-variant", choices=list(UNIPC_VARIANTS), help="with --sampler unipc")
    ap.add_argument("--cfg-rescale", type=float, help="0 to 1, with --sampler unipc")
    ap.add_argument("--cache", choices=["none", "teacache", "magcache"],
                    help="teacache: lllyasviel's TeaCache; magcache: MagCache as FramePack-Studio (default none)")
    ap.add_argument("--cache-threshold", type=float, help="the cache's threshold in (0, 1], default 0.15 (teacache), 0.1 (magcache)")
    ap.add_argument("--magcache-k", type=int, help="MagCache's max consecutive skips, default 2")
    ap.add_argument("--magcache-retention", type=float, help="MagCache's retention ratio, 0 to 1, default 0.25")
    ap.add_argument("--vae-tiling", action="store_true", default=None,
                    help="decode in 256-pixel tiles (diffusers' vae.enable_tiling()): lower peak GPU memory, slightly different frames")
    ap.add_argument("--format", choices=list(VIDEO_FORMATS), help="default mp4 (or the recipe's)")
    ap.add_argument("--recipe", metavar="FILE", help="render this .recipe.json again (no --prompt or length)")
    ap.add_argument("--webhook-url", help="where the farm POSTs the job's events")
    ap.add_argument("-o", "--output", required=True, help="where to write the video (and its .recipe.json)")
    args = ap.parse_args()

    last_line = ""

    def show(event) -> None:  # type: ignore[no-untyped-def]
        nonlocal last_line
        line = progress_text(event.job)
        if line != last_line:
            last_line = line
            print(line, file=sys.stderr, flush=True)

    try:
        keyframes = None
        if args.keyframe:
            keyframes = []
            for flag in args.keyframe:
                time, sep, path = flag.partition(":")
                if not sep or not path:
                    raise ValueError(f"--keyframe must be TIME:PATH, got {flag!r}")
                keyframes.append((float(time.strip().removesuffix("s")), path))
        recipe = None
        if args.recipe is not None:
            with open(args.recipe, encoding="utf-8") as f:
                recipe = f.read()
        with connect(args.server, token=args.token, tls=args.tls, ca_file=args.ca, timeout=args.timeout) as farm:
            job = submit(farm, args.image, args.prompt, seconds=args.seconds, frames=args.frames,
                         end_image=args.end_image, keyframes=keyframes, mode=args.mode, steps=args.steps, seed=args.seed,
                         resolution=args.resolution, sampler=args.sampler, unipc_variant=args.unipc_variant,
                         cfg_rescale=args.cfg_rescale, cache=args.cache, cache_threshold=args.cache_threshold,
                         magcache_k=args.magcache_k, magcache_retention=args.magcache_retention,
                         vae_tiling=args.vae_tiling, video_format=args.format, recipe=recipe,
                         webhook_url=args.webhook_url, video=args.video, context_frames=args.context_frames)
            print(job.id, flush=True)
            watch(farm, job.id, on_progress=show)
            done = download(farm, job.id, args.output, recipe=True)
            print(f"wrote {args.output}: {done.width}x{done.height}, {done.num_frames} frames requested"
                  f" (recipe: {recipe_sidecar(args.output)})", file=sys.stderr)
        return 0
    except (FarmError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
