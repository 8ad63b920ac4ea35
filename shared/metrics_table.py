"""A job's logged steps and evaluations as rows, and as the results CSV (API and worker alike)."""

import csv
import io
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.tables import Metric

# CSV columns, in order; a value a step lacks is an empty cell.
COLUMNS = (
    "step",
    "epoch",
    "train_loss",
    "valid_loss",
    "valid_perplexity",
    "valid_mean_token_accuracy",
    "train_mean_token_accuracy",
    "learning_rate",
    "grad_norm",
    "tokens_seen",
    "tokens_per_second",
)


def metric_point(
    step: int,
    epoch: float | None,
    train_loss: float | None,
    valid_loss: float | None,
    learning_rate: float | None,
    data: dict[str, Any] | None,
) -> dict[str, Any]:
    """One step's figures under the COLUMNS names (None where not logged)."""
    data = data or {}
    point: dict[str, Any] = {name: data.get(name) for name in COLUMNS}
    point.update(step=step, epoch=epoch, train_loss=train_loss, valid_loss=valid_loss)
    point["learning_rate"] = learning_rate
    return point


def load_points(session: Session, job_id: str) -> list[dict[str, Any]]:
    """Every logged step of a job, oldest first."""
    rows = session.scalars(select(Metric).where(Metric.job_id == job_id).order_by(Metric.step))
    return [
        metric_point(r.step, r.epoch, r.train_loss, r.valid_loss, r.learning_rate, r.data)
        for r in rows
    ]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render_csv(points: list[dict[str, Any]]) -> str:
    """The points as CSV text with a COLUMNS header (same bytes from API and worker)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for point in points:
        writer.writerow([_cell(point.get(name)) for name in COLUMNS])
    return out.getvalue()
