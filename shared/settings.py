"""One settings object for every process, read from the environment."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """gpt2ft configuration; each field names its environment variable."""

    model_config = SettingsConfigDict(env_prefix="GPT2FT_", extra="ignore")

    # Everything the service stores lives under home unless overridden.
    home: Path = Field(default=Path("var"))
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "GPT2FT_DATABASE_URL")
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "GPT2FT_REDIS_URL"),
    )
    # Uploads, checkpoints and models: a local folder (default: home/storage) or
    # s3://bucket/prefix (endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
    storage_url: str | None = None
    # Local work space: jobs in progress, uploads being received, the cache of fetched objects.
    scratch_dir: Path | None = None
    # Fetched models and files kept per host; the least recently used go first.
    cache_max_bytes: int = Field(default=20 * 1024**3, ge=0)
    # S3 multipart part size: S3 refuses parts under 5 MiB and single PUTs over 5 GB.
    s3_part_bytes: int = Field(default=64 * 1024**2, ge=5 * 1024**2, le=5 * 1024**3)
    # path: http://host/bucket/key, what MinIO, SeaweedFS and Ceph expect behind one hostname.
    s3_addressing_style: Literal["path", "virtual", "auto"] = "path"
    models_dir: Path | None = None
    tokenizer_dir: Path | None = None
    dev_api_key: str | None = None
    dev_owner: str = "dev"

    # 100 MiB: a GPT-2 corpus larger than this belongs in object storage, not a form post.
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    # 1 MiB: the largest JSON request (a batch of prompts) is a few KB; data goes to uploads.
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)
    # One record over a million characters is a whole book in one line: almost surely a mistake.
    max_record_chars: int = Field(default=1_000_000, ge=1)
    # A million records: planning holds each one's tokens; more tiny ones belong joined up.
    max_records: int = Field(default=1_000_000, ge=1)
    # Distinct classification labels: a thousand classes is already a large head for GPT-2.
    max_labels: int = Field(default=1000, ge=2)
    # A worker that misses three heartbeats loses its job to another worker.
    lease_seconds: float = Field(default=60.0, gt=0)
    heartbeat_seconds: float = Field(default=15.0, gt=0)
    # How often the sweep re-sends unclaimed jobs and reclaims lapsed leases.
    sweep_interval_seconds: float = Field(default=15.0, gt=0)
    # A queued job nobody claimed for this long is sent again.
    requeue_after_seconds: float = Field(default=30.0, ge=0)
    max_attempts: int = Field(default=3, ge=1, le=100)
    # A job no live worker has the memory for waits this long (queued, with an event saying
    # why) for one to join, then fails with no_worker_fits: an hour covers a host rebooting.
    unplaceable_timeout_seconds: float = Field(default=3600.0, ge=0)
    # Completions wait this long for a worker before answering 503.
    completion_timeout_seconds: float = Field(default=120.0, gt=0)
    # How long an API process trusts a key it checked (revocations empty the cache at once
    # while Redis carries them; this bounds a revocation Redis could not carry). 0: no cache.
    key_cache_seconds: float = Field(default=10.0, ge=0)
    # Inference requests one owner may have waiting at once, across every API process (429).
    max_inflight_inference_per_owner: int = Field(default=4, ge=1)
    # prompts x n x max_tokens of one completion request: minutes of CPU at most.
    max_generated_tokens_per_request: int = Field(default=8192, ge=1)
    # Event streams one owner may hold open at once (429), and how long a silent one lasts.
    max_streams_per_owner: int = Field(default=8, ge=1)
    stream_idle_seconds: float = Field(default=300.0, gt=0)
    # Loaded models kept per inference worker.
    inference_cache_size: int = Field(default=2, ge=1, le=32)
    # Per-owner quotas: more active jobs or stored bytes than this answers 429. 100 GiB holds a
    # full gpt2-xl job's estimated outputs (about 62 GB with the default keep_checkpoints).
    max_active_jobs_per_owner: int = Field(default=4, ge=1)
    max_stored_bytes_per_owner: int = Field(default=100 * 1024**3, ge=1)
    metrics_flush_seconds: float = Field(default=2.0, gt=0)
    log_level: str = "INFO"

    # This worker's device: "auto" (cuda when present, else cpu), "cpu", "cuda" or "cuda:N".
    # `gpt2ft worker` turns cuda:N into CUDA_VISIBLE_DEVICES=N for its processes.
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    # bf16 autocast for training on a CPU with bf16 units (AVX512-BF16/AMX); false: fp32.
    cpu_bf16: bool = True
    # Share of the GPU the inference process may take, so serving never starves training.
    inference_memory_fraction: float = Field(default=0.25, gt=0, le=1)
    # The memory this worker offers to one training job, GiB; None: its GPU's total, or the
    # host's RAM on the CPU. Lower it to leave room for other work on a shared GPU.
    worker_memory_gib: float | None = Field(default=None, gt=0)
    # Steps between training-loss logs; None: every step on CPU, every 10 on a GPU (a log
    # reads the loss back, which waits for the GPU to finish).
    log_every_steps: int | None = Field(default=None, ge=1, le=10_000)

    @property
    def resolved_database_url(self) -> str:
        """DATABASE_URL, or the SQLite file under home."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'gpt2ft.db').resolve()}"

    @property
    def resolved_models_dir(self) -> Path:
        """Folder of local base models (each sub-folder with a config.json)."""
        return (self.models_dir or self.home / "models").resolve()

    @property
    def resolved_tokenizer_dir(self) -> Path:
        """Folder holding the offline GPT-2 tokenizer files (vocab.json, merges.txt)."""
        return (self.tokenizer_dir or self.home / "tokenizer" / "gpt2").resolve()

    @property
    def storage_dir(self) -> Path:
        """Root of the local storage backend (GPT2FT_STORAGE_URL a path or file:// URL)."""
        url = self.storage_url or ""
        if url.startswith("s3://"):
            raise ValueError("GPT2FT_STORAGE_URL is an S3 URL: there is no local storage folder")
        if url.startswith("file://"):
            return Path(url.removeprefix("file://")).resolve()
        return (Path(url) if url else self.home / "storage").resolve()

    @property
    def storage_is_local(self) -> bool:
        """True unless GPT2FT_STORAGE_URL names an S3 bucket."""
        return not (self.storage_url or "").startswith("s3://")

    @property
    def resolved_scratch_dir(self) -> Path:
        """This host's work space (never shared between hosts)."""
        return (self.scratch_dir or self.home / "scratch").resolve()


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests call get_settings.cache_clear() after changing env."""
    return Settings()
