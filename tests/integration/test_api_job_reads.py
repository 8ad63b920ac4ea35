"""GET /v1/fine_tuning/jobs/{id} from memory: never stale, never another owner's (#8)."""

import asyncio
import subprocess
import sys
import time

import httpx
from fastapi.testclient import TestClient

from api.schemas import JobOut
from shared.db.session import get_engine
from tests.integration.conftest import GOOD_JSONL, upload

JOBS = "/v1/fine_tuning/jobs"
# A worker is another process with its own connection: its commit must show on the next read.
COMMIT_ELSEWHERE = """
import sys
from sqlalchemy import create_engine, text
engine = create_engine(sys.argv[1])
with engine.begin() as conn:
    conn.execute(text("UPDATE jobs SET status = 'running', steps_completed = 7 WHERE id = :i"),
                 {"i": sys.argv[2]})
"""


def test_a_read_shows_what_another_process_committed_at_once(
    api: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    training = upload(api, alice, GOOD_JSONL)
    created = api.post(
        JOBS, headers=alice, json={"model": "gpt2-tiny", "training_file": training["id"]}
    )
    assert created.status_code == 200, created.text
    job_id = created.json()["id"]
    for _ in range(3):  # the first read fills the cache, the next ones are served from it
        read = api.get(f"{JOBS}/{job_id}", headers=alice)
        assert read.status_code == 200 and read.json()["status"] == "queued"
    assert JobOut.model_validate(read.json()).id == job_id
    assert read.headers["content-type"] == "application/json"
    # Another owner never gets the cached job.
    assert api.get(f"{JOBS}/{job_id}", headers=bob).status_code == 404
    url = get_engine().url.render_as_string(hide_password=False)
    subprocess.run([sys.executable, "-c", COMMIT_ELSEWHERE, url, job_id], check=True)
    read = api.get(f"{JOBS}/{job_id}", headers=alice).json()
    assert (read["status"], read["steps_completed"]) == ("running", 7)
    # A change made through this API process (a cancel request) shows on the next read too.
    cancel = api.post(f"{JOBS}/{job_id}/cancel", headers=alice)
    assert cancel.status_code == 200
    assert api.get(f"{JOBS}/{job_id}", headers=alice).json() == cancel.json()


def test_unknown_job_is_404(api: TestClient, alice: dict[str, str]) -> None:
    response = api.get(f"{JOBS}/ftjob-nope", headers=alice)
    assert response.status_code == 404
    assert response.json()["error"]["message"].startswith("No such job")


def queued_job(api: TestClient, headers: dict[str, str]) -> str:
    """A new job's id (queued: nothing runs it here)."""
    training = upload(api, headers, GOOD_JSONL)
    body = {"model": "gpt2-tiny", "training_file": training["id"]}
    return str(api.post(JOBS, headers=headers, json=body).json()["id"])


def counted_loads(monkeypatch, delay: float = 0.0) -> list[str]:  # type: ignore[no-untyped-def]
    """The job ids job_reads.load is called with from now on, each load delay seconds slower."""
    from api import job_reads

    loads: list[str] = []
    real_load = job_reads.load

    def counted(*args: object) -> bytes:
        loads.append(str(args[0]))
        time.sleep(delay)
        return real_load(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(job_reads, "load", counted)
    return loads


def test_pollers_missing_together_share_one_load(
    api: TestClient, alice: dict[str, str], monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from api.app import create_app

    job_id = queued_job(api, alice)
    # A slow database: the other pollers arrive while the first one reads.
    loads = counted_loads(monkeypatch, delay=0.2)

    async def poll_together() -> list[dict[str, object]]:
        transport = httpx.ASGITransport(app=create_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            replies = await asyncio.gather(
                *(client.get(f"{JOBS}/{job_id}", headers=alice) for _ in range(20))
            )
        return [reply.json() for reply in replies]

    replies = asyncio.run(poll_together())
    assert all(reply["id"] == job_id and reply["status"] == "queued" for reply in replies)
    # SQLite: one load shared (two if a commit came between); other databases: one per read.
    expected = 2 if get_engine().url.get_backend_name() == "sqlite" else 20
    assert 1 <= len(loads) <= expected, loads


def cached_reads_counted(api: TestClient) -> float:
    """The latency histogram's count of 200 job reads, under the route's template."""
    prefix = (
        'gpt2ft_http_request_duration_seconds_count{method="GET",'
        'route="/v1/fine_tuning/jobs/{job_id}",status="200"} '
    )
    lines = api.get("/metrics").text.splitlines()
    return sum(float(line[len(prefix) :]) for line in lines if line.startswith(prefix))


def test_an_answer_from_memory_is_the_routes_answer_and_is_timed_under_its_route(
    api: TestClient, alice: dict[str, str], bob: dict[str, str], monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    job_id = queued_job(api, alice)
    loads = counted_loads(monkeypatch)
    before = cached_reads_counted(api)
    first = api.get(f"{JOBS}/{job_id}", headers=alice)  # the route's load fills the entry
    second = api.get(f"{JOBS}/{job_id}", headers=alice)  # answered before routing (SQLite)
    assert len(loads) == (1 if get_engine().url.get_backend_name() == "sqlite" else 2)
    assert second.status_code == 200 and second.content == first.content
    assert second.headers["content-type"] == "application/json"
    assert int(second.headers["content-length"]) == len(second.content)
    assert cached_reads_counted(api) - before == 2
    # Not the owner, no key, a bad key, another method: never the cached body.
    assert api.get(f"{JOBS}/{job_id}", headers=bob).status_code == 404
    assert api.get(f"{JOBS}/{job_id}").status_code == 401
    assert api.get(f"{JOBS}/{job_id}", headers={"Authorization": "Bearer sk-x"}).status_code == 401
    assert api.delete(f"{JOBS}/{job_id}", headers=alice).status_code == 405
    assert api.get(f"{JOBS}/{job_id}/events", headers=alice).json()["object"] == "list"
