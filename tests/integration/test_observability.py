"""Prometheus /metrics and JSON-lines logs (job_id on job lines, never an API key)."""

import io
import json
import logging
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from shared.db.session import session_scope
from shared.db.tables import Job
from shared.logging_setup import configure_logging, job_logging
from shared.naming import TRAINING_QUEUE
from tests.integration.conftest import GOOD_JSONL, upload

JOBS = "/v1/fine_tuning/jobs"


def samples(text: str) -> dict[str, float]:
    """`name{labels} value` lines of the Prometheus text format."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def test_prometheus_reports_jobs_queues_and_route_latency(
    api: TestClient, alice: dict[str, str], redis_db: redis.Redis
) -> None:
    file_id = upload(api, alice, GOOD_JSONL)["id"]
    ids = []
    for _ in range(2):
        body = {"model": "gpt2-tiny", "training_file": file_id}
        ids.append(api.post(JOBS, headers=alice, json=body).json()["id"])
    with session_scope() as session:
        job = session.get(Job, ids[0])
        assert job is not None
        job.status, job.stats = "running", {"tokens_per_second": 1234.5}
    api.get(f"{JOBS}/{ids[1]}", headers=alice)
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    assert found['gpt2ft_jobs{status="running"}'] == 1
    assert found['gpt2ft_jobs{status="queued"}'] == 1
    assert found['gpt2ft_jobs{status="validating_files"}'] == 0
    assert found['gpt2ft_jobs{status="succeeded"}'] == 0
    assert found[f'gpt2ft_queue_depth{{queue="{TRAINING_QUEUE}"}}'] == redis_db.llen(TRAINING_QUEUE)
    assert found[f'gpt2ft_queue_depth{{queue="{TRAINING_QUEUE}"}}'] >= 2  # one per job at least
    # Throughput is summed: the unauthenticated page names no job.
    assert found["gpt2ft_training_tokens_per_second"] == 1234.5
    assert not any(job_id in response.text for job_id in ids)
    assert found["gpt2ft_job_duration_seconds_count"] == 0
    # Latency is labelled by the route template, never the job id in the path.
    templated = 'route="/v1/fine_tuning/jobs/{job_id}",status="200"'
    assert any(templated in name for name in found)
    assert not any(ids[1] in name and "http_request" in name for name in found)

    with session_scope() as session:
        job = session.get(Job, ids[1])
        assert job is not None
        job.status, job.started_at, job.finished_at = "succeeded", 1_000.0, 1_030
    found = samples(api.get("/metrics").text)
    assert found["gpt2ft_job_duration_seconds_count"] == 1
    assert found["gpt2ft_job_duration_seconds_sum"] == 30
    assert found['gpt2ft_jobs{status="succeeded"}'] == 1


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """JSON-lines logging into a buffer; the previous handlers come back after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buffer = io.StringIO()
    configure_logging("INFO", buffer)
    yield buffer
    root.handlers[:], _ = saved[0], root.setLevel(saved[1])


def test_log_lines_are_json_with_job_id_and_no_api_key(
    api: TestClient, alice: dict[str, str], json_logs: io.StringIO
) -> None:
    key = alice["Authorization"].removeprefix("Bearer ")
    logging.getLogger("gpt2ft.test").info("outside any job")
    with job_logging("ftjob-123"):
        logging.getLogger("worker.run_job").warning("inside %s", "a job")
    api.get("/v1/files", headers=alice)
    api.get("/v1/files", headers={"Authorization": f"Bearer {key}x"})  # a wrong key
    api.get("/v1/files/file-nope/content", headers=alice)
    err = json_logs.getvalue()
    lines = [json.loads(line) for line in err.splitlines()]
    assert len(lines) >= 2
    for line in lines:
        assert {"timestamp", "level", "logger", "message"} <= set(line)
    by_message = {line["message"]: line for line in lines}
    assert by_message["inside a job"]["job_id"] == "ftjob-123"
    assert by_message["inside a job"]["level"] == "WARNING"
    assert "job_id" not in by_message["outside any job"]
    assert key not in err
