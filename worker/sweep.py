"""The sweep: re-send queued jobs nobody claimed, reclaim lapsed leases, fail endless retries."""

import logging
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import or_, select, update

from shared.db.session import session_scope
from shared.db.tables import Job, JobStatus
from shared.jobs import add_events, event_row
from shared.settings import get_settings
from worker.dispatch import send_job

log = logging.getLogger(__name__)
# validating_files without a lease: a job created before jobs waited as queued.
WAITING = (JobStatus.queued, JobStatus.validating_files)


@dataclass
class SweepResult:
    """What one sweep did, for logs and tests."""

    resent: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    # Paused or cancelled, as the user had asked while the worker was lost.
    settled: list[str] = field(default_factory=list)


class Lapsed(NamedTuple):
    """A job whose worker stopped renewing its lease, as the sweep read it."""

    job_id: str
    status: JobStatus
    attempt: int
    steps: int
    expired_at: float | None
    cancel: bool
    pause: bool


def _lapsed_values(job: Lapsed, now: float, max_attempts: int) -> tuple[dict[str, Any], str, str]:
    """What a lapsed job becomes: (values, event message, level); the user's request wins."""
    status, attempt = job.status, job.attempt
    during = f"during step {job.steps + 1}" if status == JobStatus.running else f"while {status}"
    values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None, "enqueued_at": now}
    if job.cancel:
        values.update(status=JobStatus.cancelled, finished_at=int(now), pause_requested=False)
        return values, f"Worker lost {during} (attempt {attempt}); job cancelled as asked", "warn"
    if attempt >= max_attempts:
        message = f"worker lost {during}, {attempt} times"
        values.update(
            status=JobStatus.failed,
            finished_at=int(now),
            error={"code": "worker_lost", "message": message, "param": None},
        )
        return values, message, "error"
    if job.pause:
        values.update(status=JobStatus.paused, pause_requested=False)
        return values, f"Worker lost {during} (attempt {attempt}); job paused as asked", "warn"
    values.update(status=JobStatus.queued)
    return values, f"Worker lost {during} (attempt {attempt}); job requeued", "warn"


def lapsed_jobs(now: float) -> list[Lapsed]:
    """Jobs whose worker stopped renewing its lease, with what the sweep decides on."""
    columns = (
        Job.id,
        Job.status,
        Job.attempt,
        Job.steps_completed,
        Job.lease_expires_at,
        Job.cancel_requested,
        Job.pause_requested,
    )
    with session_scope() as session:
        lapsed = Job.lease_owner.is_not(None), Job.lease_expires_at < now
        return [Lapsed(*row) for row in session.execute(select(*columns).where(*lapsed))]


def settle_lapsed(job: Lapsed, now: float, max_attempts: int, result: SweepResult) -> None:
    """Requeue, pause, cancel or fail one lapsed job, if it is still as it was read."""
    values, message, level = _lapsed_values(job, now, max_attempts)
    with session_scope() as session:
        # Compare-and-set on what was read: a claim, a renewal or the user's request since
        # then changes one of these, and the next sweep decides again.
        changed = session.execute(
            update(Job)
            .where(
                Job.id == job.job_id,
                Job.status == job.status,
                Job.attempt == job.attempt,
                Job.lease_expires_at == job.expired_at,
                Job.cancel_requested == job.cancel,
                Job.pause_requested == job.pause,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if changed:
            add_events(session, [event_row(job.job_id, message, level=level)])
    if changed:
        outcome = values["status"]
        if outcome == JobStatus.queued:
            result.requeued.append(job.job_id)
        elif outcome == JobStatus.failed:
            result.failed.append(job.job_id)
        else:
            result.settled.append(job.job_id)


def _resend_unclaimed(now: float, after: float, result: SweepResult) -> None:
    with session_scope() as session:
        stale = or_(Job.enqueued_at.is_(None), Job.enqueued_at < now - after)
        job_ids = list(
            session.execute(
                select(Job.id).where(Job.status.in_(WAITING), Job.lease_owner.is_(None), stale)
            ).scalars()
        )
        if job_ids:
            session.execute(
                update(Job)
                .where(Job.id.in_(job_ids))
                .values(enqueued_at=now)
                .execution_options(synchronize_session=False)
            )
    result.resent.extend(job_ids)


def sweep_once(now: float | None = None) -> SweepResult:
    """One pass; safe to run from every worker at once (claims are compare-and-set)."""
    settings = get_settings()
    now = time.time() if now is None else now
    result = SweepResult()
    for row in lapsed_jobs(now):
        settle_lapsed(row, now, settings.max_attempts, result)
    _resend_unclaimed(now, settings.requeue_after_seconds, result)
    for job_id in result.requeued + result.resent:
        send_job(job_id)
    if result.resent or result.requeued or result.failed or result.settled:
        log.info(
            "sweep: resent %s, requeued %s, failed %s, paused or cancelled %s",
            result.resent,
            result.requeued,
            result.failed,
            result.settled,
        )
    return result
