"""Jobs: create (row + Celery message in Redis), validation, paging, cancel/pause/resume."""

import base64
import json
import time
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from shared.db.session import session_scope
from shared.db.tables import Job, JobEvent
from shared.naming import TRAIN_TASK, TRAINING_QUEUE
from shared.settings import get_settings
from tests.integration.conftest import GOOD_JSONL, upload

JOBS = "/v1/fine_tuning/jobs"


@pytest.fixture
def training_file(api: TestClient, alice: dict[str, str]) -> str:
    return str(upload(api, alice, GOOD_JSONL)["id"])


def create(api: TestClient, headers: dict[str, str], **body: Any) -> Any:
    return api.post(JOBS, headers=headers, json={"model": "gpt2-tiny", **body})


def queued_messages(redis_db: redis.Redis) -> list[dict[str, Any]]:
    """The Celery messages waiting in the training list, decoded (protocol 2, JSON)."""
    messages = []
    for raw in redis_db.lrange(TRAINING_QUEUE, 0, -1):
        envelope = json.loads(raw)
        args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        messages.append({"task": envelope["headers"]["task"], "args": args, "kwargs": kwargs})
    return messages


def set_status(job_id: str, status: str) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = status


def test_create_job_stores_row_and_wakes_a_worker(
    api: TestClient, alice: dict[str, str], training_file: str, redis_db: redis.Redis
) -> None:
    response = create(
        api, alice, training_file=training_file, suffix="my-run_1", seed=7,
        hyperparameters={"n_epochs": 2, "block_size": 64}, warmup_ratio=0.1,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["object"] == "fine_tuning.job" and job["status"] == "queued"
    assert job["organization_id"] == "alice" and job["seed"] == 7
    assert job["user_provided_suffix"] == "my-run_1"
    shown = {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"}
    assert job["hyperparameters"] == {
        **shown,
        "block_size": 64,
        "warmup_ratio": 0.1,
        "task": "causal_lm",
    }
    assert job["method"]["supervised"]["hyperparameters"] == job["hyperparameters"]
    assert job["progress"] is None and job["result_files"] == []
    with session_scope() as session:
        row = session.get(Job, job["id"])
        assert row is not None and row.status == "queued" and row.enqueued_at
        assert row.hyperparameters == {"n_epochs": 2, "block_size": 64, "warmup_ratio": 0.1}
    assert queued_messages(redis_db) == [{"task": TRAIN_TASK, "args": [job["id"]], "kwargs": {}}]
    assert api.get(f"{JOBS}/{job['id']}", headers=alice).json()["id"] == job["id"]


def test_method_form_and_random_seed(
    api: TestClient, alice: dict[str, str], training_file: str
) -> None:
    method = {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4}}}
    job = create(api, alice, training_file=training_file, method=method).json()
    assert job["hyperparameters"]["batch_size"] == 4
    assert isinstance(job["seed"], int) and 0 <= job["seed"] < 2**31


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", "greater than or equal"),
        ({"hyperparameters": {"n_epochs": 101}}, "hyperparameters.n_epochs", "less than or equal"),
        ({"hyperparameters": {"batch_size": "big"}}, "hyperparameters.batch_size", '"auto"'),
        ({"hyperparameters": {"warmup": 0.1}}, "hyperparameters.warmup", "unknown field"),
        ({"learning_rate": 5}, "learning_rate", "less than or equal to 1"),
        ({"block_size": 4}, "block_size", "greater than or equal to 8"),
        ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": -1}}}},
         "method.supervised.hyperparameters.n_epochs", "greater than or equal to 1"),
        ({"colour": "blue"}, "colour", "unknown field"),
        ({"suffix": "x" * 41}, "suffix", "at most 40"),
        ({"suffix": "no spaces"}, "suffix", "pattern"),
    ],
)  # fmt: skip
def test_bad_bodies_are_422_naming_the_field(
    api: TestClient,
    alice: dict[str, str],
    training_file: str,
    body: dict[str, Any],
    param: str,
    fragment: str,
) -> None:
    response = create(api, alice, training_file=training_file, **body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param and fragment in error["message"] and param in error["message"]
    with session_scope() as session:
        assert session.scalars(select(Job)).first() is None


def test_unknown_model_and_other_owners_file(
    api: TestClient, alice: dict[str, str], bob: dict[str, str], training_file: str
) -> None:
    response = api.post(JOBS, headers=alice, json={"model": "gpt5", "training_file": training_file})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "model 'gpt5' does not exist; GET /v1/models lists the base models"
    )
    response = create(api, bob, training_file=training_file)
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "training_file"
    response = create(api, alice, training_file=training_file, validation_file="file-nope")
    assert response.status_code == 404 and "file-nope" in response.json()["error"]["message"]


def test_broker_down_still_returns_the_job(
    api: TestClient, alice: dict[str, str], training_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.settings import get_settings

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    started = time.monotonic()
    response = create(api, alice, training_file=training_file)
    assert response.status_code == 200 and response.json()["status"] == "queued"
    assert time.monotonic() - started < 10


def test_list_pages_newest_first_and_by_owner(
    api: TestClient,
    alice: dict[str, str],
    bob: dict[str, str],
    training_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GPT2FT_MAX_ACTIVE_JOBS_PER_OWNER", "10")  # five unfinished jobs
    get_settings.cache_clear()
    ids = [create(api, alice, training_file=training_file).json()["id"] for _ in range(5)]
    bobs_file = str(upload(api, bob, GOOD_JSONL)["id"])
    create(api, bob, training_file=bobs_file)
    seen: list[str] = []
    after = None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = api.get(JOBS, headers=alice, params=params).json()
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    created = [j["created_at"] for j in api.get(JOBS, headers=alice).json()["data"]]
    assert created == sorted(created, reverse=True)
    assert api.get(JOBS, headers=alice, params={"limit": 101}).status_code == 422
    assert api.get(f"{JOBS}/{ids[0]}", headers=bob).status_code == 404


def test_cancel_queued_twice_and_finished(
    api: TestClient, alice: dict[str, str], bob: dict[str, str], training_file: str
) -> None:
    job_id = create(api, alice, training_file=training_file).json()["id"]
    set_status(job_id, "queued")
    assert api.post(f"{JOBS}/{job_id}/cancel", headers=bob).status_code == 404
    first = api.post(f"{JOBS}/{job_id}/cancel", headers=alice).json()
    assert first["status"] == "cancelled" and first["finished_at"] is not None
    again = api.post(f"{JOBS}/{job_id}/cancel", headers=alice)
    assert again.status_code == 200 and again.json() == first
    with session_scope() as session:
        messages = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id))
        assert list(messages) == ["Job cancelled"]

    done = create(api, alice, training_file=training_file).json()["id"]
    set_status(done, "succeeded")
    response = api.post(f"{JOBS}/{done}/cancel", headers=alice)
    assert response.status_code == 409
    assert "status is succeeded" in response.json()["error"]["message"]


def test_cancel_running_asks_the_worker(
    api: TestClient, alice: dict[str, str], training_file: str
) -> None:
    job_id = create(api, alice, training_file=training_file).json()["id"]
    set_status(job_id, "running")
    assert api.post(f"{JOBS}/{job_id}/cancel", headers=alice).json()["status"] == "running"
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.cancel_requested is True


def test_pause_and_resume(
    api: TestClient, alice: dict[str, str], training_file: str, redis_db: redis.Redis
) -> None:
    job_id = create(api, alice, training_file=training_file).json()["id"]
    set_status(job_id, "queued")
    assert api.post(f"{JOBS}/{job_id}/pause", headers=alice).json()["status"] == "paused"
    redis_db.delete(TRAINING_QUEUE)
    resumed = api.post(f"{JOBS}/{job_id}/resume", headers=alice).json()
    assert resumed["status"] == "queued"
    assert [m["args"] for m in queued_messages(redis_db)] == [[job_id]]
    assert api.post(f"{JOBS}/{job_id}/resume", headers=alice).status_code == 409
    set_status(job_id, "running")
    assert api.post(f"{JOBS}/{job_id}/pause", headers=alice).json()["status"] == "running"
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.pause_requested is True
    set_status(job_id, "failed")
    assert api.post(f"{JOBS}/{job_id}/pause", headers=alice).status_code == 409
