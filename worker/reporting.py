"""Training callbacks that write to the database in batches, fenced by the job's lease."""

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from shared.db.session import session_scope
from shared.db.tables import Checkpoint, Job, Metric
from shared.ids import new_id, now_ts
from shared.jobs import (
    Lease,
    LeaseLost,
    add_events,
    event_row,
    fenced_update,
    retry_db,
    upsert,
)
from shared.naming import checkpoint_model_id
from shared.storage import Manifest, Storage, checkpoint_prefix, checkpoints_prefix, step_of
from worker.heartbeat import Heartbeat
from worker.publishing import discard_unless_visible, publish, stage
from worker.shutdown import shutdown_requested
from worker.training.callbacks import StopReason

log = logging.getLogger(__name__)
# Cancel and pause flags are read at most this often: "within a few steps", cheaply.
FLAG_POLL_SECONDS = 0.5


class DbReporter:
    """Implements TrainingCallbacks; buffers metrics and events, flushes every few seconds."""

    def __init__(
        self,
        lease: Lease,
        heartbeat: Heartbeat,
        storage: Storage,
        fine_tuned_id: str,
        total_steps: int,
        flush_seconds: float,
        keep_checkpoints: int = 2,
    ) -> None:
        self.lease = lease
        self.heartbeat = heartbeat
        self.storage = storage
        self.fine_tuned_id = fine_tuned_id
        self.total_steps = total_steps
        self.flush_seconds = flush_seconds
        # The newest keep_checkpoints and the best stay published; older ones are deleted.
        self.keep_checkpoints = keep_checkpoints
        self._metrics: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._progress: dict[str, Any] = {}
        self._last_log: tuple[int, dict[str, float]] | None = None
        self._last_flush = time.monotonic()
        self._last_poll = 0.0
        self._started = time.monotonic()
        self._first_step: int | None = None
        # Throughput from tokens_seen deltas between logged steps; figures go to Job.stats.
        self._last_tokens: tuple[float, int] | None = None
        self._stats: dict[str, Any] = {}
        # The engine copies the best checkpoint into the final model: keep it in scratch.
        self.best_checkpoint: Path | None = None

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        """Buffer one step's metrics (a metrics row and a metrics event)."""
        self._track_throughput(metrics)
        self._last_log = (step, metrics)
        self._buffer_metrics(step, metrics)
        self._track_progress(step, metrics)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        """Merge validation results into the step's row and flush."""
        logged = self._last_log[1] if self._last_log and self._last_log[0] == step else {}
        # The step's own logged loss wins over the epoch mean the evaluation carries.
        merged = {**metrics, **logged}
        self._buffer_metrics(step, merged)
        self.flush()

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        """Upload a complete checkpoint folder, then publish it and its row under the lease."""
        self.flush()
        prefix = checkpoint_prefix(self.lease.job_id, step)
        staged = stage(self.storage, self.lease, prefix, path, {"step": step, **metrics})
        row = {
            "id": new_id("ftckpt"),
            "job_id": self.lease.job_id,
            "owner": "",
            "step": step,
            "epoch": metrics.get("epoch"),
            "path": prefix,
            # A pause before the first step has no loss yet (nan): JSON columns refuse it.
            "metrics": finite({"step": step, **metrics}),
            "created_at": now_ts(),
            "fine_tuned_model_checkpoint": checkpoint_model_id(self.fine_tuned_id, step),
            # The engine marks the lowest validation loss so far; older rows lose the mark.
            "is_best": bool(metrics.get("is_best", False)),
            "bytes": sum(entry.bytes for entry in staged.files),
        }
        best = " (best so far)" if row["is_best"] else ""
        try:
            self._write(
                checkpoint=row,
                events=[self._message_row(f"Checkpoint saved at step {step}{best}")],
                manifest=staged,
            )
        except BaseException:
            discard_unless_visible(self.storage, staged)
            raise
        if row["is_best"]:
            self.best_checkpoint = path
        self._prune_scratch(path)

    def _prune_scratch(self, latest: Path) -> None:
        """Published checkpoints leave scratch, except the newest and the best.

        Only older ones: with n_gpus > 1, rank 0 may already have written the next one.
        """
        for folder in latest.parent.glob("step-*"):
            # step-NNNNNNNN: zero-padded, so names sort as steps do.
            if folder.name < latest.name and folder != self.best_checkpoint:
                shutil.rmtree(folder, ignore_errors=True)

    def on_message(self, message: str, data: dict[str, Any] | None = None) -> None:
        """Queue a message event; flushed with the next batch (now, if nothing else waits)."""
        self._events.append(self._message_row(message, data))
        self.flush()

    def should_stop(self) -> StopReason | None:
        """Lease lost first, then SIGTERM, then the user's cancel and pause; None to go on."""
        if self.heartbeat.lost.is_set() or self.heartbeat.expired():
            self.heartbeat.lost.set()
            return StopReason.lease_lost
        if shutdown_requested():
            return StopReason.shutdown
        now = time.monotonic()
        if now - self._last_poll >= FLAG_POLL_SECONDS:
            self._last_poll = now
            self._poll_flags()
        if self.heartbeat.cancel_requested:
            return StopReason.cancel
        if self.heartbeat.pause_requested:
            return StopReason.pause
        return None

    def flush(self) -> None:
        """Write buffered metrics, events and progress in one fenced transaction."""
        self._last_flush = time.monotonic()
        if self._metrics or self._events or self._progress or self._stats:
            self._write()

    def _write(
        self,
        checkpoint: dict[str, Any] | None = None,
        events: list | None = None,
        manifest: Manifest | None = None,
    ) -> None:
        metrics, pending = list(self._metrics.values()), self._events + (events or [])
        retired: list[str] = []

        def transaction() -> None:
            retired.clear()
            with session_scope() as session:
                fenced_update(session, self.lease, **self._progress)
                if manifest is not None:
                    publish(session, self.lease, self.storage, manifest)
                if self._stats:
                    merge_stats(session, self.lease.job_id, self._stats)
                upsert(session, Metric.__table__, metrics, ["job_id", "step"])
                add_events(session, pending)
                if checkpoint is not None:
                    owner = session.get(Job, self.lease.job_id).owner  # type: ignore[union-attr]
                    upsert(
                        session,
                        Checkpoint.__table__,
                        [{**checkpoint, "owner": owner}],
                        ["job_id", "step"],
                    )
                    if checkpoint["is_best"]:
                        session.execute(
                            update(Checkpoint)
                            .where(Checkpoint.job_id == self.lease.job_id)
                            .where(Checkpoint.step != checkpoint["step"])
                            .values(is_best=False)
                        )
                    retired.extend(
                        retire_checkpoints(session, self.lease.job_id, self.keep_checkpoints)
                    )

        # A DB blip waits (training pauses) rather than failing the job; once the lease
        # could have lapsed, the error escapes and the sweep decides.
        try:
            retry_db(
                transaction,
                f"job {self.lease.job_id}: recording progress",
                self.heartbeat.lease_seconds,
                self.heartbeat.lost,
            )
        except LeaseLost:
            self.heartbeat.lost.set()
            self._metrics, self._events = {}, []
            raise
        self._metrics, self._events, self._progress, self._stats = {}, [], {}, {}
        if checkpoint is not None:
            self._delete_retired(checkpoint["step"], retired)

    def _delete_retired(self, newest: int, retired: list[str]) -> None:
        """Delete the sets whose rows retire_checkpoints removed, and older unlisted ones.

        An earlier attempt may have published a set whose row never committed; once a
        newer checkpoint is recorded, such a set is no longer the one to resume from.
        """
        parent = checkpoints_prefix(self.lease.job_id)
        try:
            kept = set(kept_steps(self.lease.job_id))
            for prefix in self.storage.published_sets(parent):
                step = step_of(prefix)
                if step < newest and step not in kept:
                    retired.append(prefix)
            for prefix in dict.fromkeys(retired):
                self.storage.delete_set(prefix)
        except Exception as exc:  # the rows are gone already; the next checkpoint tries again
            log.warning("job %s: could not delete old checkpoints: %s", self.lease.job_id, exc)

    def _poll_flags(self) -> None:
        try:
            with session_scope() as session:
                job = session.get(Job, self.lease.job_id)
                if (
                    job is None
                    or job.lease_owner != self.lease.owner
                    or job.attempt != self.lease.attempt
                ):
                    self.heartbeat.lost.set()
                    return
                self.heartbeat.cancel_requested = job.cancel_requested
                self.heartbeat.pause_requested = job.pause_requested
        except Exception as exc:  # the heartbeat decides about loss; a missed poll is harmless
            log.warning("job %s: flag poll failed: %s", self.lease.job_id, exc)

    def _buffer_metrics(self, step: int, metrics: dict[str, float]) -> None:
        data = finite({"step": step, "total_steps": self.total_steps, **metrics})
        self._metrics[step] = {
            "job_id": self.lease.job_id,
            "step": step,
            "epoch": metrics.get("epoch"),
            "train_loss": metrics.get("train_loss"),
            "valid_loss": metrics.get("valid_loss"),
            "learning_rate": metrics.get("learning_rate"),
            "data": data,
            "created_at": now_ts(),
        }
        text = f"Step {step}/{self.total_steps}"
        if "train_loss" in metrics:
            text += f": training loss={metrics['train_loss']:.4f}"
        if "valid_loss" in metrics:
            text += f", validation loss={metrics['valid_loss']:.4f}"
        self._events.append(
            event_row(self.lease.job_id, text, type="metrics", data=data, dedupe_key=f"step:{step}")
        )

    def _track_progress(self, step: int, metrics: dict[str, float]) -> None:
        if self._first_step is None:
            self._first_step, self._started = step, time.monotonic()
        done = step - self._first_step
        self._progress = {"steps_completed": step, "epoch": metrics.get("epoch")}
        if done > 0:
            per_step = (time.monotonic() - self._started) / done
            self._progress["estimated_finish"] = int(
                time.time() + per_step * (self.total_steps - step)
            )

    def _track_throughput(self, metrics: dict[str, float]) -> None:
        """tokens_per_second over the last logged interval, into the metrics and Job.stats."""
        tokens = metrics.get("tokens_seen")
        if tokens is None:
            return
        now = time.monotonic()
        if self._last_tokens is not None and now > self._last_tokens[0]:
            rate = (tokens - self._last_tokens[1]) / (now - self._last_tokens[0])
            if rate >= 0:
                metrics["tokens_per_second"] = round(rate, 1)
                self._stats["tokens_per_second"] = round(rate, 1)
        self._last_tokens = (now, int(tokens))
        self._stats["trained_tokens"] = int(tokens)

    def _message_row(self, message: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        return event_row(self.lease.job_id, message, data=data)


def retire_checkpoints(session: Session, job_id: str, keep: int) -> list[str]:
    """Delete the rows of checkpoints beyond the newest keep and the best; returns their sets.

    Called inside the fenced transaction that recorded the newest checkpoint, so only the
    lease holder retires anything.
    """
    rows = session.execute(
        select(Checkpoint.step, Checkpoint.path, Checkpoint.is_best)
        .where(Checkpoint.job_id == job_id)
        .order_by(Checkpoint.step.desc())
    ).all()
    retired = [row for row in rows[keep:] if not row.is_best]
    if retired:
        session.execute(
            delete(Checkpoint)
            .where(Checkpoint.job_id == job_id)
            .where(Checkpoint.step.in_([row.step for row in retired]))
        )
    return [row.path for row in retired]


def kept_steps(job_id: str) -> list[int]:
    """Steps of the job's checkpoint rows."""
    with session_scope() as session:
        return list(session.scalars(select(Checkpoint.step).where(Checkpoint.job_id == job_id)))


def finite(values: dict[str, Any]) -> dict[str, Any]:
    """values without NaN or infinite floats, which JSON columns refuse (Postgres)."""
    return {k: v for k, v in values.items() if not (isinstance(v, float) and not math.isfinite(v))}


def merge_stats(session: Any, job_id: str, values: dict[str, Any]) -> None:
    """Merge values into Job.stats (after the fenced update has locked the row)."""
    job = session.get(Job, job_id)
    if job is not None:
        job.stats = {**(job.stats or {}), **values}
