"""SQLAlchemy models: the source of truth for every file, job, event, metric and checkpoint."""

from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base for every table."""


class JobStatus(StrEnum):
    """Lifecycle of a fine-tuning job, as OpenAI names it (plus paused)."""

    validating_files = "validating_files"
    queued = "queued"
    running = "running"
    paused = "paused"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATUSES = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class ApiKey(Base):
    """A hashed API key; the plain key is shown once and never stored."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[int] = mapped_column(Integer)
    revoked_at: Mapped[int | None] = mapped_column(Integer)


class File(Base):
    """An uploaded dataset; stored under its id, never its client filename."""

    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    records: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer)
    deleted_at: Mapped[int | None] = mapped_column(Integer)


class Job(Base):
    """A fine-tuning job; workers claim it with a compare-and-set on status and lease."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(200))
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40))
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    # Stored as its string value (VARCHAR(32), no database enum type); read back as JobStatus.
    status: Mapped[JobStatus] = mapped_column(
        Enum(
            JobStatus,
            native_enum=False,
            length=32,
            values_callable=lambda statuses: [s.value for s in statuses],
            validate_strings=True,
        ),
        index=True,
    )
    # What the client asked for ("auto" kept), and what the worker resolved it to.
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    resolved: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(300))
    trained_tokens: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[int | None] = mapped_column(Integer)
    estimated_finish: Mapped[int | None] = mapped_column(Integer)
    steps_completed: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    epoch: Mapped[float | None] = mapped_column(Float)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    # Incremented by every claim: the fencing token a worker's writes are checked against.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[float | None] = mapped_column(Float)
    # Extension request fields beyond hyperparameters (task, training_method, lora, ...).
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The client's key-value pairs (OpenAI's metadata); "metadata" is taken on Base.
    # none_as_null: a job without metadata is SQL NULL, which metadata=null lists select.
    job_metadata: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON(none_as_null=True))
    # Live and final figures (tokens_per_second, parameter counts, final metrics, ...).
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class JobEvent(Base):
    """A message or metrics event; dedupe_key makes replayed steps idempotent."""

    __tablename__ = "job_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(Integer)
    level: Mapped[str] = mapped_column(String(8))
    type: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    dedupe_key: Mapped[str | None] = mapped_column(String(100))
    __table_args__ = (
        UniqueConstraint("job_id", "dedupe_key", name="uq_job_events_dedupe"),
        Index("ix_job_events_job_seq", "job_id", "seq"),
    )


class Metric(Base):
    """One logged training step; upserted on (job_id, step) so a resumed job never duplicates."""

    __tablename__ = "metrics"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[float | None] = mapped_column(Float)
    train_loss: Mapped[float | None] = mapped_column(Float)
    valid_loss: Mapped[float | None] = mapped_column(Float)
    learning_rate: Mapped[float | None] = mapped_column(Float)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(Integer)


class Checkpoint(Base):
    """A complete checkpoint on disk; the row is written after the folder is renamed in place."""

    __tablename__ = "checkpoints"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float | None] = mapped_column(Float)
    path: Mapped[str] = mapped_column(String(500))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(300), index=True)
    created_at: Mapped[int] = mapped_column(Integer)
    is_best: Mapped[bool] = mapped_column(Boolean, default=False)
    # Stored size of the set (its manifest's files): counted in the owner's storage quota.
    bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_checkpoints_job_step"),)


class FineTunedModel(Base):
    """The final model of a succeeded job, addressable by its ft:... id."""

    __tablename__ = "fine_tuned_models"
    id: Mapped[str] = mapped_column(String(300), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    base_model: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[int] = mapped_column(Integer)
    deleted_at: Mapped[int | None] = mapped_column(Integer)
    # Stored size of the model set: counted in the owner's storage quota until deleted.
    bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Worker(Base):
    """A worker process and its devices; upserted at start and on every heartbeat.

    Live workers (seen within a lease period) show in /readyz; jobs can be routed by them.
    """

    __tablename__ = "workers"
    # host:pid:random, the same identity the process uses as a lease owner.
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    queues: Mapped[list[str]] = mapped_column(JSON)
    # "cuda" or "cpu": where this process trains or serves.
    device_kind: Mapped[str] = mapped_column(String(16))
    device: Mapped[str] = mapped_column(String(32))
    device_count: Mapped[int] = mapped_column(Integer)
    # Per visible device: name, memory_bytes, capability, bf16.
    devices: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    cuda_version: Mapped[str | None] = mapped_column(String(32))
    driver_version: Mapped[str | None] = mapped_column(String(64))
    torch_version: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[float] = mapped_column(Float)
    last_seen_at: Mapped[float] = mapped_column(Float, index=True)
