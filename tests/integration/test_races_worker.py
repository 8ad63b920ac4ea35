"""A user's pause or cancel against the worker's writes: the user always wins (SQLite, Postgres).

Each test runs the real run_job in this process against the real database and the real
API app, with the user's request landing at one exact point between two worker writes.
"""

from collections.abc import Callable
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shared.db.session import session_scope
from shared.db.tables import File, FineTunedModel, Job, JobEvent, JobStatus
from shared.naming import TRAINING_QUEUE
from tests.integration.conftest import GOOD_JSONL, upload
from worker import run_job as run_job_module
from worker.outcomes import Outcome
from worker.run_job import JobFailure, run_job
from worker.training import engine

# What the API answers for each request on a job that is not running yet.
WAITING_ANSWER = {"pause": "paused", "cancel": "cancelled"}


def create_job(api: TestClient, headers: dict[str, str]) -> str:
    training = upload(api, headers, GOOD_JSONL)
    body = {
        "model": "gpt2-tiny",
        "training_file": training["id"],
        "hyperparameters": {"n_epochs": 1, "batch_size": 4, "block_size": 16},
    }
    response = api.post("/v1/fine_tuning/jobs", headers=headers, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "queued"
    return str(response.json()["id"])


def act(api: TestClient, headers: dict[str, str], job_id: str, action: str) -> dict[str, Any]:
    response = api.post(f"/v1/fine_tuning/jobs/{job_id}/{action}", headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def row(job_id: str) -> Job:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def messages(job_id: str) -> list[str]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)
            )
        )


def count(model: Any, job_id: str) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).where(model.job_id == job_id)) or 0)


def results_files(owner: str) -> int:
    with session_scope() as session:
        query = select(func.count()).where(File.owner == owner, File.purpose != "fine-tune")
        return int(session.scalar(query) or 0)


def wrap(
    monkeypatch: pytest.MonkeyPatch, module: Any, name: str, before: Callable[[], None]
) -> None:
    """Call before() (the user's request) right before the real module.name runs."""
    real = getattr(module, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        before()
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


def after_training(monkeypatch: pytest.MonkeyPatch, then: Callable[[], None]) -> None:
    """Call then() (the user's request) once the engine has returned, before the outcome."""
    real = engine.train

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        then()
        return result

    monkeypatch.setattr(engine, "train", wrapped)


@pytest.mark.parametrize("action", ["pause", "cancel"])
@pytest.mark.parametrize("window", ["_snapshot", "prepare"])
def test_request_between_claim_and_start_wins(
    api: TestClient,
    alice: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    action: str,
    window: str,
) -> None:
    """claim -> the user's pause/cancel -> the worker's next write (validating or starting)."""
    job_id = create_job(api, alice)
    answers: list[dict[str, Any]] = []
    wrap(
        monkeypatch, run_job_module, window, lambda: answers.append(act(api, alice, job_id, action))
    )
    assert run_job(job_id, "w1") is Outcome.lease_lost
    assert [a["status"] for a in answers] == [WAITING_ANSWER[action]]

    job = row(job_id)
    assert job.status == WAITING_ANSWER[action]
    assert (job.lease_owner, job.pause_requested) == (None, False)
    assert job.started_at is None and "Job started" not in messages(job_id)
    if action == "cancel":
        return
    monkeypatch.undo()
    assert act(api, alice, job_id, "resume")["status"] == "queued"
    assert run_job(job_id, "w2") is Outcome.succeeded
    job = row(job_id)
    # The pause refunded the attempt the first worker had spent.
    assert (job.status, job.attempt, job.lease_owner) == (JobStatus.succeeded, 1, None)
    assert messages(job_id).count("Job started") == 1


@pytest.mark.parametrize("action", ["pause", "cancel"])
def test_request_before_a_failure_is_recorded_wins(
    api: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    """claim -> validating -> the user's pause/cancel -> the worker records a failure."""
    job_id = create_job(api, alice)

    def act_then_fail(*_: Any, **__: Any) -> Any:
        act(api, alice, job_id, action)
        raise JobFailure("invalid_file", "training_file: something was wrong", "training_file")

    monkeypatch.setattr(run_job_module, "prepare", act_then_fail)
    assert run_job(job_id, "w1") is Outcome.lease_lost
    job = row(job_id)
    assert (job.status, job.error, job.lease_owner) == (WAITING_ANSWER[action], None, None)


def test_cancel_after_the_last_step_wins_over_success(
    api: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """running -> the engine finishes -> the user's cancel -> the worker records success."""
    job_id = create_job(api, alice)
    answers: list[dict[str, Any]] = []
    after_training(monkeypatch, lambda: answers.append(act(api, alice, job_id, "cancel")))
    assert run_job(job_id, "w1") is Outcome.cancelled
    assert [a["status"] for a in answers] == ["running"]  # asked while running
    job = row(job_id)
    assert (job.status, job.fine_tuned_model, job.lease_owner) == ("cancelled", None, None)
    assert count(FineTunedModel, job_id) == 0
    assert results_files("alice") == 0
    assert messages(job_id)[-1].startswith("Job cancelled at step ")


def test_pause_after_the_last_step_leaves_a_succeeded_job(
    api: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pause that arrives after the last step has nothing to pause: the job succeeds."""
    job_id = create_job(api, alice)
    after_training(monkeypatch, lambda: act(api, alice, job_id, "pause"))
    assert run_job(job_id, "w1") is Outcome.succeeded
    job = row(job_id)
    assert (job.status, job.pause_requested) == (JobStatus.succeeded, False)
    assert count(FineTunedModel, job_id) == 1


def test_cancel_while_pausing_wins(
    api: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """running -> pause asked -> the engine checkpoints -> cancel asked -> the pause write."""
    job_id = create_job(api, alice)
    wrap(monkeypatch, engine, "train", lambda: act(api, alice, job_id, "pause"))
    after_training(monkeypatch, lambda: act(api, alice, job_id, "cancel"))
    assert run_job(job_id, "w1") is Outcome.cancelled
    job = row(job_id)
    assert (job.status, job.lease_owner) == (JobStatus.cancelled, None)
    assert "Job paused at step 0" not in messages(job_id)


@pytest.mark.parametrize("action", ["pause", "cancel"])
def test_request_during_a_worker_shutdown_wins_over_requeue(
    api: TestClient,
    alice: dict[str, str],
    redis_db: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
) -> None:
    """SIGTERM -> the engine checkpoints -> the user's pause/cancel -> the requeue write."""
    job_id = create_job(api, alice)
    redis_db.delete(TRAINING_QUEUE)
    monkeypatch.setattr("worker.reporting.shutdown_requested", lambda: True)
    after_training(monkeypatch, lambda: act(api, alice, job_id, action))
    expected = {"pause": Outcome.paused, "cancel": Outcome.cancelled}[action]
    assert run_job(job_id, "w1") is expected
    job = row(job_id)
    assert (job.status, job.lease_owner) == (expected.value, None)
    assert (job.pause_requested, job.attempt) == (False, 0 if action == "pause" else 1)
    assert redis_db.llen(TRAINING_QUEUE) == 0, "the job was sent to a worker again"


def test_shutdown_without_requests_requeues(
    api: TestClient, alice: dict[str, str], redis_db: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = create_job(api, alice)
    redis_db.delete(TRAINING_QUEUE)
    monkeypatch.setattr("worker.reporting.shutdown_requested", lambda: True)
    assert run_job(job_id, "w1") is Outcome.requeued
    job = row(job_id)
    assert (job.status, job.lease_owner, job.attempt) == (JobStatus.queued, None, 0)
    assert redis_db.llen(TRAINING_QUEUE) == 1
