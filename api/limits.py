"""Per-owner quotas on active jobs and stored bytes: a 429 that says how to get under them."""

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.errors import ApiError
from api.locks import lock_owner
from shared.db.tables import TERMINAL_STATUSES, File, Job
from shared.settings import get_settings

# Neither quota frees itself within a retry's seconds (a job runs for minutes to hours, bytes
# free only when the owner deletes): the 429 says x-should-retry: false and no Retry-After.


def active_jobs(session: Session, owner: str) -> int:
    """The owner's unfinished jobs (validating_files, queued, running, paused)."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.owner == owner, Job.status.not_in([s.value for s in TERMINAL_STATUSES]))
        )
        or 0
    )


def stored_bytes(session: Session, owner: str) -> int:
    """Bytes of the owner's live files."""
    total = session.scalar(
        select(func.sum(File.bytes)).where(File.owner == owner, File.deleted_at.is_(None))
    )
    return int(total or 0)


def check_active_jobs(session: Session, owner: str) -> None:
    """429 when one more job would exceed max_active_jobs_per_owner.

    Locks the owner until the transaction ends: insert the job in the same transaction,
    and parallel creates cannot all see room for one more.
    """
    limit = get_settings().max_active_jobs_per_owner
    lock_owner(session, owner)
    active = active_jobs(session, owner)
    if active >= limit:
        raise ApiError(
            429,
            f"you have {active} unfinished fine-tuning jobs, the most allowed per owner "
            f"(max_active_jobs_per_owner={limit}); wait for one to finish or cancel one with "
            "POST /v1/fine_tuning/jobs/{id}/cancel",
            type="rate_limit_error",
            code="too_many_active_jobs",
        )


def check_stored_bytes(session: Session, owner: str, incoming: int) -> None:
    """429 when storing incoming more bytes would exceed max_stored_bytes_per_owner.

    Call with incoming=1 before streaming an upload: a full quota is refused at once.
    Locks the owner until the transaction ends, as check_active_jobs does.
    """
    limit = get_settings().max_stored_bytes_per_owner
    lock_owner(session, owner)
    stored = stored_bytes(session, owner)
    if stored + incoming > limit:
        what = f"storing {incoming} more bytes would exceed" if incoming > 1 else "you have used"
        raise ApiError(
            429,
            f"{what} your storage quota: {stored} of {limit} bytes used "
            "(max_stored_bytes_per_owner); delete files you no longer need with "
            "DELETE /v1/files/{id}",
            type="rate_limit_error",
            param="file",
            code="storage_quota_exceeded",
        )
