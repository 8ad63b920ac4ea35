"""Fine-tuning jobs: create, list, read, cancel, pause, resume, events, checkpoints."""

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from api import job_reads
from api.auth import Owner
from api.deps import JobDep, SessionDep
from api.events_stream import event_stream_response
from api.job_views import checkpoint_out, event_out, job_out
from api.jobs import build_job, dry_run_plan, metadata_conditions
from api.pagination import cursor_row, newest_first
from api.queue import send_training
from api.schemas import CheckpointOut, EventOut, JobCreate, JobOut, ListPage
from api.transitions import transition
from shared.db.tables import Checkpoint, Job, JobEvent

log = logging.getLogger(__name__)
router = APIRouter(prefix="/fine_tuning/jobs", tags=["fine-tuning"])

Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("", response_model=JobOut, operation_id="createJob", summary="Create a job")
def create_job(body: JobCreate, owner: Owner, session: SessionDep) -> Any:
    """Store the job (queued), commit, then wake a training worker.

    With dry_run the job is checked and planned by a worker but never stored or queued.
    """
    job = build_job(session, owner, body)
    if body.dry_run:
        # Not a job object: the plan bypasses JobOut's response model.
        return JSONResponse(dry_run_plan(job))
    session.add(job)
    session.commit()  # the row exists before any worker can look for it
    send_training(job.id)
    return job_out(job)


@router.get(
    "",
    response_model=ListPage[JobOut],
    operation_id="listJobs",
    summary="List jobs",
)
def list_jobs(
    request: Request, owner: Owner, session: SessionDep, after: str | None = None, limit: Limit = 20
) -> ListPage[JobOut]:
    """The caller's jobs, newest first; filtered by metadata[key]=value pairs or metadata=null."""
    # metadata stays undeclared: openapi-python-client flattens a deepObject query to
    # key=value, and its users would silently get every job.
    dialect = session.get_bind().dialect.name
    filters = metadata_conditions(request.query_params, dialect)
    query = select(Job).where(Job.owner == owner, *filters)
    after_row = cursor_row(lambda i: session.scalars(query.where(Job.id == i)).first(), after)
    rows, has_more = newest_first(session, query, after_row, [Job.created_at, Job.id], limit)
    return ListPage[JobOut](data=[job_out(r) for r in rows], has_more=has_more)


@router.get("/{job_id}", response_model=JobOut, operation_id="readJob", summary="Retrieve a job")
async def read_job(job_id: str, owner: Owner) -> Response:
    """One of the caller's jobs: the route clients poll, so from memory while the database is
    unchanged (api/job_reads.py), else one thread hop and one short session."""
    return Response(await job_reads.read(job_id, owner), media_type="application/json")


@router.post(
    "/{job_id}/cancel", response_model=JobOut, operation_id="cancelJob", summary="Cancel a job"
)
def cancel_job(job_id: str, owner: Owner, session: SessionDep) -> JobOut:
    """Cancel now if not running; a running job is asked to stop within a few steps."""
    job, _ = transition(session, owner, job_id, "cancel")
    return job_out(job)


@router.post(
    "/{job_id}/pause", response_model=JobOut, operation_id="pauseJob", summary="Pause a job"
)
def pause_job(job_id: str, owner: Owner, session: SessionDep) -> JobOut:
    """Pause now if waiting; a running job is asked to checkpoint and stop."""
    job, _ = transition(session, owner, job_id, "pause")
    return job_out(job)


@router.post(
    "/{job_id}/resume", response_model=JobOut, operation_id="resumeJob", summary="Resume a job"
)
def resume_job(job_id: str, owner: Owner, session: SessionDep) -> JobOut:
    """Queue a paused job again and wake a worker (it resumes from its last checkpoint)."""
    job, changed = transition(session, owner, job_id, "resume")
    session.commit()  # queued in the database before the worker is woken
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
    job: JobDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    stream: bool = False,
) -> Any:
    """The job's events, newest first; or with stream=true oldest first, live.

    With stream=true, `after` names the last event the client holds: the stream starts there.
    """
    scope = select(JobEvent).where(JobEvent.job_id == job.id)
    after_row = cursor_row(lambda i: session.scalars(scope.where(JobEvent.id == i)).first(), after)
    if stream:
        return event_stream_response(job.owner, job.id, after_row.seq if after_row else 0)
    rows, has_more = newest_first(session, scope, after_row, [JobEvent.seq], limit)
    return ListPage[EventOut](data=[event_out(r) for r in rows], has_more=has_more)


@router.get(
    "/{job_id}/checkpoints",
    response_model=ListPage[CheckpointOut],
    operation_id="listJobCheckpoints",
    summary="List a job's checkpoints",
)
def list_checkpoints(
    job: JobDep,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> ListPage[CheckpointOut]:
    """The job's complete checkpoints, newest (highest step) first."""
    scope = select(Checkpoint).where(Checkpoint.job_id == job.id)
    after_row = cursor_row(
        lambda i: session.scalars(scope.where(Checkpoint.id == i)).first(), after
    )
    rows, has_more = newest_first(session, scope, after_row, [Checkpoint.step], limit)
    return ListPage[CheckpointOut](data=[checkpoint_out(r) for r in rows], has_more=has_more)
