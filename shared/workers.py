"""The workers table: who runs, on which devices, and where a job fits (torch-free)."""

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from shared.db.tables import Job, Worker
from shared.jobs import LEASED, upsert
from shared.naming import TRAINING_QUEUE, WORKER_QUEUE_PREFIX

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


def remove_worker(session: Session, worker_id: str) -> None:
    """Drop the worker's row: it stopped cleanly, so nothing is routed to it any more."""
    session.execute(delete(Worker).where(Worker.id == worker_id))


def live_workers(session: Session, within_seconds: float) -> list[Worker]:
    """Workers seen within the last within_seconds, by id."""
    since = time.time() - within_seconds
    query = select(Worker).where(Worker.last_seen_at >= since).order_by(Worker.id)
    return list(session.scalars(query))


GIB = 1024**3


@dataclass(frozen=True)
class Placement:
    """Where a job goes: a queue, or None with the reason no live worker can run it."""

    queue: str | None
    reason: str | None = None
    worker_id: str | None = None


def trains(worker: Worker) -> bool:
    """Whether the worker takes training jobs (the inference processes register too)."""
    return TRAINING_QUEUE in (worker.queues or [])


def own_queue(worker: Worker) -> str | None:
    """The training queue only this worker serves (older workers have none)."""
    return next((q for q in worker.queues or [] if q.startswith(WORKER_QUEUE_PREFIX)), None)


def fits(worker: Worker, need_bytes: int, gpus: int = 1) -> bool:
    """Whether the worker offers need_bytes and, on CUDA, gpus GPUs (n_gpus).

    A worker that reports no memory may try; a CPU worker runs any n_gpus as gloo ranks.
    """
    memory = worker.memory_bytes is None or worker.memory_bytes >= need_bytes
    return memory and (gpus <= 1 or worker.device_kind != "cuda" or worker.device_count >= gpus)


def busy_workers(session: Session) -> dict[str, str]:
    """Worker id -> the job it holds a lease on (validating or running)."""
    query = select(Job.lease_owner, Job.id).where(
        Job.lease_owner.is_not(None), Job.status.in_(LEASED)
    )
    return {str(owner): job_id for owner, job_id in session.execute(query)}


def place(
    session: Session, need_bytes: int | None, within_seconds: float, gpus: int = 1
) -> Placement:
    """The queue for a job needing need_bytes (the engine's estimate; None before planning)
    and gpus GPUs (its n_gpus).

    Unknown need, no live training worker at all (the fleet is down or restarting: the job
    waits in the queue as it always did), or every live one fits: the shared queue. Some
    fit: the own queue of one of them, idle ones first, then the smallest that fits (the
    big GPUs stay free for the jobs only they can run). None fits: no queue, and why.
    """
    if need_bytes is None and gpus <= 1:
        return Placement(TRAINING_QUEUE)
    trainers = [w for w in live_workers(session, within_seconds) if trains(w)]
    fitting = [w for w in trainers if fits(w, need_bytes or 0, gpus)]
    if len(fitting) == len(trainers):
        return Placement(TRAINING_QUEUE)
    routable = [w for w in fitting if own_queue(w)]
    if routable:
        busy = busy_workers(session)
        best = min(routable, key=lambda w: (w.id in busy, w.memory_bytes or 0, w.id))
        return Placement(own_queue(best), worker_id=best.id)
    if fitting:  # workers from before own queues: the shared queue reaches them
        return Placement(TRAINING_QUEUE)
    if need_bytes is None or all(fits(w, need_bytes) for w in trainers):
        most = max(trainers, key=lambda w: w.device_count)
        return Placement(
            None, f"n_gpus {gpus}: the live worker with the most GPUs ({most.id}) has "
            f"{most.device_count}",
        )  # fmt: skip
    largest = max(trainers, key=lambda w: w.memory_bytes or 0)
    return Placement(
        None,
        f"it needs about {need_bytes / GIB:.2f} GiB; the largest live worker ({largest.id}, "
        f"{largest.device}) offers {(largest.memory_bytes or 0) / GIB:.2f} GiB",
    )


def job_need(stats: dict[str, Any] | None) -> int | None:
    """The job's memory estimate in bytes, once a worker has planned it."""
    estimate = (stats or {}).get("memory_estimate") or {}
    total = estimate.get("total_bytes")
    return int(total) if total is not None else None


def job_gpus(hyperparameters: dict[str, Any] | None) -> int:
    """The job's n_gpus (1 unless asked)."""
    return int((hyperparameters or {}).get("n_gpus") or 1)


def place_job(session: Session, job_id: str, within_seconds: float) -> Placement:
    """Where job_id goes now, by its recorded memory estimate, n_gpus and the live workers."""
    row = session.execute(
        select(Job.stats, Job.hyperparameters).where(Job.id == job_id)
    ).one_or_none()
    if row is None:
        return Placement(TRAINING_QUEUE)
    return place(session, job_need(row.stats), within_seconds, job_gpus(row.hyperparameters))


def device_counts(session: Session, within_seconds: float) -> dict[str, int]:
    """Live training workers per device kind, for the gpt2ft_workers gauge."""
    counts: dict[str, int] = {}
    for worker in live_workers(session, within_seconds):
        if trains(worker):
            counts[worker.device_kind] = counts.get(worker.device_kind, 0) + 1
    return counts


def fleet(session: Session, within_seconds: float, everyone: bool = False) -> list[dict[str, Any]]:
    """The training workers seen within within_seconds (everyone: every row, inference
    processes and stale ones too), each with the job it holds, for `gpt2ft workers`."""
    if everyone:
        rows = list(session.scalars(select(Worker).order_by(Worker.id)))
    else:
        rows = [w for w in live_workers(session, within_seconds) if trains(w)]
    busy = busy_workers(session)
    return [
        {
            "id": w.id,
            "hostname": w.hostname,
            "device": w.device,
            "memory_bytes": w.memory_bytes,
            "queues": list(w.queues or []),
            "last_seen_at": w.last_seen_at,
            "job": busy.get(w.id),
        }
        for w in rows
    ]
