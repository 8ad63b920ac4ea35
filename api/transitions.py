"""Cancel, pause and resume as compare-and-set UPDATEs, safe against a worker's writes.

A job that is not running yet is paused or cancelled at once, and the lease of a worker
still validating it is dropped: that worker's next write is refused (the lease is its
fence), so the user's request is never undone. A running job gets a request flag that
the worker honours within a few steps; its final write reads the flags under a row lock.
"""

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import case, update
from sqlalchemy.orm import Session

from api.errors import ApiError, not_found
from shared.db.tables import Job, JobEvent, JobStatus
from shared.ids import new_id, now_ts

S = JobStatus
# A worker may change the status between our read and our write: re-read and decide again.
_ATTEMPTS = 5

# For each action: status -> (new values, event message) or None to return the job unchanged.
TransitionTable = dict[str, tuple[dict[str, Any], str | None] | None]


def _taken_from_worker() -> dict[str, Any]:
    """Drop the lease of a worker validating the job, and refund the attempt it spent."""
    return {
        "lease_owner": None,
        "lease_expires_at": None,
        "attempt": case((Job.lease_owner.is_not(None), Job.attempt - 1), else_=Job.attempt),
    }


def _cancel_table() -> TransitionTable:
    cancelled = {
        "status": S.cancelled.value,
        "finished_at": now_ts(),
        "cancel_requested": True,
        **_taken_from_worker(),
    }
    return {
        S.validating_files: (cancelled, "Job cancelled"),
        S.queued: (cancelled, "Job cancelled"),
        S.paused: (cancelled, "Job cancelled"),
        S.running: ({"cancel_requested": True}, "Cancellation requested"),
        S.cancelled: None,
    }


def _pause_table() -> TransitionTable:
    paused = {"status": S.paused.value, "pause_requested": False, **_taken_from_worker()}
    return {
        S.validating_files: (paused, "Job paused"),
        S.queued: (paused, "Job paused"),
        S.running: ({"pause_requested": True}, "Pause requested"),
        S.paused: None,
    }


def _resume_table() -> TransitionTable:
    queued = {"status": S.queued.value, "pause_requested": False, "enqueued_at": time.time()}
    return {S.paused: (queued, "Job resumed")}


TRANSITION_TABLES: dict[str, Callable[[], TransitionTable]] = {
    "cancel": _cancel_table,
    "pause": _pause_table,
    "resume": _resume_table,
}


def _event(job_id: str, message: str) -> JobEvent:
    return JobEvent(
        id=new_id("ftevent"),
        job_id=job_id,
        created_at=now_ts(),
        level="info",
        type="message",
        message=message,
        data=None,
    )


def transition(session: Session, owner: str, job_id: str, action: str) -> tuple[Job, bool]:
    """Apply action to the caller's job; (job, whether the status changed). 409 if not allowed."""
    for _ in range(_ATTEMPTS):
        job = session.get(Job, job_id, populate_existing=True)
        if job is None or job.owner != owner:
            raise not_found("job", job_id)
        table = TRANSITION_TABLES[action]()
        if job.status not in table:
            raise ApiError(
                409,
                f"cannot {action} job {job_id}: its status is {job.status}",
                code="invalid_state",
            )
        step = table[job.status]
        if step is None:
            return job, False
        values, message = step
        if "status" not in values and all(getattr(job, k) == v for k, v in values.items()):
            return job, False  # already requested: asking twice changes nothing
        changed = session.execute(
            update(Job).where(Job.id == job_id, Job.status == job.status).values(**values)
        )
        if getattr(changed, "rowcount", 0) == 1:
            if message:
                session.add(_event(job_id, message))
            session.flush()
            session.refresh(job)
            return job, "status" in values
    raise ApiError(
        409, f"job {job_id} kept changing state; try again", code="conflict", retry_after=1
    )
