"""The diffusers side of the gpu-render benchmark: HunyuanVideoFramepackPipeline on one GPU.

Loads a pipeline folder (framefarm_export.random_pipeline writes one at the real widths), runs one
job with the transformer in bf16 and everything else in fp16, no offloading, and times each stage
the way framefarm's task log splits a job: text encoding, image encoding, VAE encode, each
section's denoise, each VAE decode and the MP4 write. Every timed call is bracketed by
torch.cuda.synchronize(), so a stage's time is its GPU work. Writes OUT/diffusers-<mode>.json and
the frames as OUT/diffusers-<mode>.npy (uint8, [F, H, W, 3]) for compare.py.

  python test/bench/gpu-render/diffusers_render.py --src PIPELINE --out DIR --mode inverted|vanilla
      --image first.png [--end-image last.png] [--frames 97 --steps 25 --height 640 --width 640 --seed 31337]
      [--runs 2]

With --runs N the same job runs N times in one process and the last is reported (the first as
cold_job_ms): the warm figure is what a long-running process (a farm node) sees.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


def timed(record, name, fn):
    def wrapper(*a, **k):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*a, **k)
        torch.cuda.synchronize()
        record.append((name(), (time.perf_counter() - t0) * 1000))
        return out

    return wrapper


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--src", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=["inverted", "vanilla"], required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--end-image")
    p.add_argument("--prompt", default="A lighthouse on a cliff, waves crashing, seagulls circling")
    p.add_argument("--frames", type=int, default=97)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--height", type=int, default=640)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--seed", type=int, default=31337)
    p.add_argument("--guidance", type=float, default=10.0)
    p.add_argument("--runs", type=int, default=1, help="run the job this many times, report the last (warm)")
    p.add_argument("--transformer-dtype", choices=["bf16", "fp16"], default="bf16",
                   help="bf16 as FramePack's users run it; fp16 to compare frames with an fp16 export (random weights amplify bf16 rounding)")
    a = p.parse_args()
    from diffusers import HunyuanVideoFramepackPipeline
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_framepack import FramepackSamplingType
    from PIL import Image

    os.makedirs(a.out, exist_ok=True)
    t0 = time.perf_counter()
    pipe = HunyuanVideoFramepackPipeline.from_pretrained(a.src, torch_dtype=torch.float16)
    pipe.transformer.to(torch.bfloat16 if a.transformer_dtype == "bf16" else torch.float16)
    pipe.to("cuda")
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)
    template = json.load(open(os.path.join(a.src, "framepack_prompt_template.json"), encoding="utf-8"))

    rec: list[tuple[str, float]] = []
    state = {"section": -1, "decode": 0}
    pipe.encode_prompt = timed(rec, lambda: "text", pipe.encode_prompt)
    pipe.encode_image = timed(rec, lambda: "image", pipe.encode_image)
    pipe.prepare_image_latents = timed(rec, lambda: "vae_encode", pipe.prepare_image_latents)
    orig_prepare = pipe.prepare_latents

    def prepare_latents(*args, **kw):
        state["section"] += 1
        return orig_prepare(*args, **kw)

    pipe.prepare_latents = prepare_latents
    pipe.transformer.forward = timed(rec, lambda: f"denoise[{state['section']}]", pipe.transformer.forward)

    def decode_name():
        state["decode"] += 1
        return f"decode[{state['decode'] - 1}]"

    pipe.vae.decode = timed(rec, decode_name, pipe.vae.decode)
    first = Image.open(a.image).convert("RGB")
    last = Image.open(a.end_image).convert("RGB") if a.end_image else None
    sampling = FramepackSamplingType("inverted_anti_drifting" if a.mode == "inverted" else "vanilla")
    cold_job_ms = None
    for run in range(a.runs):
        rec.clear()
        state.update(section=-1, decode=0)
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        t_job = time.perf_counter()
        with torch.no_grad():
            frames = pipe(
                image=first, last_image=last, prompt=a.prompt, height=a.height, width=a.width, num_frames=a.frames,
                num_inference_steps=a.steps, guidance_scale=a.guidance, generator=torch.Generator("cpu").manual_seed(a.seed),
                output_type="np", prompt_template=template, sampling_type=sampling,
            ).frames[0]
        torch.cuda.synchronize()
        pipeline_ms = (time.perf_counter() - t_job) * 1000
        video = (np.asarray(frames) * 255).round().astype(np.uint8)
        t_mux = time.perf_counter()
        # The MP4 written as framefarm's --lossless writes it (libx264rgb, qp 0), by the same ffmpeg.
        import subprocess

        subprocess.run([os.environ["FFMPEG"], "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{video.shape[2]}x{video.shape[1]}",
                        "-r", "30", "-i", "-", "-c:v", "libx264rgb", "-qp", "0", os.path.join(a.out, f"diffusers-{a.mode}.mp4")],
                       input=video.tobytes(), check=True)
        mux_ms = (time.perf_counter() - t_mux) * 1000
        job_ms = (time.perf_counter() - t_job) * 1000
        if run == 0:
            cold_job_ms = job_ms
    stages: dict[str, float] = {}
    for name, ms in rec:
        stages[name] = stages.get(name, 0.0) + ms
    stages["mux"] = mux_ms
    np.save(os.path.join(a.out, f"diffusers-{a.mode}.npy"), video)
    result = {
        "side": "diffusers", "mode": a.mode, "transformer_dtype": a.transformer_dtype, "frames": list(video.shape), "steps": a.steps, "load_s": round(load_s, 2),
        "pipeline_ms": round(pipeline_ms, 1), "job_ms": round(job_ms, 1), "runs": a.runs, "cold_job_ms": round(cold_job_ms, 1), "stages_ms": {k: round(v, 1) for k, v in stages.items()},
        "transformer_calls": sum(1 for n, _ in rec if n.startswith("denoise")),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "torch": torch.__version__, "device": torch.cuda.get_device_name(),
    }
    json.dump(result, open(os.path.join(a.out, f"diffusers-{a.mode}.json"), "w"), indent=1)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
