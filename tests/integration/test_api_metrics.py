"""Metrics JSON/CSV, loss charts, the SSE event stream and live progress fields, over real DBs."""

import json
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.db.session import session_scope
from shared.db.tables import Job, JobEvent
from shared.jobs import add_events, claim_job, event_row, fenced_update
from shared.storage import get_storage
from tests.integration.conftest import GOOD_JSONL, upload

JOBS = "/v1/fine_tuning/jobs"


@pytest.fixture
def job_id(api: TestClient, alice: dict[str, str]) -> str:
    file_id = upload(api, alice, GOOD_JSONL)["id"]
    response = api.post(JOBS, headers=alice, json={"model": "gpt2-tiny", "training_file": file_id})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def run_reporter(job_id: str, steps: int) -> Any:
    """A real DbReporter under a real lease, logging `steps` steps and one evaluation."""
    from worker.heartbeat import Heartbeat
    from worker.reporting import DbReporter

    with session_scope() as session:
        lease = claim_job(session, job_id, "test-worker", 60, 3)
        assert lease is not None
        fenced_update(session, lease, status="running", total_steps=steps)
    heartbeat = Heartbeat(lease, 60, 15)
    reporter = DbReporter(lease, heartbeat, get_storage(), "ft:x", steps, flush_seconds=60)
    for step in range(1, steps + 1):
        log = {"epoch": step / steps, "train_loss": 5.0 - step * 0.2, "learning_rate": 1e-4}
        reporter.on_log(step, {**log, "tokens_seen": step * 512})
        time.sleep(0.01)
    evaluation = {"valid_loss": 4.1, "valid_perplexity": 60.3, "valid_mean_token_accuracy": 0.2}
    reporter.on_eval(steps, {"epoch": 1.0, **evaluation})
    return reporter


def test_metrics_json_csv_and_live_progress(
    api: TestClient, alice: dict[str, str], bob: dict[str, str], job_id: str
) -> None:
    run_reporter(job_id, 6)
    body = api.get(f"{JOBS}/{job_id}/metrics", headers=alice).json()
    assert body["object"] == "list" and [p["step"] for p in body["data"]] == [1, 2, 3, 4, 5, 6]
    first, last = body["data"][0], body["data"][-1]
    assert first["train_loss"] == pytest.approx(4.8) and first["learning_rate"] == 1e-4
    assert last["valid_loss"] == 4.1 and last["valid_perplexity"] == 60.3
    assert last["valid_mean_token_accuracy"] == 0.2 and last["train_loss"] == pytest.approx(3.8)
    assert last["tokens_per_second"] > 0 and first["tokens_per_second"] is None

    csv = api.get(f"{JOBS}/{job_id}/metrics", headers=alice, params={"format": "csv"})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.splitlines()
    assert lines[0].startswith("step,epoch,train_loss,valid_loss,") and len(lines) == 7

    job = api.get(f"{JOBS}/{job_id}", headers=alice).json()
    assert job["status"] == "running" and job["steps_completed"] == 6
    assert job["total_steps"] == 6 and job["progress"] == 1.0
    assert job["tokens_per_second"] > 0 and job["trained_tokens"] == 6 * 512
    assert job["estimated_finish"] is not None

    for suffix in ("metrics", "loss.svg", "loss.png"):
        missing = api.get(f"{JOBS}/{job_id}/{suffix}", headers=bob)
        assert missing.status_code == 404 and job_id in missing.json()["error"]["message"]


def test_loss_charts_are_drawn_from_the_job_metrics(
    api: TestClient, alice: dict[str, str], job_id: str
) -> None:
    run_reporter(job_id, 5)
    svg = api.get(f"{JOBS}/{job_id}/loss.svg", headers=alice)
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.count("<polyline") == 2 and ">step</text>" in svg.text
    png = api.get(f"{JOBS}/{job_id}/loss.png", headers=alice)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_result_files_show_on_the_job(api: TestClient, alice: dict[str, str], job_id: str) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.stats = {"result_files": ["file-results-1"], "tokens_per_second": 9.0}
        job.status = "succeeded"
    body = api.get(f"{JOBS}/{job_id}", headers=alice).json()
    assert body["result_files"] == ["file-results-1"] and body["tokens_per_second"] is None


def finish_later(job_id: str, delay: float) -> threading.Thread:
    def work() -> None:
        time.sleep(delay)
        with session_scope() as session:
            add_events(session, [event_row(job_id, "late event")])
        time.sleep(0.3)
        with session_scope() as session:
            job = session.get(Job, job_id)
            assert job is not None
            job.status = "succeeded"

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_event_stream_sends_history_then_live_events_then_done(
    api: TestClient, alice: dict[str, str], job_id: str
) -> None:
    thread = finish_later(job_id, 0.8)
    started = time.monotonic()
    with api.stream(
        "GET", f"{JOBS}/{job_id}/events", headers=alice, params={"stream": "true"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    thread.join()
    assert time.monotonic() - started >= 0.8  # it waited for the live event
    blocks = [b for b in text.split("\n\n") if b.strip()]
    assert blocks[-1].startswith("event: done\n") and '"status": "succeeded"' in blocks[-1]
    events = [json.loads(b.removeprefix("data: ")) for b in blocks[:-1]]
    messages = [e["message"] for e in events]
    assert messages[-1] == "late event"
    with session_scope() as session:
        stored = session.query(JobEvent).filter(JobEvent.job_id == job_id).count()
    assert len(events) == stored
    assert all(e["object"] == "fine_tuning.job.event" for e in events)
    created = [e["created_at"] for e in events]
    assert created == sorted(created)
    # Without stream=true the JSON list (newest first) is what it always was.
    listed = api.get(f"{JOBS}/{job_id}/events", headers=alice).json()
    assert listed["object"] == "list" and listed["data"][0]["message"] == "late event"


def test_event_stream_after_an_event_sends_only_newer_ones(
    api: TestClient, alice: dict[str, str], job_id: str
) -> None:
    run_reporter(job_id, 4)  # history: the create event and four step events
    newest = api.get(f"{JOBS}/{job_id}/events", headers=alice, params={"limit": 1}).json()
    thread = finish_later(job_id, 0.5)
    params = {"stream": "true", "after": newest["data"][0]["id"]}
    with api.stream("GET", f"{JOBS}/{job_id}/events", headers=alice, params=params) as response:
        assert response.status_code == 200
        text = "".join(response.iter_text())
    thread.join()
    blocks = [b for b in text.split("\n\n") if b.strip()]
    assert blocks[-1].startswith("event: done\n")
    assert [json.loads(b.removeprefix("data: "))["message"] for b in blocks[:-1]] == ["late event"]

    unknown = api.get(
        f"{JOBS}/{job_id}/events", headers=alice, params={"stream": "true", "after": "ftevent-x"}
    )
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "after"
