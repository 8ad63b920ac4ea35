"""How fast this service has trained: the dry run's time estimate, from recent finished jobs."""

import statistics
from typing import Any

from sqlalchemy import select

from shared.db.session import session_scope
from shared.db.tables import Job, JobStatus

# The median of this many recent jobs: one slow outlier (a paused job) moves it little.
RECENT_JOBS = 5
# Jobs read to find them (older ones of other methods are skipped).
SCANNED_JOBS = 50


def recent_seconds_per_token(model: str, training_method: str) -> tuple[float, int] | None:
    """Median wall seconds per trained token of recent succeeded jobs like this; (rate, count)."""
    query = (
        select(Job.started_at, Job.finished_at, Job.trained_tokens, Job.options, Job.stats)
        .where(Job.model == model, Job.status == JobStatus.succeeded.value)
        .where(Job.started_at.is_not(None), Job.finished_at.is_not(None))
        .order_by(Job.finished_at.desc())
        .limit(SCANNED_JOBS)
    )
    with session_scope() as session:
        rows = session.execute(query).all()
    rates: list[float] = []
    for started, finished, tokens, options, stats in rows:
        method = (options or {}).get("training_method", "full")
        tokens = tokens or (stats or {}).get("trained_tokens")
        if method == training_method and tokens and finished > started:
            rates.append((finished - started) / tokens)
        if len(rates) == RECENT_JOBS:
            break
    return (statistics.median(rates), len(rates)) if rates else None


def time_estimate(model: str, training_method: str, trained_tokens: int) -> dict[str, Any]:
    """estimated_seconds for trained_tokens and the basis of the figure (None without history)."""
    found = recent_seconds_per_token(model, training_method)
    if found is None:
        basis = f"no succeeded {training_method} job on {model} here yet to time"
        return {"estimated_seconds": None, "estimate_basis": basis}
    rate, count = found
    jobs = "job" if count == 1 else f"{count} jobs"
    basis = (
        f"{1 / rate:,.0f} trained tokens/s: the median of the last {jobs} on {model} "
        f"({training_method}) here, start to finish with evaluations and checkpoints"
    )
    return {"estimated_seconds": round(trained_tokens * rate), "estimate_basis": basis}
