"""Job ownership in SQL: compare-and-set claims, leases, fencing, events."""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from shared.db.tables import Job, JobEvent, JobStatus
from shared.ids import new_id, now_ts

log = logging.getLogger(__name__)
T = TypeVar("T")
# Waiting for a worker; validating_files only when its worker's lease lapsed (or a job
# created before jobs waited as queued).
CLAIMABLE = (JobStatus.queued, JobStatus.validating_files)
# The statuses a worker holds a lease in: it validates and plans, then trains.
LEASED = (JobStatus.validating_files, JobStatus.running)


class LeaseLost(RuntimeError):
    """The job is not this worker's any more (another worker, or the user's pause or cancel
    took it): stop without writing."""


@dataclass(frozen=True)
class Lease:
    """Proof of ownership; attempt is the fencing token every write is checked against."""

    job_id: str
    owner: str
    attempt: int


@dataclass(frozen=True)
class Requests:
    """The user's pending requests on a running job, read under the row lock."""

    cancel: bool
    pause: bool


def claim_job(
    session: Session, job_id: str, worker_id: str, lease_seconds: float, max_attempts: int
) -> Lease | None:
    """Take a waiting job into validating_files; None when it is not claimable any more."""
    now = time.time()
    status = session.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()
    if status not in CLAIMABLE:
        return None
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == status,
            Job.cancel_requested.is_(False),
            Job.pause_requested.is_(False),
            Job.attempt < max_attempts,
            or_(Job.lease_owner.is_(None), Job.lease_expires_at < now),
        )
        .values(
            status=JobStatus.validating_files,
            lease_owner=worker_id,
            lease_expires_at=now + lease_seconds,
            attempt=Job.attempt + 1,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    attempt = session.execute(select(Job.attempt).where(Job.id == job_id)).scalar_one()
    return Lease(job_id=job_id, owner=worker_id, attempt=attempt)


def _owned(lease: Lease) -> Any:
    return and_(
        Job.id == lease.job_id,
        Job.lease_owner == lease.owner,
        Job.attempt == lease.attempt,
        Job.status.in_(LEASED),
    )


def fenced_update(session: Session, lease: Lease, **values: Any) -> None:
    """UPDATE the job only while this lease holds it; raises LeaseLost otherwise.

    The lease holds while the row names this owner and attempt and the job is validating
    or running: the API's pause and cancel of a waiting job drop the lease, so the worker's
    next write is refused. Run it first in a transaction: on SQLite the UPDATE takes the
    write lock and on Postgres it locks the row, so what the transaction reads and writes
    after it cannot race a new owner or the user's requests.
    """
    values = values or {"lease_owner": lease.owner}  # a bare ownership check still locks
    result = session.execute(
        update(Job)
        .where(_owned(lease))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(f"job {lease.job_id}: lease of attempt {lease.attempt} is gone")


def lock_job(session: Session, lease: Lease) -> Requests:
    """Lock the leased row (raises LeaseLost) and read the user's cancel and pause requests.

    Until the transaction ends the API cannot change them: a worker decides its final
    write from what it reads here, so a request that came first always wins.
    """
    fenced_update(session, lease)
    return _requests(session, lease.job_id)


def renew_lease(session: Session, lease: Lease, lease_seconds: float) -> Requests:
    """Extend the lease; returns the user's pending requests. Raises LeaseLost."""
    fenced_update(session, lease, lease_expires_at=time.time() + lease_seconds)
    return _requests(session, lease.job_id)


def _requests(session: Session, job_id: str) -> Requests:
    cancel, pause = session.execute(
        select(Job.cancel_requested, Job.pause_requested).where(Job.id == job_id)
    ).one()
    return Requests(cancel=bool(cancel), pause=bool(pause))


def release_job(
    session: Session, lease: Lease, status: JobStatus, refund_attempt: bool, **values: Any
) -> None:
    """Give the job up (queued or paused); a refunded attempt does not count towards max."""
    attempt = Job.attempt - 1 if refund_attempt else Job.attempt
    fenced_update(
        session,
        lease,
        status=status,
        lease_owner=None,
        lease_expires_at=None,
        attempt=attempt,
        enqueued_at=time.time(),
        **values,
    )


def finish_job(session: Session, lease: Lease, status: JobStatus, **values: Any) -> None:
    """End the job (succeeded, failed, cancelled) and drop the lease."""
    fenced_update(
        session,
        lease,
        status=status,
        lease_owner=None,
        lease_expires_at=None,
        finished_at=now_ts(),
        **values,
    )


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def upsert(session: Session, table: Any, rows: list[dict[str, Any]], keys: list[str]) -> None:
    """INSERT rows, updating the non-key columns on conflict with keys (SQLite and Postgres)."""
    if not rows:
        return
    statement = _insert(session)(table).values(rows)
    fixed = {*keys, "id", "seq", "created_at"}
    changing = {c: statement.excluded[c] for c in rows[0] if c not in fixed}
    session.execute(statement.on_conflict_do_update(index_elements=keys, set_=changing))


def event_row(
    job_id: str,
    message: str,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
) -> dict[str, Any]:
    """A job_events row; give a dedupe_key to make replays of the same event idempotent."""
    return {
        "id": new_id("ftevent"),
        "job_id": job_id,
        "created_at": now_ts(),
        "level": level,
        "type": type,
        "message": message,
        "data": data,
        "dedupe_key": dedupe_key,
    }


def add_events(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert events; ones with a dedupe_key already present are updated, not duplicated."""
    # One row per key: Postgres refuses to update the same row twice in one statement.
    keyed = list({r["dedupe_key"]: r for r in rows if r["dedupe_key"] is not None}.values())
    plain = [r for r in rows if r["dedupe_key"] is None]
    if plain:
        session.execute(_insert(session)(JobEvent.__table__).values(plain))
    upsert(session, JobEvent.__table__, keyed, ["job_id", "dedupe_key"])


def add_event(session: Session, job_id: str, message: str, **fields: Any) -> None:
    """Insert one message event."""
    add_events(session, [event_row(job_id, message, **fields)])


def db_unavailable(exc: BaseException) -> bool:
    """True for errors that mean 'try again later' (down, locked, dropped), not a bad query."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def retry_db(
    action: Callable[[], T],
    what: str,
    give_up_after: float,
    stop: threading.Event | None = None,
) -> T:
    """Run action (one whole transaction) until it succeeds, backing off while the DB is away.

    LeaseLost and real errors pass straight through; after give_up_after seconds, or once
    stop is set (the lease is gone anyway), the last DB error is raised.
    """
    deadline = time.monotonic() + give_up_after
    delay = 0.1
    while True:
        try:
            return action()
        except Exception as exc:
            if not db_unavailable(exc):
                raise
            if time.monotonic() + delay > deadline or (stop is not None and stop.is_set()):
                raise
            log.warning("%s: database unavailable (%s); retrying in %.1fs", what, exc, delay)
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
