"""A database that is briefly unavailable: worker writes wait and land once, never falsely."""

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, func, select
from sqlalchemy.exc import OperationalError

from shared.db import session as db_session
from shared.db.session import session_scope
from shared.db.tables import FineTunedModel, Job, JobEvent, JobStatus, Metric
from shared.jobs import Lease
from shared.settings import get_settings
from shared.storage import get_storage, job_prefix, model_prefix
from tests.integration.test_jobs_lease import claim, make_job, read_job
from worker.heartbeat import Heartbeat
from worker.outcomes import Outcome, TrainedRun, handle_success
from worker.reporting import DbReporter
from worker.run_job import JobSnapshot
from worker.training.callbacks import StopReason

LOCK_SECONDS = 2.5


@pytest.fixture
def impatient_db(gpt2ft_home: Path, database_url: str) -> str:
    """The worker's engine, but a lock makes it fail in 0.2 s instead of waiting 30 s.

    That is what an unreachable or restarting database looks like to the worker: errors,
    not a slow answer. The lock itself is real, taken by another connection.
    """
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"timeout": 0.2})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA busy_timeout=200")

    else:
        engine = create_engine(database_url, connect_args={"options": "-c lock_timeout=200"})
    db_session.reset_engines()
    db_session._ENGINES[get_settings().resolved_database_url] = engine
    return database_url


@contextmanager
def locked(database_url: str, seconds: float) -> Iterator[None]:
    """Hold an exclusive lock from another connection for seconds, in a background thread."""
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        if database_url.startswith("sqlite"):
            conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
        else:
            import psycopg

            conn = psycopg.connect(database_url.replace("+psycopg", ""))
            conn.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        held.set()
        time.sleep(seconds)
        conn.commit() if not database_url.startswith("sqlite") else conn.execute("COMMIT")
        conn.close()
        done.set()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(10), "could not take the lock"
    try:
        yield
    finally:
        thread.join(seconds + 10)
        assert done.is_set()


def running_job() -> Lease:
    job_id = make_job(JobStatus.queued)
    lease = claim(job_id, "w1")
    assert lease is not None
    return lease


def count(model: Any, job_id: str) -> int:
    with session_scope() as session:
        return int(session.execute(select(func.count()).where(model.job_id == job_id)).scalar_one())


def test_reporter_flush_waits_out_a_locked_database(impatient_db: str) -> None:
    lease = running_job()
    with Heartbeat(lease, lease_seconds=30, interval=0.3) as heartbeat:
        reporter = DbReporter(lease, heartbeat, get_storage(), "ft:x", 10, flush_seconds=60)
        with locked(impatient_db, LOCK_SECONDS):
            started = time.monotonic()
            for step in range(1, 6):
                reporter.on_log(step, {"train_loss": 5.0 - step / 10, "epoch": step / 10})
            reporter.on_message("Halfway there")  # flushes: must wait for the lock
            waited = time.monotonic() - started
        reporter.flush()
        time.sleep(0.8)  # a heartbeat or two after the outage
        assert not heartbeat.lost.is_set()
    assert waited >= LOCK_SECONDS - 0.5, f"the flush did not wait for the lock ({waited:.1f}s)"
    assert count(Metric, lease.job_id) == 5
    with session_scope() as session:
        events = session.execute(
            select(JobEvent.type, JobEvent.message).where(JobEvent.job_id == lease.job_id)
        ).all()
    assert sorted(t for t, _ in events) == ["message"] + ["metrics"] * 5
    job = read_job(lease.job_id)
    assert job.steps_completed == 5 and job.lease_owner == "w1"
    assert job.lease_expires_at > time.time() + 25  # renewed after the outage


def snapshot(lease: Lease) -> JobSnapshot:
    job = read_job(lease.job_id)
    return JobSnapshot(job.id, job.owner, job.model, "file-x", None, None, 1, {})


def outcome(lease: Lease, job: JobSnapshot, lease_seconds: float) -> Outcome:
    heartbeat = Heartbeat(lease, lease_seconds=lease_seconds, interval=60)
    reporter = DbReporter(lease, heartbeat, get_storage(), "ft:gpt2-tiny:alice::x", 10, 60)
    from worker.training.engine import TrainResult

    work = get_storage().scratch / "work"
    (work / "model").mkdir(parents=True, exist_ok=True)
    (work / "model" / "config.json").write_text("{}")
    result = TrainResult(None, 10, 1000, {"train_loss": 1.0}, work / "model")
    ft_id = f"ft:m:{lease.job_id}"
    return handle_success(TrainedRun(lease, job, result, reporter, ft_id, get_storage(), work))


def test_outcome_waits_out_a_short_outage_and_lands_once(impatient_db: str) -> None:
    lease = running_job()
    job = snapshot(lease)
    with locked(impatient_db, LOCK_SECONDS):
        assert outcome(lease, job, lease_seconds=30) is Outcome.succeeded
    row = read_job(lease.job_id)
    assert row.status == JobStatus.succeeded and row.lease_owner is None
    assert count(FineTunedModel, lease.job_id) == 1
    assert get_storage().read_manifest(model_prefix(lease.job_id)) is not None
    with session_scope() as session:
        messages = session.execute(
            select(JobEvent.message).where(JobEvent.job_id == lease.job_id)
        ).scalars()
        assert list(messages) == ["The job has successfully completed"]


def test_success_is_never_claimed_when_it_cannot_be_recorded(impatient_db: str) -> None:
    lease = running_job()
    job = snapshot(lease)
    with locked(impatient_db, LOCK_SECONDS), pytest.raises(OperationalError):
        outcome(lease, job, lease_seconds=1)  # gives up while the database is still away
    row = read_job(lease.job_id)
    # Still leased to the dead attempt: the lease lapses and the sweep requeues the job.
    assert row.status == JobStatus.validating_files and row.lease_owner == "w1"
    assert count(FineTunedModel, lease.job_id) == 0
    # Nothing visible in the store either: no manifest, and the staged uploads are gone.
    assert get_storage().read_manifest(model_prefix(lease.job_id)) is None
    assert get_storage().list_keys(job_prefix(lease.job_id)) == []
    assert get_storage().list_keys("files") == []
    with session_scope() as session:
        assert (
            session.execute(select(Job.fine_tuned_model).where(Job.id == lease.job_id)).one()[0]
            is None
        )


def test_a_worker_frozen_past_its_lease_stops_on_waking(gpt2ft_home: Path) -> None:
    lease = running_job()
    heartbeat = Heartbeat(lease, lease_seconds=0.5, interval=60)  # thread never started: frozen
    reporter = DbReporter(lease, heartbeat, get_storage(), "ft:x", 10, flush_seconds=60)
    assert reporter.should_stop() is None
    time.sleep(0.7)
    assert reporter.should_stop() is StopReason.lease_lost and heartbeat.lost.is_set()
