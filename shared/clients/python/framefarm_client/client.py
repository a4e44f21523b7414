"""Submit a FramePack job to a framefarm coordinator, watch its progress, download its MP4.

The calls are JobService's (proto/framefarm/v1/jobs.proto), through the stubs `npm run proto`
generates into framefarm/v1/ (never edited by hand), on grpcio and protobuf. Like the `framefarm`
CLI, every unary call has a deadline (`timeout`, default 60 s) and a token is sent as
`authorization: Bearer <token>` metadata; the watch stream has no deadline.
"""
from __future__ import annotations

import os
import re
import urllib.request
import uuid
import warnings
from typing import Callable, Iterator, Optional, Union

import grpc

from framefarm.v1 import jobs_pb2, jobs_pb2_grpc

DEFAULT_TIMEOUT_S = 60.0
# The coordinator takes requests up to 110 MiB (two images of at most 50 MiB and the settings).
MAX_REQUEST_BYTES = 110 * 1024 * 1024

ImageLike = Union[str, "os.PathLike[str]", bytes, jobs_pb2.ImageInput]

MODES = {
    "inverted": jobs_pb2.SAMPLING_MODE_INVERTED_ANTI_DRIFTING,
    "vanilla": jobs_pb2.SAMPLING_MODE_VANILLA,
}

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


def submit(farm: Farm, image: ImageLike, prompt: str, *, seconds: Optional[float] = None,
           frames: Optional[int] = None, end_image: Optional[ImageLike] = None, mode: Optional[str] = None,
           negative_prompt: Optional[str] = None, steps: Optional[int] = None,
           guidance_scale: Optional[float] = None, true_cfg_scale: Optional[float] = None,
           seed: Optional[int] = None, latent_window_size: Optional[int] = None,
           resolution: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
           fps: Optional[float] = None, crf: Optional[int] = None, lossless: Optional[bool] = None,
           bundle: str = "", priority: int = 0, idempotency_key: str = "") -> jobs_pb2.Job:
    """Queues a video of `seconds` (or `frames`) from `image` and returns the new job.

    Settings left out are the farm's defaults; the coordinator validates them all and answers
    INVALID_ARGUMENT naming the one that is off. With an idempotency key a repeated submission
    returns the first job.
    """
    if (seconds is None) == (frames is None):
        raise ValueError("give exactly one of seconds and frames")
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    settings = jobs_pb2.RenderSettings(prompt=prompt, mode=MODES[mode] if mode else jobs_pb2.SAMPLING_MODE_UNSPECIFIED)
    if seconds is not None:
        settings.seconds = seconds
    else:
        settings.num_frames = frames  # type: ignore[assignment]
    optional = dict(negative_prompt=negative_prompt, steps=steps, guidance_scale=guidance_scale,
                    true_cfg_scale=true_cfg_scale, seed=seed, latent_window_size=latent_window_size,
                    resolution=resolution, height=height, width=width, fps=fps, crf=crf, lossless=lossless)
    for name, value in optional.items():
        if value is not None:
            setattr(settings, name, value)
    request = jobs_pb2.SubmitJobRequest(image=_image(image), settings=settings, bundle=bundle,
                                        priority=priority, idempotency_key=idempotency_key)
    if end_image is not None:
        request.end_image.CopyFrom(_image(end_image))
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


def download(farm: Farm, job_id: str, path: Union[str, "os.PathLike[str]"]) -> jobs_pb2.Job:
    """Writes a finished job's MP4 to path (whole or not at all) and returns the job.

    The video comes from the object store by the presigned URL that GetJob hands out (fetched
    anew here, so an old one cannot have expired), never over gRPC.
    """
    job = farm.unary(farm.stub.GetJob, jobs_pb2.GetJobRequest(id=job_id)).job
    if job.state != jobs_pb2.JOB_STATE_SUCCEEDED:
        if job.state in (jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED):
            raise JobFailed(job)
        raise FarmError("FAILED_PRECONDITION", f"job {job_id} is {state_name(job.state)}: no video yet")
    if not job.video_url:
        raise FarmError("UNAVAILABLE", f"job {job_id} succeeded but the farm gave no video URL")
    path = os.fspath(path)
    # Beside the target, so the rename is atomic; "x" mode: created anew, with the umask's permissions.
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "xb") as out:
            try:
                with urllib.request.urlopen(job.video_url, timeout=farm.timeout) as res:
                    head = res.read(8)
                    if head[4:8] != b"ftyp":
                        raise FarmError("DATA_LOSS", f"the video of job {job_id} is not an MP4 (starts {head!r})")
                    out.write(head)
                    while chunk := res.read(1 << 20):
                        out.write(chunk)
            except OSError as err:  # URLError and HTTPError are OSErrors
                raise FarmError("UNAVAILABLE", f"cannot download the video of job {job_id}: {err}") from err
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return job
