"""Fine-tuning jobs: create, list, read, cancel, pause, resume, events, checkpoints."""

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import Owner
from api.errors import not_found
from api.events_stream import stream_events
from api.job_requests import build_job, dry_run_plan
from api.job_views import checkpoint_out, event_out, job_out
from api.pagination import cursor_row, newest_first
from api.queue import send_training
from api.schemas import CheckpointOut, EventOut, JobCreate, JobOut, ListPage
from api.transitions import transition
from shared.db.models import Checkpoint, Job, JobEvent
from shared.db.session import session_scope

log = logging.getLogger(__name__)
router = APIRouter(prefix="/fine_tuning/jobs", tags=["fine-tuning"])

Limit = Annotated[int, Query(ge=1, le=100)]


def find_job(session: Session, owner: str, job_id: str) -> Job:
    """The caller's job, or 404 (another owner's reads as missing)."""
    job = session.get(Job, job_id)
    if job is None or job.owner != owner:
        raise not_found("job", job_id)
    return job


@router.post("", response_model=JobOut, operation_id="createJob", summary="Create a job")
def create_job(body: JobCreate, owner: Owner) -> Any:
    """Store the job (validating_files), commit, then wake a training worker.

    With dry_run the job is checked and planned by a worker but never stored or queued.
    """
    with session_scope() as session:
        job = build_job(session, owner, body)
        if body.dry_run:
            # Not a job object: the plan bypasses JobOut's response model.
            return JSONResponse(dry_run_plan(job))
        session.add(job)
    send_training(job.id)
    return job_out(job)


@router.get("", response_model=ListPage[JobOut], operation_id="listJobs", summary="List jobs")
def list_jobs(owner: Owner, after: str | None = None, limit: Limit = 20) -> ListPage[JobOut]:
    """The caller's jobs, newest first."""
    with session_scope() as session:
        query = select(Job).where(Job.owner == owner)
        after_row = cursor_row(lambda i: session.scalars(query.where(Job.id == i)).first(), after)
        rows, has_more = newest_first(session, query, after_row, [Job.created_at, Job.id], limit)
        return ListPage[JobOut](data=[job_out(r) for r in rows], has_more=has_more)


@router.get("/{job_id}", response_model=JobOut, operation_id="readJob", summary="Retrieve a job")
def read_job(job_id: str, owner: Owner) -> JobOut:
    """One of the caller's jobs."""
    with session_scope() as session:
        return job_out(find_job(session, owner, job_id))


@router.post(
    "/{job_id}/cancel", response_model=JobOut, operation_id="cancelJob", summary="Cancel a job"
)
def cancel_job(job_id: str, owner: Owner) -> JobOut:
    """Cancel now if not running; a running job is asked to stop within a few steps."""
    with session_scope() as session:
        job, _ = transition(session, owner, job_id, "cancel")
        return job_out(job)


@router.post(
    "/{job_id}/pause", response_model=JobOut, operation_id="pauseJob", summary="Pause a job"
)
def pause_job(job_id: str, owner: Owner) -> JobOut:
    """Pause now if waiting; a running job is asked to checkpoint and stop."""
    with session_scope() as session:
        job, _ = transition(session, owner, job_id, "pause")
        return job_out(job)


@router.post(
    "/{job_id}/resume", response_model=JobOut, operation_id="resumeJob", summary="Resume a job"
)
def resume_job(job_id: str, owner: Owner) -> JobOut:
    """Queue a paused job again and wake a worker (it resumes from its last checkpoint)."""
    with session_scope() as session:
        job, changed = transition(session, owner, job_id, "resume")
    if changed:
        send_training(job_id)
    return job_out(job)


@router.get(
    "/{job_id}/events",
    response_model=ListPage[EventOut],
    operation_id="listJobEvents",
    summary="List a job's events (stream=true: Server-Sent Events until the job ends)",
    responses={200: {"content": {"text/event-stream": {}}}},
)
def list_events(
    job_id: str,
    owner: Owner,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    stream: bool = False,
) -> Any:
    """The job's events, newest first; or with stream=true oldest first, live.

    With stream=true, `after` names the last event the client holds: the stream starts there.
    """
    with session_scope() as session:
        find_job(session, owner, job_id)
        scope = select(JobEvent).where(JobEvent.job_id == job_id)
        after_row = cursor_row(
            lambda i: session.scalars(scope.where(JobEvent.id == i)).first(), after
        )
        if stream:
            return StreamingResponse(
                stream_events(job_id, after_seq=after_row.seq if after_row else 0),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )
        rows, has_more = newest_first(session, scope, after_row, [JobEvent.seq], limit)
        return ListPage[EventOut](data=[event_out(r) for r in rows], has_more=has_more)


@router.get(
    "/{job_id}/checkpoints",
    response_model=ListPage[CheckpointOut],
    operation_id="listJobCheckpoints",
    summary="List a job's checkpoints",
)
def list_checkpoints(
    job_id: str,
    owner: Owner,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> ListPage[CheckpointOut]:
    """The job's complete checkpoints, newest (highest step) first."""
    with session_scope() as session:
        find_job(session, owner, job_id)
        scope = select(Checkpoint).where(Checkpoint.job_id == job_id)
        after_row = cursor_row(
            lambda i: session.scalars(scope.where(Checkpoint.id == i)).first(), after
        )
        rows, has_more = newest_first(session, scope, after_row, [Checkpoint.step], limit)
        return ListPage[CheckpointOut](data=[checkpoint_out(r) for r in rows], has_more=has_more)
