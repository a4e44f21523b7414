"""Submit a FramePack job to a framefarm coordinator, watch its progress, download its MP4.

The calls are JobService's (proto/framefarm/v1/jobs.proto), through the stubs `npm run proto`
generates into framefarm/v1/ (never edited by hand), on grpcio and protobuf. Like the `framefarm`
CLI, every unary call has a deadline (`timeout`, default 60 s) and a token is sent as
`authorization: Bearer <token>` metadata; the watch stream has no deadline.
"""
from __future__ import annotations

import json
import os
import re
import urllib.request
import uuid
import warnings
from typing import Callable, Iterator, Optional, Sequence, Tuple, Union

import grpc

from framefarm.v1 import jobs_pb2, jobs_pb2_grpc

DEFAULT_TIMEOUT_S = 60.0
# The coordinator takes requests up to 110 MiB (all images inline, each at most 50 MiB, and the settings).
MAX_REQUEST_BYTES = 110 * 1024 * 1024

ImageLike = Union[str, "os.PathLike[str]", bytes, jobs_pb2.ImageInput]
VideoLike = Union[str, "os.PathLike[str]", bytes, jobs_pb2.VideoInput]

MODES = {
    "inverted": jobs_pb2.SAMPLING_MODE_INVERTED_ANTI_DRIFTING,
    "vanilla": jobs_pb2.SAMPLING_MODE_VANILLA,
}

SAMPLERS = {
    "flow_match_euler": jobs_pb2.SAMPLER_FLOW_MATCH_EULER,
    "unipc": jobs_pb2.SAMPLER_UNIPC,
}

UNIPC_VARIANTS = {
    "bh1": jobs_pb2.UNIPC_VARIANT_BH1,
    "bh2": jobs_pb2.UNIPC_VARIANT_BH2,
}

VIDEO_FORMATS = {
    "mp4": jobs_pb2.VIDEO_FORMAT_MP4,
    "webm": jobs_pb2.VIDEO_FORMAT_WEBM,
}

# The prompt-blend limit the coordinator enforces (shared/job/render-params.ts).
MAX_BLEND_SECTIONS = 32

_LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?$")


class FarmError(Exception):
    """A failed call or job: `status` is the gRPC status name (NOT_FOUND, INVALID_ARGUMENT, ...)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class JobFailed(FarmError):
    """The job ended FAILED or CANCELLED; `job` is its last state."""

    def __init__(self, job: jobs_pb2.Job) -> None:
        state = state_name(job.state)
        status = job.error_status or ("CANCELLED" if job.state == jobs_pb2.JOB_STATE_CANCELLED else "INTERNAL")
        super().__init__(status, f"job {job.id} ended {state}" + (f": {job.error}" if job.error else ""))
        self.job = job


def state_name(state: int) -> str:
    """QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED."""
    return jobs_pb2.JobState.Name(state).replace("JOB_STATE_", "")


def _farm_error(err: grpc.RpcError) -> FarmError:
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    return FarmError(code.name if code is not None else "UNAVAILABLE", details or str(err))


class Farm:
    """A connection to a coordinator's gRPC API. Use `connect()`; close it (or use `with`) when done."""

    def __init__(self, address: str, *, token: Optional[str] = None, tls: bool = False,
                 ca_file: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        options = [("grpc.max_send_message_length", MAX_REQUEST_BYTES)]
        tls = tls or ca_file is not None
        if tls:
            root = None
            if ca_file is not None:
                with open(ca_file, "rb") as f:
                    root = f.read()
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=root), options)
        else:
            if token and not _LOOPBACK.match(address):
                warnings.warn(f"sending the token to {address} without TLS (pass tls=True or ca_file)", stacklevel=3)
            self.channel = grpc.insecure_channel(address, options)
        self.address = address
        self.stub = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def unary(self, method: Callable, request):  # type: ignore[no-untyped-def]
        """One unary JobService call with the deadline and token; gRPC errors become FarmError."""
        try:
            return method(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as err:
            raise _farm_error(err) from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Farm":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(address: Optional[str] = None, *, token: Optional[str] = None, tls: bool = False,
            ca_file: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT_S) -> Farm:
    """A Farm at HOST:PORT (default: $FRAMEFARM_SERVER), with a token (default: $FRAMEFARM_TOKEN)."""
    address = address or os.environ.get("FRAMEFARM_SERVER")
    if not address:
        raise ValueError("the farm's address HOST:PORT is required (or set FRAMEFARM_SERVER)")
    if token is None:
        token = os.environ.get("FRAMEFARM_TOKEN") or None
    return Farm(address, token=token, tls=tls, ca_file=ca_file, timeout=timeout)


def _image(image: ImageLike) -> jobs_pb2.ImageInput:
    """An inline image from a file or bytes; an ImageInput as given (e.g. object_key='uploads/...')."""
    if isinstance(image, jobs_pb2.ImageInput):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return jobs_pb2.ImageInput(data=bytes(image))
    with open(image, "rb") as f:
        return jobs_pb2.ImageInput(data=f.read())


def _video(video: VideoLike) -> jobs_pb2.VideoInput:
    """An inline video from a file or bytes; a VideoInput as given (e.g. object_key='uploads/...')."""
    if isinstance(video, jobs_pb2.VideoInput):
        return video
    if isinstance(video, (bytes, bytearray, memoryview)):
        return jobs_pb2.VideoInput(data=bytes(video))
    with open(video, "rb") as f:
        return jobs_pb2.VideoInput(data=f.read())


def _keyframes(keyframes: Sequence[Tuple[float, ImageLike]]) -> list:
    """Keyframe messages from (seconds, image) pairs, in the order given (the farm wants time order)."""
    if isinstance(keyframes, (str, bytes)) or not isinstance(keyframes, Sequence):
        raise ValueError("keyframes must be a list of (seconds, image) pairs")
    out = []
    for i, pair in enumerate(keyframes):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"keyframe {i + 1} must be a (seconds, image) pair, got {pair!r}")
        seconds, image = pair
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise ValueError(f"keyframe {i + 1}'s time must be a number of seconds, got {seconds!r}")
        out.append(jobs_pb2.Keyframe(time_seconds=seconds, image=_image(image)))
    return out


def _choice(name: str, value: str, table: dict) -> int:
    if not isinstance(value, str) or value.lower() not in table:
        raise ValueError(f"{name} must be one of {', '.join(table)}, got {value!r}")
    return table[value.lower()]


def _check_recipe(recipe: Union[str, bytes]) -> str:
    """The recipe's JSON text, checked to be a framefarm recipe (the farm checks the rest)."""
    if isinstance(recipe, (bytes, bytearray)):
        try:
            recipe = bytes(recipe).decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"the recipe is not UTF-8 text: {err}") from None
    if not isinstance(recipe, str):
        raise ValueError(f"recipe must be the recipe's JSON text, got {type(recipe).__name__}")
    try:
        parsed = json.loads(recipe)
    except json.JSONDecodeError as err:
        raise ValueError(f"the recipe is not JSON: {err}") from None
    if not isinstance(parsed, dict) or parsed.get("format") != "framefarm-recipe":
        raise ValueError('the recipe is not a framefarm recipe (its "format" must be "framefarm-recipe")')
    return recipe


def submit(farm: Farm, image: Optional[ImageLike], prompt: Optional[str] = None, *, seconds: Optional[float] = None,
           frames: Optional[int] = None, end_image: Optional[ImageLike] = None,
           keyframes: Optional[Sequence[Tuple[float, ImageLike]]] = None, mode: Optional[str] = None,
           negative_prompt: Optional[str] = None, steps: Optional[int] = None,
           guidance_scale: Optional[float] = None, true_cfg_scale: Optional[float] = None,
           seed: Optional[int] = None, latent_window_size: Optional[int] = None,
           resolution: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
           fps: Optional[float] = None, crf: Optional[int] = None, lossless: Optional[bool] = None,
           sampler: Optional[str] = None, unipc_variant: Optional[str] = None,
           cfg_rescale: Optional[float] = None, cache: Optional[str] = None,
           cache_threshold: Optional[float] = None, magcache_k: Optional[int] = None,
           magcache_retention: Optional[float] = None, section_prompts: Optional[Sequence[str]] = None,
           blend_sections: Optional[int] = None, vae_tiling: Optional[bool] = None,
           video_format: Optional[str] = None,
           save_frames: Optional[bool] = None, recipe: Optional[Union[str, bytes]] = None,
           webhook_url: Optional[str] = None, video: Optional[VideoLike] = None,
           context_frames: Optional[int] = None, bundle: str = "", priority: int = 0,
           idempotency_key: str = "") -> jobs_pb2.Job:
    """Queues a video of `seconds` (or `frames`) from `image` and returns the new job.

    video (instead of image, which is then None): a video to extend; the new job's video is its
    frames followed by `seconds` (or `frames`) more, joined by a cross-fade (vanilla mode continues
    it; inverted mode with end_image runs toward that image). context_frames: FramePack-Studio's
    context frames, 2 to 10 (default 5), only with a video. fps defaults to the video's.

    Settings left out are the farm's defaults; the coordinator validates them all and answers
    INVALID_ARGUMENT naming the one that is off. With an idempotency key a repeated submission
    returns the first job.

    sampler: "flow_match_euler" (default) or "unipc" (lllyasviel's demo), which alone takes
    unipc_variant ("bh1" default, "bh2") and cfg_rescale (0 to 1). cache: "none" (default) or
    "teacache" (lllyasviel's TeaCache: skips the transformer's blocks on steps whose input barely
    changed), with cache_threshold in (0, 1] (default 0.15), or "magcache" (MagCache as
    FramePack-Studio runs it), with cache_threshold (default 0.1), magcache_k (max consecutive
    skips, default 2) and magcache_retention (0 to 1, default 0.25). section_prompts: one prompt per
    section instead of `prompt`; blend_sections: sections over which prompt changes are blended
    (with section prompts or a timed prompt "[0s: ...] [2s: ...]"). vae_tiling: decode in 256-pixel
    tiles as diffusers' vae.enable_tiling() does (lower peak GPU memory, slightly different frames;
    default False, recorded in the recipe). video_format: "mp4" or "webm";
    save_frames: also keep every frame as PNG (the job's frames_url). webhook_url: where the farm
    POSTs the job's events (a host the operator allows). keyframes: (seconds, image) pairs in time
    order, at most one per section, inverted mode only: images the video passes through
    (FramePack-eichi's section keyframes; the farm checks times and images).

    recipe: a recipe's JSON text (a finished job's recipe, see `download(..., recipe=True)`) to
    render again from the same image(s), keyframes included; the recipe sets everything else, so
    give no prompt, length or render setting, only video_format, crf, lossless and save_frames.
    """
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if (image is None) == (video is None):
        raise ValueError("give an image or a video to extend, one of them")
    if context_frames is not None and video is None:
        raise ValueError("context_frames needs a video to extend")
    settings = jobs_pb2.RenderSettings()
    if recipe is not None:
        recipe = _check_recipe(recipe)
        given = dict(prompt=prompt or None, seconds=seconds, frames=frames, mode=mode,
                     negative_prompt=negative_prompt, steps=steps, guidance_scale=guidance_scale,
                     true_cfg_scale=true_cfg_scale, seed=seed, latent_window_size=latent_window_size,
                     resolution=resolution, height=height, width=width, fps=fps, sampler=sampler,
                     unipc_variant=unipc_variant, cfg_rescale=cfg_rescale, cache=cache,
                     cache_threshold=cache_threshold, magcache_k=magcache_k,
                     magcache_retention=magcache_retention, section_prompts=section_prompts,
                     blend_sections=blend_sections, context_frames=context_frames,
                     vae_tiling=vae_tiling)
        extra = [name for name, value in given.items() if value is not None]
        if extra:
            raise ValueError(f"{', '.join(extra)} {'comes' if len(extra) == 1 else 'come'} from the recipe: "
                             "with a recipe give only video_format, crf, lossless and save_frames")
    else:
        if (seconds is None) == (frames is None):
            raise ValueError("give exactly one of seconds and frames")
        if section_prompts is not None:
            if isinstance(section_prompts, str) or not all(isinstance(p, str) for p in section_prompts):
                raise ValueError("section_prompts must be a list of strings, one per section")
            if not section_prompts:
                raise ValueError("section_prompts must hold at least one prompt")
            if prompt:
                raise ValueError("give either a prompt or section_prompts, not both")
            settings.prompt_schedule.section_prompts.extend(section_prompts)
        elif not prompt:
            raise ValueError("a prompt is required (or section_prompts, or a recipe)")
        else:
            settings.prompt = prompt
        settings.mode = MODES[mode] if mode else jobs_pb2.SAMPLING_MODE_UNSPECIFIED
        if seconds is not None:
            settings.seconds = seconds
        else:
            settings.num_frames = frames  # type: ignore[assignment]
        if sampler is not None:
            settings.sampler = _choice("sampler", sampler, SAMPLERS)  # type: ignore[assignment]
        unipc = sampler is not None and sampler.lower() == "unipc"
        if unipc_variant is not None:
            if not unipc:
                raise ValueError('unipc_variant needs sampler="unipc"')
            settings.unipc.variant = _choice("unipc_variant", unipc_variant, UNIPC_VARIANTS)  # type: ignore[assignment]
        if cfg_rescale is not None:
            if isinstance(cfg_rescale, bool) or not isinstance(cfg_rescale, (int, float)) or not 0 <= cfg_rescale <= 1:
                raise ValueError(f"cfg_rescale must be a number from 0 to 1, got {cfg_rescale!r}")
            if not unipc:
                raise ValueError('cfg_rescale needs sampler="unipc"')
            settings.unipc.cfg_rescale = cfg_rescale
        if cache is not None:
            settings.cache = cache  # the farm checks the name (INVALID_ARGUMENT naming it)
        if cache_threshold is not None:
            if isinstance(cache_threshold, bool) or not isinstance(cache_threshold, (int, float)):
                raise ValueError(f"cache_threshold must be a number, got {cache_threshold!r}")
            settings.cache_threshold = cache_threshold
        if magcache_k is not None:
            if isinstance(magcache_k, bool) or not isinstance(magcache_k, int):
                raise ValueError(f"magcache_k must be an integer, got {magcache_k!r}")
            settings.magcache_k = magcache_k  # the farm checks the range
        if magcache_retention is not None:
            if isinstance(magcache_retention, bool) or not isinstance(magcache_retention, (int, float)):
                raise ValueError(f"magcache_retention must be a number, got {magcache_retention!r}")
            settings.magcache_retention = magcache_retention
        if blend_sections is not None:
            if isinstance(blend_sections, bool) or not isinstance(blend_sections, int) \
                    or not 0 <= blend_sections <= MAX_BLEND_SECTIONS:
                raise ValueError(f"blend_sections must be a whole number from 0 to {MAX_BLEND_SECTIONS}, got {blend_sections!r}")
            settings.prompt_schedule.blend_sections = blend_sections
        if context_frames is not None:
            if isinstance(context_frames, bool) or not isinstance(context_frames, int):
                raise ValueError(f"context_frames must be an integer, got {context_frames!r}")
            settings.context_frames = context_frames  # the farm checks the range
        if vae_tiling is not None:
            # bool only: a truthy "false" must not tile.
            if not isinstance(vae_tiling, bool):
                raise ValueError(f"vae_tiling must be True or False, got {vae_tiling!r}")
            settings.vae_tiling = vae_tiling
        optional = dict(negative_prompt=negative_prompt, steps=steps, guidance_scale=guidance_scale,
                        true_cfg_scale=true_cfg_scale, seed=seed, latent_window_size=latent_window_size,
                        resolution=resolution, height=height, width=width, fps=fps)
        for name, value in optional.items():
            if value is not None:
                setattr(settings, name, value)
    if video_format is not None:
        settings.format = _choice("video_format", video_format, VIDEO_FORMATS)  # type: ignore[assignment]
    if save_frames is not None:
        if not isinstance(save_frames, bool):
            raise ValueError(f"save_frames must be True or False, got {save_frames!r}")
        settings.save_frames = save_frames
    for name, value in dict(crf=crf, lossless=lossless).items():
        if value is not None:
            setattr(settings, name, value)
    if webhook_url is not None and not (isinstance(webhook_url, str) and re.match(r"^https?://[^/\s]+", webhook_url)):
        raise ValueError(f"webhook_url must be an http(s) URL, got {webhook_url!r}")
    request = jobs_pb2.SubmitJobRequest(settings=settings, bundle=bundle, priority=priority,
                                        idempotency_key=idempotency_key)
    if image is not None:
        request.image.CopyFrom(_image(image))
    if video is not None:
        request.video.CopyFrom(_video(video))
    if recipe is not None:
        request.recipe = recipe
    if webhook_url is not None:
        request.webhook_url = webhook_url
    if end_image is not None:
        request.end_image.CopyFrom(_image(end_image))
    if keyframes is not None:
        request.keyframes.extend(_keyframes(keyframes))
    return farm.unary(farm.stub.SubmitJob, request).job


def updates(farm: Farm, job_id: str) -> Iterator[jobs_pb2.WatchJobResponse]:
    """WatchJob's events: the job's current state first, then every change until it ends."""
    try:
        for event in farm.stub.WatchJob(jobs_pb2.WatchJobRequest(id=job_id), metadata=farm.metadata):
            yield event
    except grpc.RpcError as err:
        raise _farm_error(err) from None


def progress_fraction(progress: jobs_pb2.Progress) -> float:
    """How much of the denoising is done, 0 to 1: finished sections plus the running section's steps."""
    if progress.sections_total == 0 or progress.steps_per_section == 0:
        return 0.0
    running = progress.current_step / progress.steps_per_section if progress.current_section >= progress.sections_done else 0.0
    return min(1.0, (progress.sections_done + running) / progress.sections_total)


def progress_text(job: jobs_pb2.Job) -> str:
    """One line for a job's progress, e.g. `RUNNING  42%  section 2/3  step 5/8  ETA 12 s`."""
    p = job.progress
    text = f"{state_name(job.state):<9} {progress_fraction(p) * 100:3.0f}%"
    if p.sections_total and p.sections_done >= p.sections_total:
        text += f"  section {p.sections_total}/{p.sections_total}"
    elif p.sections_total:
        text += f"  section {min(p.current_section + 1, p.sections_total)}/{p.sections_total}  step {p.current_step}/{p.steps_per_section}"
    if p.eta_seconds > 0:
        text += f"  ETA {p.eta_seconds:.0f} s"
    return text


def watch(farm: Farm, job_id: str,
          on_progress: Optional[Callable[[jobs_pb2.WatchJobResponse], None]] = None) -> jobs_pb2.Job:
    """Follows a job until it ends, calling on_progress with each event (its `.job` is the job as of
    that event: state, progress, latest preview). Returns the job once SUCCEEDED; raises JobFailed
    when it ends FAILED or CANCELLED."""
    last: Optional[jobs_pb2.Job] = None
    for event in updates(farm, job_id):
        last = event.job
        if on_progress is not None:
            on_progress(event)
    if last is None:
        raise FarmError("UNAVAILABLE", f"the watch of job {job_id} ended without news")
    if last.state != jobs_pb2.JOB_STATE_SUCCEEDED:
        raise JobFailed(last)
    return last


def recipe_sidecar(path: Union[str, "os.PathLike[str]"]) -> str:
    """Where a video's recipe goes beside it: out.mp4 -> out.recipe.json (as `framefarm submit -o`)."""
    return os.path.splitext(os.fspath(path))[0] + ".recipe.json"


def _video_head(job_id: str) -> Callable[[bytes], None]:
    def check(head: bytes) -> None:
        if head[4:8] != b"ftyp" and head[:4] != b"\x1a\x45\xdf\xa3":
            raise FarmError("DATA_LOSS", f"the video of job {job_id} is neither MP4 nor WebM (starts {head!r})")
    return check


def _recipe_head(job_id: str) -> Callable[[bytes], None]:
    def check(head: bytes) -> None:
        if not head.lstrip().startswith(b"{"):
            raise FarmError("DATA_LOSS", f"the recipe of job {job_id} is not JSON (starts {head!r})")
    return check


def _fetch(farm: Farm, url: str, path: str, what: str, check: Callable[[bytes], None]) -> None:
    """Writes url's body to path, whole or not at all, after check() passes on its first 8 bytes."""
    # Beside the target, so the rename is atomic; "x" mode: created anew, with the umask's permissions.
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "xb") as out:
            try:
                with urllib.request.urlopen(url, timeout=farm.timeout) as res:
                    head = res.read(8)
                    check(head)
                    out.write(head)
                    while chunk := res.read(1 << 20):
                        out.write(chunk)
            except OSError as err:  # URLError and HTTPError are OSErrors
                raise FarmError("UNAVAILABLE", f"cannot download {what}: {err}") from err
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def download(farm: Farm, job_id: str, path: Union[str, "os.PathLike[str]"], *,
             recipe: Union[bool, str, "os.PathLike[str]"] = False) -> jobs_pb2.Job:
    """Writes a finished job's video (MP4 or WebM) to path (whole or not at all) and returns the job.

    With recipe=True its recipe (the JSON that renders it again: `submit(..., recipe=text)`) is
    written beside it too, out.mp4 -> out.recipe.json (`recipe_sidecar`), or to the path given as
    recipe; after the video, and likewise whole or not at all.

    Both come from the object store by the presigned URLs that GetJob hands out (fetched anew here,
    so an old one cannot have expired), never over gRPC.
    """
    job = farm.unary(farm.stub.GetJob, jobs_pb2.GetJobRequest(id=job_id)).job
    if job.state != jobs_pb2.JOB_STATE_SUCCEEDED:
        if job.state in (jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED):
            raise JobFailed(job)
        raise FarmError("FAILED_PRECONDITION", f"job {job_id} is {state_name(job.state)}: no video yet")
    if not job.video_url:
        raise FarmError("UNAVAILABLE", f"job {job_id} succeeded but the farm gave no video URL")
    if recipe is not False and not job.recipe_url:
        raise FarmError("UNAVAILABLE", f"job {job_id} succeeded but the farm gave no recipe URL")
    path = os.fspath(path)
    _fetch(farm, job.video_url, path, f"the video of job {job_id}", _video_head(job_id))
    if recipe is not False:
        target = recipe_sidecar(path) if recipe is True else os.fspath(recipe)
        _fetch(farm, job.recipe_url, target, f"the recipe of job {job_id}", _recipe_head(job_id))
    return job
