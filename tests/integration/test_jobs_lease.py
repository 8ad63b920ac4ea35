"""Claim, lease, fencing and sweep against real SQLite and Postgres, and real Redis."""

import json
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from shared.db.session import session_scope
from shared.db.tables import Job, JobEvent, JobStatus, Metric
from shared.ids import new_id, now_ts
from shared.jobs import (
    LeaseLost,
    Requests,
    add_events,
    claim_job,
    event_row,
    fenced_update,
    release_job,
    renew_lease,
    upsert,
)
from shared.settings import get_settings
from tests.integration.conftest import REDIS_BASE

REDIS_TEST_URL = f"{REDIS_BASE}/14"


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch, gpt2ft_home: Path) -> redis.Redis:
    """A real Redis database the sweep sends to, emptied first."""
    monkeypatch.setenv("REDIS_URL", REDIS_TEST_URL)
    get_settings.cache_clear()
    client = redis.Redis.from_url(REDIS_TEST_URL)
    client.flushdb()
    yield client
    client.flushdb()


def make_job(status: str = JobStatus.queued, **values: object) -> str:
    job_id = new_id("ftjob")
    with session_scope() as session:
        session.add(
            Job(
                id=job_id,
                owner="alice",
                model="gpt2-tiny",
                training_file="file-x",
                seed=1,
                status=status,
                hyperparameters={},
                created_at=now_ts(),
                **{"enqueued_at": time.time(), **values},
            )
        )
    return job_id


def claim(job_id: str, worker: str, lease_seconds: float = 60.0, max_attempts: int = 3):
    with session_scope() as session:
        return claim_job(session, job_id, worker, lease_seconds, max_attempts)


def read_job(job_id: str) -> Job:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_second_claim_of_same_job_is_refused(gpt2ft_home: Path) -> None:
    job_id = make_job()
    first = claim(job_id, "w1")
    assert first is not None and first.attempt == 1
    assert claim(job_id, "w2") is None
    job = read_job(job_id)
    # Waiting jobs read queued; validating_files only while a worker validates and plans.
    assert (job.status, job.lease_owner, job.attempt) == ("validating_files", "w1", 1)


def test_cancelled_finished_and_exhausted_jobs_are_not_claimed(gpt2ft_home: Path) -> None:
    assert claim(make_job(cancel_requested=True), "w") is None
    assert claim(make_job(pause_requested=True), "w") is None
    assert claim(make_job(JobStatus.paused), "w") is None
    assert claim(make_job(JobStatus.succeeded), "w") is None
    assert claim(make_job(JobStatus.cancelled), "w") is None
    assert claim(make_job(attempt=3), "w", max_attempts=3) is None


def test_expired_lease_is_taken_over_and_old_owner_is_fenced(gpt2ft_home: Path) -> None:
    job_id = make_job(JobStatus.validating_files)
    old = claim(job_id, "w1", lease_seconds=0.01)
    time.sleep(0.05)
    new = claim(job_id, "w2")
    assert old is not None and new is not None and new.attempt == 2
    with session_scope() as session, pytest.raises(LeaseLost):
        fenced_update(session, old, steps_completed=99)
    with session_scope() as session, pytest.raises(LeaseLost):
        renew_lease(session, old, 60)
    with session_scope() as session:
        fenced_update(session, new, steps_completed=5)
    job = read_job(job_id)
    assert (job.lease_owner, job.steps_completed) == ("w2", 5)


def test_renew_reports_cancel_and_pause_flags(gpt2ft_home: Path) -> None:
    job_id = make_job()
    lease = claim(job_id, "w1")
    with session_scope() as session:
        assert renew_lease(session, lease, 60) == Requests(cancel=False, pause=False)
        session.execute(
            Job.__table__.update().where(Job.id == job_id).values(cancel_requested=True)
        )
    with session_scope() as session:
        assert renew_lease(session, lease, 60) == Requests(cancel=True, pause=False)


def test_release_with_refund_does_not_spend_an_attempt(gpt2ft_home: Path) -> None:
    job_id = make_job()
    lease = claim(job_id, "w1")
    with session_scope() as session:
        release_job(session, lease, JobStatus.queued, refund_attempt=True)
    job = read_job(job_id)
    assert (job.status, job.attempt, job.lease_owner) == ("queued", 0, None)


def test_metrics_and_events_upsert_without_duplicates(gpt2ft_home: Path) -> None:
    job_id = make_job()
    rows = [
        {
            "job_id": job_id,
            "step": s,
            "epoch": 0.1,
            "train_loss": 5.0 - s,
            "valid_loss": None,
            "learning_rate": 1e-3,
            "data": {"step": s},
            "created_at": now_ts(),
        }
        for s in (1, 2)
    ]
    with session_scope() as session:
        upsert(session, Metric.__table__, rows, ["job_id", "step"])
        upsert(session, Metric.__table__, [{**rows[1], "valid_loss": 3.5}], ["job_id", "step"])
        events = [
            event_row(job_id, f"Step {s}", type="metrics", dedupe_key=f"step:{s}")
            for s in (1, 2, 2)
        ]
        add_events(session, events)
        add_events(session, [event_row(job_id, "Step 2 again", dedupe_key="step:2")])
    with session_scope() as session:
        metrics = (
            session.execute(select(Metric).where(Metric.job_id == job_id).order_by(Metric.step))
            .scalars()
            .all()
        )
        messages = (
            session.execute(
                select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)
            )
            .scalars()
            .all()
        )
    assert [(m.step, m.train_loss, m.valid_loss) for m in metrics] == [
        (1, 4.0, None),
        (2, 3.0, 3.5),
    ]
    assert messages == ["Step 1", "Step 2 again"]


def test_sweep_resends_unclaimed_and_requeues_lapsed(broker: redis.Redis) -> None:
    from worker.sweep import sweep_once

    lost_message = make_job(JobStatus.queued, enqueued_at=time.time() - 3600)
    fresh = make_job(JobStatus.queued)
    running = make_job(JobStatus.queued)
    lease = claim(running, "w1", lease_seconds=0.01)
    with session_scope() as session:
        fenced_update(session, lease, status=JobStatus.running, steps_completed=211)
    time.sleep(0.05)
    result = sweep_once()
    assert result.resent == [lost_message]
    assert result.requeued == [running]
    job = read_job(running)
    assert (job.status, job.lease_owner, job.attempt) == ("queued", None, 1)
    sent = [json.loads(m)["headers"] for m in broker.lrange("training", 0, -1)]
    assert sorted(h["argsrepr"] for h in sent) == sorted([repr([lost_message]), repr([running])])
    assert fresh not in {h["argsrepr"] for h in sent}
    with session_scope() as session:
        messages = session.execute(select(JobEvent.message).where(JobEvent.job_id == running))
        assert "Worker lost during step 212 (attempt 1); job requeued" in messages.scalars().all()


def test_sweep_fails_job_after_max_attempts(broker: redis.Redis) -> None:
    from worker.sweep import sweep_once

    job_id = make_job(JobStatus.queued, attempt=2)
    lease = claim(job_id, "w3", lease_seconds=0.01)
    with session_scope() as session:
        fenced_update(session, lease, status=JobStatus.running, steps_completed=211)
    time.sleep(0.05)
    assert sweep_once().failed == [job_id]
    job = read_job(job_id)
    assert job.status == "failed"
    assert job.error == {
        "code": "worker_lost",
        "message": "worker lost during step 212, 3 times",
        "param": None,
    }
    assert claim(job_id, "w4") is None
    assert broker.llen("training") == 0


@pytest.mark.parametrize(
    ("requested", "status"),
    [
        ({"cancel_requested": True}, "cancelled"),
        ({"pause_requested": True}, "paused"),
        ({"cancel_requested": True, "pause_requested": True}, "cancelled"),  # cancel wins
    ],
)
def test_sweep_honours_requests_of_a_lost_worker(
    broker: redis.Redis, requested: dict[str, bool], status: str
) -> None:
    """A running job whose worker died after the user's cancel or pause is not requeued."""
    from worker.sweep import sweep_once

    job_id = make_job(JobStatus.queued)
    lease = claim(job_id, "w1", lease_seconds=0.01)
    with session_scope() as session:
        fenced_update(session, lease, status=JobStatus.running, steps_completed=3)
        session.execute(Job.__table__.update().where(Job.id == job_id).values(**requested))
    time.sleep(0.05)
    assert sweep_once().settled == [job_id]
    job = read_job(job_id)
    assert (job.status, job.lease_owner, job.pause_requested) == (status, None, False)
    assert broker.llen("training") == 0
    with session_scope() as session:
        messages = session.execute(select(JobEvent.message).where(JobEvent.job_id == job_id))
        expected = f"Worker lost during step 4 (attempt 1); job {status} as asked"
        assert expected in messages.scalars().all()


def test_sweep_does_not_overwrite_a_request_made_after_its_read(broker: redis.Redis) -> None:
    """sweep reads the lapsed job -> the user cancels -> the sweep's requeue is refused."""
    from worker.sweep import SweepResult, lapsed_jobs, settle_lapsed, sweep_once

    job_id = make_job(JobStatus.queued)
    lease = claim(job_id, "w1", lease_seconds=0.01)
    with session_scope() as session:
        fenced_update(session, lease, status=JobStatus.running)
    time.sleep(0.05)
    now = time.time()
    (read,) = lapsed_jobs(now)
    with session_scope() as session:
        session.execute(
            Job.__table__.update().where(Job.id == job_id).values(cancel_requested=True)
        )
    result = SweepResult()
    settle_lapsed(read, now, max_attempts=3, result=result)
    assert result == SweepResult()
    assert read_job(job_id).status == "running"  # unchanged: the next sweep decides
    assert sweep_once().settled == [job_id]
    assert read_job(job_id).status == "cancelled"
