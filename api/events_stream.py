"""Server-Sent Events for a job: its past events oldest first, then new ones until it ends."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from api.job_views import event_out
from shared.db.models import TERMINAL_STATUSES, Job, JobEvent
from shared.db.session import session_scope

# How often the stream looks for new rows; each look is one short session.
POLL_SECONDS = 0.5
# A comment line this often keeps proxies from closing a quiet stream.
KEEPALIVE_SECONDS = 15.0
BATCH = 500


def read_new_events(job_id: str, after_seq: int) -> tuple[list[tuple[int, str]], bool]:
    """Events with seq > after_seq as (seq, JSON) oldest first, and whether the job has ended."""
    with session_scope() as session:
        rows = session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
            .order_by(JobEvent.seq)
            .limit(BATCH)
        ).all()
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        events = [(row.seq, event_out(row).model_dump_json()) for row in rows]
        ended = status is None or status in [s.value for s in TERMINAL_STATUSES]
        return events, ended and len(rows) < BATCH


def sse_message(data: str, event: str | None = None, event_id: str | None = None) -> str:
    """One SSE message; data must be a single line (JSON is)."""
    head = f"event: {event}\n" if event else ""
    head += f"id: {event_id}\n" if event_id else ""
    return f"{head}data: {data}\n\n"


async def stream_events(
    job_id: str,
    poll_seconds: float = POLL_SECONDS,
    keepalive_seconds: float = KEEPALIVE_SECONDS,
    after_seq: int = 0,
) -> AsyncIterator[str]:
    """`data: <event JSON>` per event after after_seq; a final `event: done` once terminal."""
    after, quiet = after_seq, 0.0
    while True:
        events, ended = await run_in_threadpool(read_new_events, job_id, after)
        for seq, payload in events:
            after = seq
            yield sse_message(payload)
        if ended:
            status = await run_in_threadpool(_status, job_id)
            yield sse_message(json.dumps({"id": job_id, "status": status}), event="done")
            return
        quiet = 0.0 if events else quiet + poll_seconds
        if quiet >= keepalive_seconds:
            quiet = 0.0
            yield ": keepalive\n\n"
        await asyncio.sleep(poll_seconds)


def _status(job_id: str) -> Any:
    with session_scope() as session:
        return session.scalar(select(Job.status).where(Job.id == job_id))
