"""Sending job messages from inside a worker (sweep, SIGTERM requeue), routed by fit.

A job goes to the queue shared.workers.place picks from its memory estimate and the live
workers. One that no live worker can run gets no message: it waits queued (an event says
why), the sweep tries again every requeue_after_seconds, and after
unplaceable_timeout_seconds it fails with no_worker_fits.
"""

import logging
import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.db.session import session_scope
from shared.db.tables import Job, JobStatus
from shared.jobs import Lease, LeaseLost, add_events, event_row, release_job, retry_db
from shared.naming import TRAIN_TASK, TRAINING_QUEUE
from shared.settings import get_settings
from shared.workers import Placement, place, place_job
from worker.reporting import merge_stats

log = logging.getLogger(__name__)
UNPLACEABLE = "unplaceable_since"


def _send(job_id: str, queue: str) -> bool:
    from worker.celery_app import sender_for

    try:
        sender_for(get_settings().redis_url).send_task(
            TRAIN_TASK, args=[job_id], queue=queue, retry=False
        )
        return True
    except Exception as exc:  # the sweep sends it again later; the DB still holds the job
        log.warning("job %s: could not reach the broker: %s", job_id, exc)
        return False


def _mark_unplaceable(session: Session, job_id: str, reason: str, now: float) -> None:
    """Record since when the job waits for a worker that fits, with an event saying why."""
    timeout = get_settings().unplaceable_timeout_seconds
    merge_stats(session, job_id, {UNPLACEABLE: now})
    message = (
        f"No live worker can run this job: {reason}. It stays queued until a worker with "
        f"enough memory joins, for at most {timeout:g} s (unplaceable_timeout_seconds)"
    )
    add_events(session, [event_row(job_id, message, level="warn")])


def settle_placement(session: Session, job_id: str, now: float) -> Placement:
    """Where a waiting job goes now; unplaceable: marked, or failed once it waited too long."""
    settings = get_settings()
    placement = place_job(session, job_id, settings.lease_seconds)
    row = session.execute(
        select(Job.status, Job.lease_owner, Job.stats).where(Job.id == job_id)
    ).one_or_none()
    if row is None or row.status != JobStatus.queued or row.lease_owner is not None:
        return placement
    since = (row.stats or {}).get(UNPLACEABLE)
    if placement.queue is not None:
        if since is not None:
            merge_stats(session, job_id, {UNPLACEABLE: None})
            where = placement.worker_id or "the training queue"
            add_events(session, [event_row(job_id, f"A worker that fits is live: sent to {where}")])
        return placement
    if since is None:
        _mark_unplaceable(session, job_id, placement.reason or "", now)
    elif now - float(since) >= settings.unplaceable_timeout_seconds:
        message = (
            f"No live worker could run this job for {now - float(since):.0f} s: "
            f"{placement.reason}; add a worker with more memory, or use a smaller batch_size "
            "or block_size, or training_method lora"
        )
        failed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued, Job.lease_owner.is_(None))
            .values(
                status=JobStatus.failed,
                finished_at=int(now),
                error={"code": "no_worker_fits", "message": message, "param": None},
            )
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if failed:
            add_events(session, [event_row(job_id, f"Job failed: {message}", level="error")])
    return placement


def send_job(job_id: str) -> bool:
    """Wake a worker that can run job_id; False when none is live or the broker is away."""
    try:
        with session_scope() as session:
            queue = settle_placement(session, job_id, time.time()).queue
    except Exception as exc:  # the DB is away: the shared queue, whose worker plans again
        log.warning("job %s: placement not read, sent to %s: %s", job_id, TRAINING_QUEUE, exc)
        queue = TRAINING_QUEUE
    if queue is None:
        return False
    return _send(job_id, queue)


def forward(lease: Lease, stats: dict[str, Any], why: str, gpus: int = 1) -> bool:
    """Give a job this worker lacks the memory or GPUs for back to the queue, and send it on.

    why says what it lacks ("{owner}" becomes this worker's id). The attempt is refunded;
    stats (the plan's memory estimate) are kept, so the sweep and the API route it from now
    on without planning again. False when the lease was lost.
    """
    need = int(stats["memory_estimate"]["total_bytes"])
    short = why.replace("{owner}", lease.owner)

    def transaction() -> Placement:
        now = time.time()
        with session_scope() as session:
            release_job(session, lease, JobStatus.queued, refund_attempt=True)
            merge_stats(session, lease.job_id, stats)
            placement = place(session, need, get_settings().lease_seconds, gpus)
            if placement.queue == TRAINING_QUEUE:  # this worker's own row is not live
                placement = Placement(None, "no other live worker reports enough of it")
            if placement.queue is not None:
                where = placement.worker_id or "the training queue"
                add_events(session, [event_row(lease.job_id, f"{short}: sent to {where}")])
            else:
                add_events(session, [event_row(lease.job_id, short)])
                _mark_unplaceable(session, lease.job_id, placement.reason or "", now)
            return placement

    try:
        placement = retry_db(
            transaction, f"job {lease.job_id}: forwarding", get_settings().lease_seconds
        )
    except LeaseLost:
        log.warning("job %s: lease lost before it could be forwarded", lease.job_id)
        return False
    if placement.queue is not None:
        _send(lease.job_id, placement.queue)
    return True
