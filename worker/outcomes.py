"""The outcome of a claimed job, each recorded by its own handler (success, failure, ...)."""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from shared.db.session import session_scope
from shared.db.tables import File, FineTunedModel, JobStatus
from shared.ids import now_ts
from shared.jobs import (
    Lease,
    LeaseLost,
    add_events,
    event_row,
    finish_job,
    lock_job,
    release_job,
    retry_db,
)
from shared.metrics_table import load_points, render_csv
from shared.naming import RESULTS_PURPOSE
from shared.settings import get_settings
from shared.storage import Manifest, Storage, model_prefix
from worker.publishing import discard_unless_visible, publish, stage, stage_results
from worker.reporting import DbReporter, finite, merge_stats
from worker.training.callbacks import StopReason

if TYPE_CHECKING:  # the engine imports torch; run_job imports this module
    from worker.run_job import JobSnapshot
    from worker.training.engine import TrainResult

log = logging.getLogger(__name__)
# Out of memory mid-run: retried this many times, halving the micro-batch each time.
MAX_MEMORY_RETRIES = 2


class Outcome(StrEnum):
    """How one delivery of a job ended; run_job returns it (for logs and tests)."""

    not_claimed = "not_claimed"  # another worker has it, or it is finished or not waiting
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    paused = "paused"
    requeued = "requeued"  # the worker shut down: checkpointed and back in the queue
    retried = "retried"  # out of GPU memory: back in the queue with a smaller micro-batch
    forwarded = "forwarded"  # needs more memory than this worker offers: sent to one that fits
    lease_lost = "lease_lost"  # the job is not this worker's any more: nothing written
    left_for_sweep = "left_for_sweep"  # the database was away: the sweep decides later


@dataclass(frozen=True)
class TrainedRun:
    """What an outcome handler needs once the engine has returned."""

    lease: Lease
    job: "JobSnapshot"
    result: "TrainResult"
    reporter: DbReporter
    ft_id: str
    storage: Storage
    work: Path  # the attempt's scratch folder: the engine's checkpoints and final model


def handle_lease_lost(lease: Lease) -> Outcome:
    """Another worker, or the user's pause or cancel, took the job: write nothing."""
    log.warning("job %s: lease lost; the job is not this worker's any more", lease.job_id)
    return Outcome.lease_lost


def handle_failure(lease: Lease, error: dict[str, Any]) -> Outcome:
    """failed, with the OpenAI-shaped error and an error event."""

    def transaction() -> None:
        with session_scope() as session:
            finish_job(session, lease, JobStatus.failed, error=error)
            message = f"Job failed: {error['message']}"
            add_events(session, [event_row(lease.job_id, message, level="error")])

    try:
        retry_db(
            transaction, f"job {lease.job_id}: recording failure", get_settings().lease_seconds
        )
    except LeaseLost:
        log.warning("job %s: lease lost before the failure could be recorded", lease.job_id)
        return Outcome.lease_lost
    return Outcome.failed


def land(run: TrainedRun, what: str, write: Callable[[Session], Outcome]) -> Outcome:
    """write in one transaction, retried through a DB blip while the lease may still hold.

    If it never lands, the error escapes, the lease lapses and the sweep requeues the job:
    an outcome is never claimed unrecorded.
    """

    def transaction() -> Outcome:
        with session_scope() as session:
            return write(session)

    heartbeat = run.reporter.heartbeat
    return retry_db(
        transaction, f"job {run.job.id}: {what}", heartbeat.lease_seconds, heartbeat.lost
    )


def handle_success(run: TrainedRun) -> Outcome:
    """succeeded: the model and results published, their rows and the closing event together.

    A cancel the user asked for after the last step still wins (nothing is published); a
    pause that late has nothing left to pause.
    """
    job, result, heartbeat = run.job, run.result, run.reporter.heartbeat
    model, results = retry_db(
        lambda: _stage_outputs(run),
        f"job {job.id}: storing the model and results",
        heartbeat.lease_seconds,
        heartbeat.lost,
    )

    def write(session: Session) -> Outcome:
        if lock_job(session, run.lease).cancel:
            return _write_cancelled(session, run)
        # Fenced like every write here, and before finish_job, which gives the lease up.
        published = publish(session, run.lease, run.storage, model)
        results_id = _add_results_file(
            session, job, publish(session, run.lease, run.storage, results)
        )
        finish_job(
            session,
            run.lease,
            JobStatus.succeeded,
            fine_tuned_model=run.ft_id,
            trained_tokens=result.trained_tokens,
            steps_completed=result.step,
            estimated_finish=None,
            pause_requested=False,
        )
        merge_stats(
            session,
            job.id,
            {"result_files": [results_id], "final_metrics": finite(result.final_metrics)},
        )
        session.add(
            FineTunedModel(
                id=run.ft_id,
                owner=job.owner,
                job_id=job.id,
                base_model=job.model,
                created_at=now_ts(),
                path=published.prefix,
                bytes=sum(entry.bytes for entry in published.files),
            )
        )
        add_events(session, [event_row(job.id, "The job has successfully completed")])
        return Outcome.succeeded

    try:
        return land(run, "recording success", write)
    finally:
        for staged in (model, results):
            discard_unless_visible(run.storage, staged)


def handle_cancel(run: TrainedRun) -> Outcome:
    """cancelled, at the step the engine stopped."""
    return land(run, "recording the cancel", lambda session: _write_cancelled(session, run))


def handle_pause(run: TrainedRun) -> Outcome:
    """paused after the engine's checkpoint, attempt refunded; unless a cancel came since."""

    def write(session: Session) -> Outcome:
        if lock_job(session, run.lease).cancel:
            return _write_cancelled(session, run)
        return _write_paused(session, run)

    return land(run, "recording the pause", write)


def handle_shutdown(run: TrainedRun) -> Outcome:
    """queued again after the engine's checkpoint (SIGTERM), attempt refunded, and re-sent.

    The user's cancel or pause, if one came meanwhile, is what gets recorded instead.
    """
    from worker.dispatch import send_job

    def write(session: Session) -> Outcome:
        requests = lock_job(session, run.lease)
        if requests.cancel:
            return _write_cancelled(session, run)
        if requests.pause:
            return _write_paused(session, run)
        release_job(session, run.lease, JobStatus.queued, refund_attempt=True)
        message = f"Worker shutting down: checkpointed at step {run.result.step}; job requeued"
        add_events(session, [event_row(run.job.id, message)])
        return Outcome.requeued

    outcome = land(run, "requeueing", write)
    if outcome is Outcome.requeued:
        send_job(run.job.id)
    return outcome


def handle_out_of_memory(run: TrainedRun) -> Outcome:
    """queued again with half the micro-batch (MAX_MEMORY_RETRIES times), else failed.

    The engine checkpointed the last full step; the next attempt resumes there.
    """
    from worker.dispatch import send_job

    job = run.job
    micro = int(run.result.final_metrics["micro_batch_size"])
    retries = int((job.stats or {}).get("memory_retries", 0))
    where = f"Out of GPU memory in step {run.result.step + 1} with micro-batch {micro}"

    def write(session: Session) -> Outcome:
        if micro <= 1 or retries >= MAX_MEMORY_RETRIES:
            tried = f"after {retries} smaller retries" if retries else "with one example"
            message = (
                f"{where}, {tried}; the GPU is too small for this job while other work "
                "shares it: use a smaller max_length or block_size, training_method lora, "
                "or a worker with more memory"
            )
            error = {"code": "out_of_memory", "message": message, "param": None}
            finish_job(session, run.lease, JobStatus.failed, error=error)
            add_events(session, [event_row(job.id, f"Job failed: {message}", level="error")])
            return Outcome.failed
        smaller = micro // 2
        release_job(session, run.lease, JobStatus.queued, refund_attempt=True)
        merge_stats(session, job.id, {"memory_retries": retries + 1, "micro_batch_limit": smaller})
        message = (
            f"{where}: requeued with micro-batch {smaller} "
            f"(retry {retries + 1} of {MAX_MEMORY_RETRIES})"
        )
        add_events(session, [event_row(job.id, message, level="warn")])
        return Outcome.retried

    outcome = land(run, "recording the out-of-memory stop", write)
    if outcome is Outcome.retried:
        send_job(job.id)
    return outcome


# Each way a training run can end, and the one function that records it.
OUTCOME_HANDLERS: dict[StopReason | None, Callable[[TrainedRun], Outcome]] = {
    None: handle_success,
    StopReason.cancel: handle_cancel,
    StopReason.pause: handle_pause,
    StopReason.shutdown: handle_shutdown,
    StopReason.out_of_memory: handle_out_of_memory,
}


def _write_cancelled(session: Session, run: TrainedRun) -> Outcome:
    finish_job(session, run.lease, JobStatus.cancelled)
    add_events(session, [event_row(run.job.id, f"Job cancelled at step {run.result.step}")])
    return Outcome.cancelled


def _write_paused(session: Session, run: TrainedRun) -> Outcome:
    release_job(session, run.lease, JobStatus.paused, refund_attempt=True, pause_requested=False)
    add_events(session, [event_row(run.job.id, f"Job paused at step {run.result.step}")])
    return Outcome.paused


def _stage_outputs(run: TrainedRun) -> tuple[Manifest, Manifest]:
    """Upload the final model and the metrics CSV; both become visible with the outcome."""
    job, storage = run.job, run.storage
    assert run.result.model_dir is not None  # a completed run saved its model
    model = stage(
        storage, run.lease, model_prefix(job.id), run.result.model_dir, {"model": run.ft_id}
    )
    with session_scope() as session:
        data = render_csv(load_points(session, job.id)).encode()
    csv = run.work / "results.csv"
    csv.write_bytes(data)
    records = data.count(b"\n") - 1
    results = stage_results(storage, run.lease, csv, f"{job.id}_results.csv", records)
    return model, results


def _add_results_file(session: Session, job: "JobSnapshot", results: Manifest) -> str:
    """The results file row, once (an earlier attempt may have published the manifest)."""
    file_id = str(results.info["file_id"])
    if session.get(File, file_id) is None:
        session.add(
            File(
                id=file_id,
                owner=job.owner,
                filename=results.info["filename"],
                purpose=RESULTS_PURPOSE,
                bytes=results.total_bytes,
                format="csv",
                records=results.info["records"],
                created_at=now_ts(),
            )
        )
    return file_id
