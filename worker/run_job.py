"""One job, start to end: claim, validate files, plan, train, record the outcome."""

import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.catalog import find_base_model
from shared.datasets import DatasetError, Record, iter_records, task_for_format
from shared.db.session import session_scope
from shared.db.tables import File, Job, JobStatus
from shared.jobs import (
    Lease,
    LeaseLost,
    add_events,
    claim_job,
    db_unavailable,
    event_row,
    fenced_update,
    retry_db,
)
from shared.logging_setup import job_logging
from shared.naming import fine_tuned_model_id
from shared.settings import Settings, get_settings
from shared.spec import Hyperparameters, JobOptions, MethodOptions, part_of
from shared.storage import Storage, StorageError, file_key, get_storage, job_prefix
from worker.heartbeat import Heartbeat
from worker.outcomes import (
    OUTCOME_HANDLERS,
    Outcome,
    TrainedRun,
    handle_failure,
    handle_lease_lost,
)
from worker.publishing import job_scratch, restore_checkpoints
from worker.reporting import DbReporter, merge_stats
from worker.training.callbacks import StopReason

GIB = 1024**3

if TYPE_CHECKING:  # the engine imports torch: only inside the functions that run it
    from worker.training.plan import Plan

log = logging.getLogger(__name__)


class NotHere(Exception):
    """The job needs more memory or GPUs than this worker has: another worker should run it."""

    def __init__(self, summary: dict[str, Any], why: str, gpus: int) -> None:
        super().__init__(why)
        self.summary, self.why, self.gpus = summary, why, gpus


class JobFailure(Exception):
    """A job that cannot succeed as submitted; becomes the job's OpenAI-shaped error."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}


@dataclass(frozen=True)
class JobSnapshot:
    """The columns run_job needs, read once in a short session."""

    id: str
    owner: str
    model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    hyperparameters: dict[str, Any]
    # Extension request fields (task, packing, max_length, method fields).
    options: dict[str, Any] | None = None
    # Figures earlier attempts left (micro_batch_limit after running out of memory, ...).
    stats: dict[str, Any] | None = None


@lru_cache
def worker_identity() -> str:
    """host:pid:random, unique per worker process: the lease owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def record(
    lease: Lease, messages: list[str], stats: dict[str, Any] | None = None, **values: Any
) -> None:
    """Update the job (fenced), merge stats and add message events in one transaction."""

    def transaction() -> None:
        with session_scope() as session:
            fenced_update(session, lease, **values)
            if stats:
                merge_stats(session, lease.job_id, stats)
            add_events(session, [event_row(lease.job_id, m) for m in messages])

    retry_db(transaction, f"job {lease.job_id}: {messages[0]!r}", get_settings().lease_seconds)


def run_job(job_id: str, worker_id: str) -> Outcome:
    """Claim job_id and run it to an outcome; not_claimed if another worker has it."""
    settings, storage = get_settings(), get_storage()
    with session_scope() as session:
        lease = claim_job(session, job_id, worker_id, settings.lease_seconds, settings.max_attempts)
    if lease is None:
        log.info("job %s: not claimable (taken, finished or cancelled)", job_id)
        return Outcome.not_claimed
    log.info("job %s: claimed (attempt %d)", job_id, lease.attempt)
    with (
        job_logging(job_id),
        Heartbeat(lease, settings.lease_seconds, settings.heartbeat_seconds) as heartbeat,
    ):
        work = job_scratch(storage, lease)
        try:
            run = _train_claimed(lease, heartbeat, settings, storage, work)
            return OUTCOME_HANDLERS[run.result.stopped](run)
        except LeaseLost:
            return handle_lease_lost(lease)
        except NotHere as elsewhere:
            from worker.dispatch import forward

            moved = forward(lease, plan_stats(elsewhere.summary), elsewhere.why, elsewhere.gpus)
            return Outcome.forwarded if moved else Outcome.lease_lost
        except JobFailure as failure:
            return handle_failure(lease, failure.error)
        except Exception as exc:
            if db_unavailable(exc):
                # Nothing false was recorded; the lease lapses and the sweep requeues the job.
                log.error("job %s: database unavailable, left for the sweep: %s", job_id, exc)
                return Outcome.left_for_sweep
            log.exception("job %s: failed", job_id)
            error = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
            return handle_failure(lease, {**error, "param": None})
        finally:
            shutil.rmtree(work, ignore_errors=True)
            release_job_memory()


def warm_up() -> None:
    """Import what a job's pickup needs (torch, transformers, the planner and the engine):
    done once at worker start, so the first job is not seconds slower than the next."""
    import worker.training.device
    import worker.training.engine
    import worker.training.memory
    import worker.training.model_loading
    import worker.training.plan
    import worker.training.task_plan  # noqa: F401


def release_job_memory() -> None:
    """After every job: the GPU memory its tensors held goes back to the driver.

    Otherwise the next job's memory check (and the inference process) would see the cached
    blocks as taken. Nothing to do in a process that never trained.
    """
    import sys

    device = sys.modules.get("worker.training.device")
    if device is not None:
        device.release_memory()


def _snapshot(job_id: str) -> JobSnapshot:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return JobSnapshot(
            job.id,
            job.owner,
            job.model,
            job.training_file,
            job.validation_file,
            job.suffix,
            job.seed,
            dict(job.hyperparameters),
            dict(job.options or {}),
            dict(job.stats or {}),
        )


class StoredRecords:
    """A stored file's records, parsed again on each pass: never all in memory at once."""

    def __init__(self, path: Path, fmt: str, param: str, file_id: str) -> None:
        self.path, self.fmt, self.param, self.file_id = path, fmt, param, file_id

    def __iter__(self) -> Iterator[Record]:
        try:
            for _, record in iter_records(self.path, self.fmt):
                yield record
        except DatasetError as exc:
            message = f"{self.param} {self.file_id}: {exc}"
            raise JobFailure("invalid_file", message, self.param) from None


def _read_file(file_id: str, param: str, owner: str, storage: Storage) -> tuple[StoredRecords, str]:
    with session_scope() as session:
        row = session.get(File, file_id)
        fmt = row.format if row and row.owner == owner and row.deleted_at is None else None
    if fmt is None:
        raise JobFailure("invalid_file", f"{param} {file_id} no longer exists", param)
    try:
        path = storage.fetch_file(file_key(file_id))
    except StorageError as exc:
        raise JobFailure("invalid_file", f"{param} {file_id}: {exc}", param) from None
    return StoredRecords(path, fmt, param, file_id), fmt


def prepare(
    job: JobSnapshot, settings: Settings, storage: Storage, check_memory: bool = True
) -> "Plan":
    """Check the model and files and resolve the plan; JobFailure says what is wrong."""
    from worker.training.model_loading import ModelUnavailable, ensure_available
    from worker.training.plan import PlanError, with_method
    from worker.training.task_plan import plan_task
    from worker.training.token_cache import timed_tokenization

    base = find_base_model(job.model, settings.resolved_models_dir)
    if base is None:
        raise JobFailure("model_not_found", f"model {job.model!r} does not exist", "model")
    try:
        ensure_available(base)
    except ModelUnavailable as exc:
        raise JobFailure("model_not_available", str(exc), "model") from None
    train_records, train_format = _read_file(job.training_file, "training_file", job.owner, storage)
    valid_records = (
        _read_file(job.validation_file, "validation_file", job.owner, storage)[0]
        if job.validation_file
        else None
    )
    options = JobOptions.model_validate(job.options or {})
    task = options.task or task_for_format(train_format)
    try:
        hp = Hyperparameters.model_validate(job.hyperparameters)
        with timed_tokenization() as tokenizing:
            plan = plan_task(hp, base, options, task, train_records, valid_records, job.seed)
        plan = with_method(plan, part_of(MethodOptions, options))
    except PlanError as exc:
        raise JobFailure("invalid_hyperparameters", str(exc), exc.param) from None
    plan.summary["tokenize_seconds"] = round(tokenizing.seconds, 4)
    plan.summary["tokenize_cached"] = tokenizing.cached
    if check_memory:
        from worker.fleet import capacity_bytes
        from worker.training.device import pick_device
        from worker.training.memory import memory_problem

        device, gpus = pick_device(), plan.spec.n_gpus
        offered = capacity_bytes(device)
        need = plan.summary["memory_estimate"]["total_bytes"]
        if offered is not None and need > offered:
            why = f"Needs about {need / GIB:.2f} GiB; this worker ({{owner}}) offers "
            raise NotHere(plan.summary, why + f"{offered / GIB:.2f} GiB", gpus)
        problem = memory_problem(plan.summary["memory_estimate"], str(device))
        if problem:
            raise JobFailure("insufficient_memory", problem, None)
        problem = gpu_count_problem(gpus, device.type)
        if problem:  # another worker may have them: the fleet decides (no_worker_fits)
            raise NotHere(plan.summary, f"{problem} ({{owner}})", gpus)
    return plan


def gpu_count_problem(n_gpus: int, device_type: str) -> str | None:
    """Why this worker cannot give the job n_gpus ranks; None when it can.

    A worker training on the CPU runs the ranks there (gloo): slow, but the same code path.
    """
    from worker.training.device import gpu_count

    have = gpu_count()
    if n_gpus > 1 and device_type == "cuda" and have < n_gpus:
        return f"n_gpus {n_gpus}: this worker has {have} GPU{'s' if have > 1 else ''}"
    return None


def _train_claimed(
    lease: Lease, heartbeat: Heartbeat, settings: Settings, storage: Storage, work: Path
) -> TrainedRun:
    """Validate, plan and train in the attempt's scratch folder work; resume from the store."""
    from worker.training.engine import train
    from worker.training.launch import train_on_ranks

    job = _snapshot(lease.job_id)
    record(lease, [f"Validating training file: {job.training_file}"])
    plan = prepare(job, settings, storage)
    total_steps = plan.summary["total_steps"]
    record(
        lease,
        [f"Files validated. {plan.message()}. {method_message(plan.summary)}"],
        stats=plan_stats(plan.summary),
        resolved=plan.spec.shown(),
        total_steps=total_steps,
    )
    # Uploads of crashed or fenced-off attempts that never got a manifest (right after a
    # fenced write: a worker the user's pause or cancel fenced out stops before this).
    storage.remove_unpublished(job_prefix(job.id))
    checkpoints_dir = work / "checkpoints"
    resume_from, best = restore_checkpoints(storage, job.id, checkpoints_dir)
    started = (
        f"Resumed from step {int(resume_from.name.split('-')[-1])} (attempt {lease.attempt})"
        if resume_from
        else "Job started"
    )
    running: dict[str, Any] = {"status": JobStatus.running}
    if resume_from is None:  # a resumed job keeps its first start: its duration counts from there
        running["started_at"] = time.time()
    record(lease, [started], **running)
    ft_id = fine_tuned_model_id(job.model, job.owner, job.suffix, job.id)
    reporter = DbReporter(
        lease,
        heartbeat,
        storage,
        ft_id,
        total_steps,
        settings.metrics_flush_seconds,
        keep_checkpoints=plan.spec.keep_checkpoints,
    )
    reporter.best_checkpoint = best
    assert plan.train_examples is not None and plan.valid_examples is not None  # __post_init__
    # n_gpus > 1: torchrun ranks in a child process; this process keeps the lease and publishes.
    run_engine = train if plan.spec.n_gpus == 1 else train_on_ranks
    result = run_engine(
        plan.spec,
        plan.train_examples,
        plan.valid_examples,
        checkpoints_dir,
        work / "model",
        reporter,
        resume_from=resume_from,
        log_every_steps=settings.log_every_steps,
        micro_batch_limit=(job.stats or {}).get("micro_batch_limit"),
    )
    if result.stopped is StopReason.lease_lost:
        raise LeaseLost(f"job {job.id}: lease lost during training")
    reporter.flush()
    return TrainedRun(lease, job, result, reporter, ft_id, storage, work)


def method_message(summary: dict[str, Any]) -> str:
    """The validation event's method line: trainable parameters and the memory estimate."""
    memory = summary["memory_estimate"]
    return (
        f"Method {summary['training_method']}: {summary['trainable_parameters']:,} of "
        f"{summary['total_parameters']:,} parameters trainable; memory estimate "
        f"{memory['total_gib']:.2f} GiB (micro-batch {memory['micro_batch_size']} x "
        f"{memory['sequence_length']} tokens, {memory['precision']})"
    )


def plan_stats(summary: dict[str, Any]) -> dict[str, Any]:
    """Parameter counts and the memory estimate, for Job.stats and the job object."""
    names = ("training_method", "trainable_parameters", "total_parameters", "memory_estimate")
    # How long the files took to tokenize, and whether the token cache served them.
    timing: dict[str, Any] = {
        k: summary[k] for k in ("tokenize_seconds", "tokenize_cached") if k in summary
    }
    return {**{name: summary[name] for name in names}, **timing}
