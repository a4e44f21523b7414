"""Puts framefarm's and diffusers' runs of one job side by side: per-stage times, whole-job wall
time and its ratio, peak GPU memory, and the frames compared (max and mean |d| over uint8 RGB,
PSNR). framefarm's frames come from its lossless MP4 (libx264rgb, exact RGB), decoded with the
ffmpeg that framefarm ships (node_modules/@ffmpeg-installer).

  python test/bench/gpu-render/compare.py --dir DIR --mode inverted|vanilla --ffmpeg FFMPEG
     (DIR holds diffusers-<mode>.{json,npy} and framefarm-<mode>.{json,mp4}, framefarm-<mode>-gpu-mem.csv)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess

import numpy as np


def framefarm_stages(tasks):
    """Task log -> the same stage names as diffusers_render.py (encode_text -> text, ...)."""
    out = {}
    for t in tasks:
        name = t["task"]
        m = re.match(r"(?:.*?)(denoise|decode)[^0-9]*(\d+)", name)
        if m:
            key = f"{m.group(1)}[{int(m.group(2))}]"
        elif "text" in name:
            key = "text"
        elif "image" in name and "vae" not in name:
            key = "image"
        elif "vae" in name or "encode_latent" in name:
            key = "vae_encode"
        elif "mux" in name:
            key = "mux"
        else:
            key = name
        out[key] = out.get(key, 0) + t["ms"]
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--mode", required=True)
    p.add_argument("--ffmpeg", required=True)
    a = p.parse_args()
    d = json.load(open(os.path.join(a.dir, f"diffusers-{a.mode}.json")))
    f = json.load(open(os.path.join(a.dir, f"framefarm-{a.mode}.json")))
    ref = np.load(os.path.join(a.dir, f"diffusers-{a.mode}.npy"))
    n, h, w, _ = ref.shape
    raw = subprocess.run([a.ffmpeg, "-v", "error", "-i", os.path.join(a.dir, f"framefarm-{a.mode}.mp4"), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    ours = np.frombuffer(raw, dtype=np.uint8).reshape(-1, h, w, 3)
    k = min(len(ours), n)
    diff = np.abs(ours[:k].astype(np.int16) - ref[:k].astype(np.int16))
    mse = float((diff.astype(np.float64) ** 2).mean())
    mem_csv = os.path.join(a.dir, f"framefarm-{a.mode}-gpu-mem.csv")
    peak = None
    if os.path.exists(mem_csv):
        vals = [int(x) for x in open(mem_csv).read().split() if x.strip().isdigit()]
        peak = (max(vals) - vals[0]) / 1024 if vals else None
    fs = framefarm_stages(f["tasks"])
    ds = d["stages_ms"]
    names = sorted(set(fs) | set(ds), key=lambda s: (["text", "image", "vae_encode"].index(s) if s in ("text", "image", "vae_encode") else 3,
                                                      s.split("[")[0], int(s.split("[")[1][:-1]) if "[" in s else 0))
    rows = [f"| {s} | {ds.get(s, float('nan')):.0f} | {fs.get(s, float('nan')):.0f} |" for s in names]
    ratio = f["jobMs"] / d["job_ms"]
    out = {
        "mode": a.mode, "frames": [int(x) for x in ref.shape], "framefarm_frames": int(len(ours)),
        "diffusers_job_ms": d["job_ms"], "framefarm_job_ms": f["jobMs"], "render_ratio_vs_diffusers": round(ratio, 3),
        "diffusers_load_s": d["load_s"], "framefarm_load_s": round(f["loadMs"] / 1000, 2),
        "diffusers_peak_gpu_gib": d["peak_gpu_gib"], "framefarm_peak_gpu_gib": None if peak is None else round(peak, 2),
        "max_abs_diff": int(diff.max()), "mean_abs_diff": round(float(diff.mean()), 3),
        "psnr_db": round(10 * math.log10(255 ** 2 / mse), 2) if mse > 0 else float("inf"),
    }
    # Where decode and mux time went (task phases), and the cold process (first job, no warm-up).
    phases = {}
    for t in f["tasks"]:
        kind = t["task"].split(".")[1] if "." in t["task"] else t["task"]
        for ph, ms in (t.get("phases") or {}).items():
            phases[f"{kind}.{ph}"] = round(phases.get(f"{kind}.{ph}", 0) + ms)
    out["framefarm_phases_ms"] = phases
    out["framefarm_warmup_s"] = round(f.get("warmupMs", 0) / 1000, 2)
    cold = os.path.join(a.dir, f"framefarm-{a.mode}-cold.json")
    if os.path.exists(cold):
        c = json.load(open(cold))
        out["framefarm_cold_job_ms"] = c["jobMs"]
        out["diffusers_cold_job_ms"] = d.get("cold_job_ms")
        if d.get("cold_job_ms"):
            out["cold_ratio_vs_diffusers"] = round(c["jobMs"] / d["cold_job_ms"], 3)
    table = "\n".join(["| stage | diffusers (ms) | framefarm (ms) |", "|---|---|---|", *rows,
                       f"| whole job | {d['job_ms']:.0f} | {f['jobMs']:.0f} |"])
    json.dump({"summary": out, "table": table}, open(os.path.join(a.dir, f"compare-{a.mode}.json"), "w"), indent=1)
    print(table)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
