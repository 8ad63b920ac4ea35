"""Server-Sent Events for a job: its past events oldest first, then new ones until it ends."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from api.job_views import event_out
from api.slots import Slot, claim_slot, free_slot, renew_slot
from shared.db.session import session_scope
from shared.db.tables import TERMINAL_STATUSES, Job, JobEvent, JobStatus
from shared.settings import get_settings

# How often the stream looks for new rows; each look is one short session.
POLL_SECONDS = 0.5
# A comment line this often keeps proxies from closing a quiet stream.
KEEPALIVE_SECONDS = 15.0
BATCH = 500
# A paused job writes nothing until someone resumes it: the stream ends, as for a finished one.
END_STATUSES = {s.value for s in (*TERMINAL_STATUSES, JobStatus.paused)}
# An open stream's slot lapses this long after its last renewal (every keepalive at least).
SLOT_SECONDS = 4 * KEEPALIVE_SECONDS


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
        ended = status is None or status in END_STATUSES
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
    idle_seconds: float | None = None,
) -> AsyncIterator[str]:
    """`data: <event JSON>` per event after after_seq; a final `event: done` when the job
    ends or pauses, or after idle_seconds without an event (reconnect with after=)."""
    after, quiet, last_event = after_seq, 0.0, time.monotonic()
    while True:
        events, ended = await run_in_threadpool(read_new_events, job_id, after)
        for seq, payload in events:
            after, last_event = seq, time.monotonic()
            yield sse_message(payload)
        idle = idle_seconds is not None and time.monotonic() - last_event >= idle_seconds
        if ended or idle:
            status = await run_in_threadpool(_status, job_id)
            done = {"id": job_id, "status": status, "reason": "idle" if not ended else status}
            yield sse_message(json.dumps(done), event="done")
            return
        quiet = 0.0 if events else quiet + poll_seconds
        if quiet >= keepalive_seconds:
            quiet = 0.0
            yield ": keepalive\n\n"
        await asyncio.sleep(poll_seconds)


def event_stream_response(owner: str, job_id: str, after_seq: int) -> StreamingResponse:
    """The SSE response, holding one of the owner's stream slots until it closes; else 429."""
    slot = claim_slot(
        "streams",
        owner,
        SLOT_SECONDS,
        "max_streams_per_owner",
        "event streams open",
        "close one, or list events without stream=true",
    )
    idle = get_settings().stream_idle_seconds
    events = stream_events(job_id, after_seq=after_seq, idle_seconds=idle)
    return StreamingResponse(
        _holding(slot, events),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _holding(slot: Slot, messages: AsyncIterator[str]) -> AsyncIterator[str]:
    """messages, renewing the slot as they go (keepalives come every 15 s) and freeing it after."""
    renewed = time.monotonic()
    try:
        async for message in messages:
            yield message
            if time.monotonic() - renewed >= SLOT_SECONDS / 4:
                renewed = time.monotonic()
                await run_in_threadpool(renew_slot, slot, SLOT_SECONDS)
    finally:
        free_slot(slot)


def _status(job_id: str) -> Any:
    with session_scope() as session:
        return session.scalar(select(Job.status).where(Job.id == job_id))
