"""Per-owner quotas on active jobs and stored bytes: a 429 that says how to get under them."""

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.errors import ApiError
from api.locks import lock_owner
from shared.db.tables import TERMINAL_STATUSES, Checkpoint, File, FineTunedModel, Job
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
    """Bytes the owner's quota counts: live files, live models, checkpoints, and running jobs.

    A job that has not finished counts as the larger of what it stored so far and the
    estimate made at create (Job.stats output_bytes_estimate): it has its place reserved.
    """
    files = session.scalar(
        select(func.sum(File.bytes)).where(File.owner == owner, File.deleted_at.is_(None))
    )
    models = session.scalar(
        select(func.sum(FineTunedModel.bytes)).where(
            FineTunedModel.owner == owner, FineTunedModel.deleted_at.is_(None)
        )
    )
    per_job = select(Checkpoint.job_id, func.sum(Checkpoint.bytes)).where(Checkpoint.owner == owner)
    checkpoints = {
        job_id: int(size or 0)
        for job_id, size in session.execute(per_job.group_by(Checkpoint.job_id)).all()
    }
    unfinished = session.execute(
        select(Job.id, Job.stats).where(
            Job.owner == owner, Job.status.not_in([s.value for s in TERMINAL_STATUSES])
        )
    ).all()
    total = int(files or 0) + int(models or 0) + sum(checkpoints.values())
    for job_id, stats in unfinished:
        reserved = int((stats or {}).get("output_bytes_estimate") or 0)
        total += max(0, reserved - checkpoints.get(job_id, 0))
    return total


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


def check_job_outputs(session: Session, owner: str, estimate: int) -> None:
    """429 before a job starts when its checkpoints and model would pass the storage quota.

    Call after check_active_jobs (the owner is locked) and insert the job, whose stats
    carry the estimate, in the same transaction.
    """
    limit = get_settings().max_stored_bytes_per_owner
    stored = stored_bytes(session, owner)
    if stored + estimate > limit:
        raise ApiError(
            429,
            f"this job would store up to {estimate} bytes (its kept checkpoints and the "
            f"final model), and {stored} of your {limit} bytes are used "
            "(max_stored_bytes_per_owner); lower keep_checkpoints, pick a smaller model or "
            "delete models (DELETE /v1/models/{id}) and files (DELETE /v1/files/{id})",
            type="rate_limit_error",
            param="keep_checkpoints",
            code="storage_quota_exceeded",
        )
