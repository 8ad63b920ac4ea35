"""The workers table: who is running, on which devices (torch-free; workers fill it in)."""

import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.db.tables import Worker
from shared.jobs import upsert

# Columns a worker reports about itself (besides id and the times).
REPORTED = (
    "hostname", "queues", "device_kind", "device", "device_count", "devices", "memory_bytes",
    "cuda_version", "driver_version", "torch_version",
)  # fmt: skip


def register_worker(session: Session, worker_id: str, report: dict[str, Any]) -> None:
    """Insert or refresh this worker's row at start (a restart with the same id replaces it)."""
    now = time.time()
    row = {"id": worker_id, **{name: report.get(name) for name in REPORTED}}
    upsert(session, Worker, [{**row, "started_at": now, "last_seen_at": now}], ["id"])


def touch_worker(session: Session, worker_id: str) -> bool:
    """Mark the worker seen now; False when its row is gone (then register again)."""
    changed = session.execute(
        update(Worker)
        .where(Worker.id == worker_id)
        .values(last_seen_at=time.time())
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    return bool(changed)


def live_workers(session: Session, within_seconds: float) -> list[Worker]:
    """Workers seen within the last within_seconds, by id."""
    since = time.time() - within_seconds
    query = select(Worker).where(Worker.last_seen_at >= since).order_by(Worker.id)
    return list(session.scalars(query))
