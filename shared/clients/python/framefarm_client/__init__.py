"""framefarm's Python client: submit, watch (with progress) and download FramePack videos.

    from framefarm_client import connect, submit, watch, download, progress_text

    with connect("127.0.0.1:PORT") as farm:
        job = submit(farm, "start.png", "A lighthouse on a cliff", seconds=5,
                     loras=[("style.safetensors", 0.8)])   # optional
        watch(farm, job.id, on_progress=lambda e: print(progress_text(e.job)))
        download(farm, job.id, "out.mp4", recipe=True)   # and out.recipe.json beside it

Needs grpcio and protobuf (Debian: python3-grpcio, python3-protobuf) and this folder,
shared/clients/python, on the module path (it holds framefarm_client and the generated framefarm.v1).
"""
from .client import (
    DEFAULT_TIMEOUT_S,
    MODES,
    SAMPLERS,
    UNIPC_VARIANTS,
    VIDEO_FORMATS,
    Farm,
    FarmError,
    JobFailed,
    Lora,
    connect,
    download,
    progress_fraction,
    progress_text,
    recipe_sidecar,
    state_name,
    submit,
    updates,
    watch,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MODES",
    "SAMPLERS",
    "UNIPC_VARIANTS",
    "VIDEO_FORMATS",
    "Farm",
    "FarmError",
    "JobFailed",
    "Lora",
    "connect",
    "download",
    "progress_fraction",
    "progress_text",
    "recipe_sidecar",
    "state_name",
    "submit",
    "updates",
    "watch",
]
