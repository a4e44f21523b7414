#!/usr/bin/env python3
"""Renders a video on a framefarm farm from Python: submit, watch with a progress line, download.

    python3 shared/clients/python/example.py --server 127.0.0.1:PORT --image start.png \
        --prompt "A lighthouse on a cliff" --seconds 2 -o out.mp4

Prints the job id on stdout and progress on stderr; exits 1 with `error: STATUS: message` when a
call or the job fails. --token (or FRAMEFARM_TOKEN), --tls and --ca FILE as for `framefarm submit`.
"""
import argparse
import sys

from framefarm_client import FarmError, connect, download, progress_text, submit, watch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", help="HOST:PORT of the coordinator (default: $FRAMEFARM_SERVER)")
    ap.add_argument("--token", help="bearer token (default: $FRAMEFARM_TOKEN)")
    ap.add_argument("--tls", action="store_true", help="TLS with the system's CAs")
    ap.add_argument("--ca", help="TLS with this CA or self-signed certificate (PEM)")
    ap.add_argument("--timeout", type=float, default=60.0, help="deadline of each unary call, seconds")
    ap.add_argument("--image", required=True)
    ap.add_argument("--end-image")
    ap.add_argument("--prompt", required=True)
    length = ap.add_mutually_exclusive_group(required=True)
    length.add_argument("--seconds", type=float)
    length.add_argument("--frames", type=int)
    ap.add_argument("--mode", choices=["inverted", "vanilla"])
    ap.add_argument("--steps", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--resolution", type=int)
    ap.add_argument("-o", "--output", required=True, help="where to write the MP4")
    args = ap.parse_args()

    last_line = ""

    def show(event) -> None:  # type: ignore[no-untyped-def]
        nonlocal last_line
        line = progress_text(event.job)
        if line != last_line:
            last_line = line
            print(line, file=sys.stderr, flush=True)

    try:
        with connect(args.server, token=args.token, tls=args.tls, ca_file=args.ca, timeout=args.timeout) as farm:
            job = submit(farm, args.image, args.prompt, seconds=args.seconds, frames=args.frames,
                         end_image=args.end_image, mode=args.mode, steps=args.steps, seed=args.seed,
                         resolution=args.resolution)
            print(job.id, flush=True)
            watch(farm, job.id, on_progress=show)
            done = download(farm, job.id, args.output)
            print(f"wrote {args.output}: {done.width}x{done.height}, {done.num_frames} frames requested", file=sys.stderr)
        return 0
    except (FarmError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
