"""The sweep: re-send queued jobs nobody claimed, reclaim lapsed leases, fail endless retries."""

import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import or_, select, update

from shared.db.session import session_scope
from shared.db.tables import Job, JobStatus
from shared.jobs import add_events, event_row
from shared.settings import get_settings
from worker.dispatch import send_job

log = logging.getLogger(__name__)
WAITING = (JobStatus.validating_files, JobStatus.queued)


@dataclass
class SweepResult:
    """What one sweep did, for logs and tests."""

    resent: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _reclaim_lapsed(now: float, max_attempts: int, result: SweepResult) -> None:
    with session_scope() as session:
        lapsed = session.execute(
            select(
                Job.id, Job.status, Job.attempt, Job.steps_completed, Job.lease_expires_at
            ).where(Job.lease_owner.is_not(None), Job.lease_expires_at < now)
        ).all()
    for job_id, status, attempt, steps, expired_at in lapsed:
        during = f"during step {steps + 1}" if status == JobStatus.running else f"while {status}"
        give_up = attempt >= max_attempts
        values: dict = {"lease_owner": None, "lease_expires_at": None, "enqueued_at": now}
        if give_up:
            message = f"worker lost {during}, {attempt} times"
            values.update(
                status=JobStatus.failed,
                finished_at=int(now),
                error={"code": "worker_lost", "message": message, "param": None},
            )
        else:
            message = f"Worker lost {during} (attempt {attempt}); job requeued"
            values.update(status=JobStatus.queued if status == JobStatus.running else status)
        with session_scope() as session:
            changed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.attempt == attempt, Job.lease_expires_at == expired_at)
                .values(**values)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if changed:
                level = "error" if give_up else "warn"
                add_events(session, [event_row(job_id, message, level=level)])
        if changed:
            (result.failed if give_up else result.requeued).append(job_id)


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
    _reclaim_lapsed(now, settings.max_attempts, result)
    _resend_unclaimed(now, settings.requeue_after_seconds, result)
    for job_id in result.requeued + result.resent:
        send_job(job_id)
    if result.resent or result.requeued or result.failed:
        log.info(
            "sweep: resent %s, requeued %s, failed %s",
            result.resent,
            result.requeued,
            result.failed,
        )
    return result
