from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor
JOB_STATE_CANCELLED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_UNSPECIFIED: JobState
SAMPLER_FLOW_MATCH_EULER: Sampler
SAMPLER_UNIPC: Sampler
SAMPLER_UNSPECIFIED: Sampler
SAMPLING_MODE_INVERTED_ANTI_DRIFTING: SamplingMode
SAMPLING_MODE_UNSPECIFIED: SamplingMode
SAMPLING_MODE_VANILLA: SamplingMode
UNIPC_VARIANT_BH1: UnipcVariant
UNIPC_VARIANT_BH2: UnipcVariant
UNIPC_VARIANT_UNSPECIFIED: UnipcVariant
VIDEO_FORMAT_MP4: VideoFormat
VIDEO_FORMAT_UNSPECIFIED: VideoFormat
VIDEO_FORMAT_WEBM: VideoFormat

class CancelJobRequest(_message.Message):
    __slots__ = ["id"]
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ["job"]
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ["id"]
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ["job"]
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ImageInput(_message.Message):
    __slots__ = ["data", "object_key"]
    DATA_FIELD_NUMBER: _ClassVar[int]
    OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    object_key: str
    def __init__(self, data: _Optional[bytes] = ..., object_key: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ["bundle", "created_at", "error", "error_status", "frames_key", "frames_url", "height", "id", "keyframe_times", "num_frames", "preview_key", "preview_url", "priority", "progress", "recipe_key", "recipe_url", "settings", "state", "updated_at", "video_key", "video_url", "video_url_expires_at", "width"]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_STATUS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_KEY_FIELD_NUMBER: _ClassVar[int]
    FRAMES_URL_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    KEYFRAME_TIMES_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_KEY_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_URL_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RECIPE_KEY_FIELD_NUMBER: _ClassVar[int]
    RECIPE_URL_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    VIDEO_KEY_FIELD_NUMBER: _ClassVar[int]
    VIDEO_URL_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    VIDEO_URL_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    bundle: str
    created_at: _timestamp_pb2.Timestamp
    error: str
    error_status: str
    frames_key: str
    frames_url: str
    height: int
    id: str
    keyframe_times: _containers.RepeatedScalarFieldContainer[float]
    num_frames: int
    preview_key: str
    preview_url: str
    priority: int
    progress: Progress
    recipe_key: str
    recipe_url: str
    settings: RenderSettings
    state: JobState
    updated_at: _timestamp_pb2.Timestamp
    video_key: str
    video_url: str
    video_url_expires_at: _timestamp_pb2.Timestamp
    width: int
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., settings: _Optional[_Union[RenderSettings, _Mapping]] = ..., bundle: _Optional[str] = ..., priority: _Optional[int] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., video_key: _Optional[str] = ..., video_url: _Optional[str] = ..., video_url_expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[str] = ..., error_status: _Optional[str] = ..., num_frames: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., preview_key: _Optional[str] = ..., preview_url: _Optional[str] = ..., recipe_key: _Optional[str] = ..., recipe_url: _Optional[str] = ..., frames_key: _Optional[str] = ..., frames_url: _Optional[str] = ..., keyframe_times: _Optional[_Iterable[float]] = ...) -> None: ...

class Keyframe(_message.Message):
    __slots__ = ["image", "time_seconds"]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    image: ImageInput
    time_seconds: float
    def __init__(self, time_seconds: _Optional[float] = ..., image: _Optional[_Union[ImageInput, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ["page_size", "page_token", "states"]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[JobState]
    def __init__(self, states: _Optional[_Iterable[_Union[JobState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ["jobs", "next_page_token"]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ["current_section", "current_step", "eta_seconds", "sections_done", "sections_total", "steps_per_section"]
    CURRENT_SECTION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STEP_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SECTIONS_DONE_FIELD_NUMBER: _ClassVar[int]
    SECTIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_SECTION_FIELD_NUMBER: _ClassVar[int]
    current_section: int
    current_step: int
    eta_seconds: float
    sections_done: int
    sections_total: int
    steps_per_section: int
    def __init__(self, sections_total: _Optional[int] = ..., sections_done: _Optional[int] = ..., current_section: _Optional[int] = ..., current_step: _Optional[int] = ..., steps_per_section: _Optional[int] = ..., eta_seconds: _Optional[float] = ...) -> None: ...

class PromptSchedule(_message.Message):
    __slots__ = ["blend_sections", "section_prompts"]
    BLEND_SECTIONS_FIELD_NUMBER: _ClassVar[int]
    SECTION_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    blend_sections: int
    section_prompts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, section_prompts: _Optional[_Iterable[str]] = ..., blend_sections: _Optional[int] = ...) -> None: ...

class RenderSettings(_message.Message):
    __slots__ = ["cache", "cache_threshold", "context_frames", "crf", "format", "fps", "guidance_scale", "height", "latent_window_size", "lossless", "magcache_k", "magcache_retention", "mode", "negative_prompt", "num_frames", "prompt", "prompt_schedule", "resolution", "sampler", "save_frames", "seconds", "seed", "steps", "true_cfg_scale", "unipc", "vae_tiling", "width"]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    CACHE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FRAMES_FIELD_NUMBER: _ClassVar[int]
    CRF_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    LATENT_WINDOW_SIZE_FIELD_NUMBER: _ClassVar[int]
    LOSSLESS_FIELD_NUMBER: _ClassVar[int]
    MAGCACHE_K_FIELD_NUMBER: _ClassVar[int]
    MAGCACHE_RETENTION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    SAVE_FRAMES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    TRUE_CFG_SCALE_FIELD_NUMBER: _ClassVar[int]
    UNIPC_FIELD_NUMBER: _ClassVar[int]
    VAE_TILING_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    cache: str
    cache_threshold: float
    context_frames: int
    crf: int
    format: VideoFormat
    fps: float
    guidance_scale: float
    height: int
    latent_window_size: int
    lossless: bool
    magcache_k: int
    magcache_retention: float
    mode: SamplingMode
    negative_prompt: str
    num_frames: int
    prompt: str
    prompt_schedule: PromptSchedule
    resolution: int
    sampler: Sampler
    save_frames: bool
    seconds: float
    seed: int
    steps: int
    true_cfg_scale: float
    unipc: UnipcOptions
    vae_tiling: bool
    width: int
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., seconds: _Optional[float] = ..., num_frames: _Optional[int] = ..., mode: _Optional[_Union[SamplingMode, str]] = ..., steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., true_cfg_scale: _Optional[float] = ..., seed: _Optional[int] = ..., latent_window_size: _Optional[int] = ..., resolution: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., fps: _Optional[float] = ..., crf: _Optional[int] = ..., lossless: bool = ..., format: _Optional[_Union[VideoFormat, str]] = ..., save_frames: bool = ..., sampler: _Optional[_Union[Sampler, str]] = ..., unipc: _Optional[_Union[UnipcOptions, _Mapping]] = ..., prompt_schedule: _Optional[_Union[PromptSchedule, _Mapping]] = ..., cache: _Optional[str] = ..., cache_threshold: _Optional[float] = ..., magcache_k: _Optional[int] = ..., magcache_retention: _Optional[float] = ..., context_frames: _Optional[int] = ..., vae_tiling: bool = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ["bundle", "end_image", "idempotency_key", "image", "keyframes", "priority", "recipe", "settings", "video", "webhook_url"]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    END_IMAGE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    KEYFRAMES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_URL_FIELD_NUMBER: _ClassVar[int]
    bundle: str
    end_image: ImageInput
    idempotency_key: str
    image: ImageInput
    keyframes: _containers.RepeatedCompositeFieldContainer[Keyframe]
    priority: int
    recipe: str
    settings: RenderSettings
    video: VideoInput
    webhook_url: str
    def __init__(self, image: _Optional[_Union[ImageInput, _Mapping]] = ..., end_image: _Optional[_Union[ImageInput, _Mapping]] = ..., keyframes: _Optional[_Iterable[_Union[Keyframe, _Mapping]]] = ..., video: _Optional[_Union[VideoInput, _Mapping]] = ..., settings: _Optional[_Union[RenderSettings, _Mapping]] = ..., bundle: _Optional[str] = ..., priority: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., recipe: _Optional[str] = ..., webhook_url: _Optional[str] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ["deduplicated", "job"]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    deduplicated: bool
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., deduplicated: bool = ...) -> None: ...

class UnipcOptions(_message.Message):
    __slots__ = ["cfg_rescale", "variant"]
    CFG_RESCALE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    cfg_rescale: float
    variant: UnipcVariant
    def __init__(self, variant: _Optional[_Union[UnipcVariant, str]] = ..., cfg_rescale: _Optional[float] = ...) -> None: ...

class VideoInput(_message.Message):
    __slots__ = ["data", "object_key"]
    DATA_FIELD_NUMBER: _ClassVar[int]
    OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    object_key: str
    def __init__(self, data: _Optional[bytes] = ..., object_key: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ["id"]
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ["at", "job", "job_id", "preview_key", "progress", "sequence", "state"]
    AT_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_KEY_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    job: Job
    job_id: str
    preview_key: str
    progress: Progress
    sequence: int
    state: JobState
    def __init__(self, job_id: _Optional[str] = ..., sequence: _Optional[int] = ..., at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., preview_key: _Optional[str] = ..., job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class SamplingMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class VideoFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class Sampler(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class UnipcVariant(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []
