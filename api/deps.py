"""Request dependencies and owner-checked lookups: a session per request, the caller's job."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from api.auth import Owner
from api.errors import not_found
from shared.db.session import session_scope
from shared.db.tables import File, Job


def request_session() -> Iterator[Session]:
    """One short transaction around the route: committed before the response is sent."""
    with session_scope() as session:
        yield session


# scope="function": commit (or roll back) before the client hears back, never after.
SessionDep = Annotated[Session, Depends(request_session, scope="function")]


def find_file(session: Session, owner: str, file_id: str) -> File | None:
    """The caller's live file, or None (another owner's reads as missing)."""
    row = session.get(File, file_id)
    if row is None or row.owner != owner or row.deleted_at is not None:
        return None
    return row


def owned_file(session: Session, owner: str, file_id: str, param: str | None = None) -> File:
    """The caller's live file, or 404 naming it (another owner's reads as missing)."""
    row = find_file(session, owner, file_id)
    if row is None:
        raise not_found("file", file_id, param=param)
    return row


def owned_job(job_id: str, owner: Owner, session: SessionDep) -> Job:
    """The caller's job named in the path, or 404 (another owner's job reads as missing)."""
    job = session.get(Job, job_id)
    if job is None or job.owner != owner:
        raise not_found("job", job_id)
    return job


JobDep = Annotated[Job, Depends(owned_job)]
