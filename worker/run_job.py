"""One job, start to end: claim, validate files, plan, train, record the outcome."""

import logging
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from shared.catalog import find_base_model
from shared.datasets import DatasetError, read_records, task_for_format
from shared.db.models import File, FineTunedModel, Job, JobStatus
from shared.db.session import session_scope
from shared.ids import new_sortable_id, now_ts
from shared.jobs import (
    Lease,
    LeaseLost,
    add_events,
    claim_job,
    db_unavailable,
    event_row,
    fenced_update,
    finish_job,
    release_job,
    retry_db,
)
from shared.logging_setup import job_logging
from shared.metrics_table import load_points, render_csv
from shared.naming import fine_tuned_model_id
from shared.settings import Settings, get_settings
from shared.spec import METHOD_FIELDS, TASK_FIELDS, Hyperparameters, MethodOptions, TaskOptions
from shared.storage import Storage, get_storage
from worker.heartbeat import Heartbeat
from worker.reporting import DbReporter, merge_stats

log = logging.getLogger(__name__)


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


@lru_cache
def worker_identity() -> str:
    """host:pid:random, unique per worker process: the lease owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def record(lease: Lease, message: str, **values: Any) -> None:
    """Update the job (fenced) and add one message event in a single transaction."""

    def transaction() -> None:
        with session_scope() as session:
            fenced_update(session, lease, **values)
            add_events(session, [event_row(lease.job_id, message)])

    retry_db(transaction, f"job {lease.job_id}: {message!r}", get_settings().lease_seconds)


def run_job(job_id: str, worker_id: str) -> None:
    """Claim job_id and run it to an outcome; returns quietly if another worker has it."""
    settings, storage = get_settings(), get_storage()
    with session_scope() as session:
        lease = claim_job(session, job_id, worker_id, settings.lease_seconds, settings.max_attempts)
    if lease is None:
        log.info("job %s: not claimable (taken, finished or cancelled)", job_id)
        return
    log.info("job %s: claimed (attempt %d)", job_id, lease.attempt)
    with (
        job_logging(job_id),
        Heartbeat(lease, settings.lease_seconds, settings.heartbeat_seconds) as heartbeat,
    ):
        try:
            _run_claimed(lease, heartbeat, settings, storage)
        except LeaseLost:
            log.warning("job %s: lease lost; another worker owns it now", job_id)
        except JobFailure as failure:
            _fail(lease, failure.error)
        except Exception as exc:
            if db_unavailable(exc):
                # Nothing false was recorded; the lease lapses and the sweep requeues the job.
                log.error("job %s: database unavailable, left for the sweep: %s", job_id, exc)
                return
            log.exception("job %s: failed", job_id)
            _fail(
                lease,
                {
                    "code": "internal_error",
                    "message": f"{type(exc).__name__}: {exc}",
                    "param": None,
                },
            )


def _fail(lease: Lease, error: dict[str, Any]) -> None:
    def transaction() -> None:
        with session_scope() as session:
            finish_job(session, lease, JobStatus.failed, error=error)
            add_events(
                session, [event_row(lease.job_id, f"Job failed: {error['message']}", level="error")]
            )

    try:
        retry_db(
            transaction, f"job {lease.job_id}: recording failure", get_settings().lease_seconds
        )
    except LeaseLost:
        log.warning("job %s: lease lost before the failure could be recorded", lease.job_id)


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
        )


def _read_file(
    file_id: str, param: str, owner: str, storage: Storage
) -> tuple[list[dict[str, str]], str]:
    with session_scope() as session:
        row = session.get(File, file_id)
        fmt = row.format if row and row.owner == owner and row.deleted_at is None else None
    if fmt is None:
        raise JobFailure("invalid_file", f"{param} {file_id} no longer exists", param)
    try:
        return read_records(storage.file_path(file_id), fmt), fmt
    except DatasetError as exc:
        raise JobFailure("invalid_file", f"{param} {file_id}: {exc}", param) from None


def prepare(
    job: JobSnapshot, settings: Settings, storage: Storage, check_memory: bool = True
) -> Any:
    """Check the model and files and resolve the plan; JobFailure says what is wrong."""
    from worker.training.models import ModelUnavailable, ensure_available
    from worker.training.plan import PlanError, with_method
    from worker.training.task_plan import plan_task

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
    options = {k: v for k, v in (job.options or {}).items() if k in TASK_FIELDS}
    task_options = TaskOptions.model_validate(options)
    task = task_options.task or task_for_format(train_format)
    method = {k: v for k, v in (job.options or {}).items() if k in METHOD_FIELDS}
    try:
        hp = Hyperparameters.model_validate(job.hyperparameters)
        plan = plan_task(hp, base, task_options, task, train_records, valid_records, job.seed)
        plan = with_method(plan, MethodOptions.model_validate(method))
    except PlanError as exc:
        raise JobFailure("invalid_hyperparameters", str(exc), exc.param) from None
    if check_memory:
        from worker.training.device import pick_device
        from worker.training.memory import memory_problem

        problem = memory_problem(plan.summary["memory_estimate"], str(pick_device()))
        if problem:
            raise JobFailure("insufficient_memory", problem, None)
    return plan


def _run_claimed(lease: Lease, heartbeat: Heartbeat, settings: Settings, storage: Storage) -> None:
    from worker.training.checkpoints import latest_checkpoint, remove_partial_checkpoints
    from worker.training.engine import train

    job = _snapshot(lease.job_id)
    if lease.claimed_status == JobStatus.validating_files:
        record(lease, f"Validating training file: {job.training_file}")
    plan = prepare(job, settings, storage)
    total_steps = plan.summary["total_steps"]
    if lease.claimed_status == JobStatus.validating_files:
        record(
            lease,
            f"Files validated. {plan.message()}. {method_message(plan.summary)}",
            status=JobStatus.queued,
            resolved=plan.spec.shown(),
            total_steps=total_steps,
        )
        store_plan_stats(job.id, plan.summary)
    checkpoints_dir = storage.checkpoints_dir(job.id)
    remove_partial_checkpoints(checkpoints_dir)
    resume_from = latest_checkpoint(checkpoints_dir)
    started = (
        f"Resumed from step {int(resume_from.name.split('-')[-1])} (attempt {lease.attempt})"
        if resume_from
        else "Job started"
    )
    record(
        lease,
        started,
        status=JobStatus.running,
        resolved=plan.spec.shown(),
        total_steps=total_steps,
        # A resumed job keeps its first start: job duration counts from there.
        **({} if resume_from else {"started_at": time.time()}),
    )
    ft_id = fine_tuned_model_id(job.model, job.owner, job.suffix, job.id)
    reporter = DbReporter(
        lease, heartbeat, storage, ft_id, total_steps, settings.metrics_flush_seconds
    )
    result = train(
        plan.spec,
        plan.train_examples,
        plan.valid_examples,
        checkpoints_dir,
        storage.model_dir(job.id),
        reporter,
        resume_from=resume_from,
    )
    if result.stopped == "lease_lost":
        raise LeaseLost(f"job {job.id}: lease lost during training")
    reporter.flush()
    _record_outcome(lease, job, result, reporter, ft_id, storage)


def _record_outcome(
    lease: Lease, job: JobSnapshot, result: Any, reporter: DbReporter, ft_id: str, storage: Storage
) -> None:
    heartbeat = reporter.heartbeat
    results_id = (
        retry_db(
            lambda: _store_results(job, storage),
            f"job {job.id}: storing results",
            heartbeat.lease_seconds,
            heartbeat.lost,
        )
        if result.stopped is None
        else None
    )
    # The outcome must land: retry through a DB blip. If it never does, the error escapes,
    # the lease lapses and the sweep requeues the job: success is never claimed unrecorded.
    retry_db(
        lambda: _write_outcome(lease, job, result, reporter, ft_id, storage, results_id),
        f"job {job.id}: recording the outcome",
        heartbeat.lease_seconds,
        heartbeat.lost,
    )
    if reporter.stop_cause == "shutdown":
        from worker.dispatch import send_job

        send_job(job.id)


def _write_outcome(
    lease: Lease,
    job: JobSnapshot,
    result: Any,
    reporter: DbReporter,
    ft_id: str,
    storage: Storage,
    results_id: str | None,
) -> None:
    """One transaction: the final status, the model row and the closing event."""
    with session_scope() as session:
        if result.stopped is None:
            finish_job(
                session,
                lease,
                JobStatus.succeeded,
                fine_tuned_model=ft_id,
                trained_tokens=result.trained_tokens,
                steps_completed=result.step,
                estimated_finish=None,
            )
            merge_stats(
                session,
                job.id,
                {"result_files": [results_id], "final_metrics": finite(result.final_metrics)},
            )
            session.add(
                FineTunedModel(
                    id=ft_id,
                    owner=job.owner,
                    job_id=job.id,
                    base_model=job.model,
                    created_at=now_ts(),
                    path=storage.relative(storage.model_dir(job.id)),
                )
            )
            message = "The job has successfully completed"
        elif result.stopped == "cancel":
            finish_job(session, lease, JobStatus.cancelled, cancel_requested=False)
            message = f"Job cancelled at step {result.step}"
        elif reporter.stop_cause == "shutdown":
            release_job(session, lease, JobStatus.queued, refund_attempt=True)
            message = f"Worker shutting down: checkpointed at step {result.step}; job requeued"
        else:
            release_job(
                session, lease, JobStatus.paused, refund_attempt=True, pause_requested=False
            )
            message = f"Job paused at step {result.step}"
        add_events(session, [event_row(job.id, message)])


def _store_results(job: JobSnapshot, storage: Storage) -> str:
    """The job's metrics CSV as a fine-tune-results file owned by the job's owner."""
    with session_scope() as session:
        data = render_csv(load_points(session, job.id)).encode()
    file_id = new_sortable_id("file")
    path = storage.file_path(file_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = storage.tmp_dir() / f"{file_id}.csv"
    tmp.write_bytes(data)
    tmp.rename(path)
    with session_scope() as session:
        session.add(
            File(
                id=file_id,
                owner=job.owner,
                filename=f"{job.id}_results.csv",
                purpose="fine-tune-results",
                bytes=len(data),
                format="csv",
                records=data.count(b"\n") - 1,
                created_at=now_ts(),
            )
        )
    return file_id


def method_message(summary: dict[str, Any]) -> str:
    """The validation event's method line: trainable parameters and the memory estimate."""
    memory = summary["memory_estimate"]
    return (
        f"Method {summary['training_method']}: {summary['trainable_parameters']:,} of "
        f"{summary['total_parameters']:,} parameters trainable; memory estimate "
        f"{memory['total_gib']:.2f} GiB (micro-batch {memory['micro_batch_size']} x "
        f"{memory['sequence_length']} tokens, {memory['precision']})"
    )


def store_plan_stats(job_id: str, summary: dict[str, Any]) -> None:
    """Parameter counts and the memory estimate into Job.stats, for the job object."""
    names = ("training_method", "trainable_parameters", "total_parameters", "memory_estimate")
    with session_scope() as session:
        merge_stats(session, job_id, {name: summary[name] for name in names})


def finite(values: dict[str, Any]) -> dict[str, Any]:
    """values without NaN or infinite floats, which JSON columns refuse."""
    return {k: v for k, v in values.items() if not (isinstance(v, float) and not math.isfinite(v))}
