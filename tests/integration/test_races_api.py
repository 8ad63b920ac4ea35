"""Parallel requests against two real `gpt2ft api` processes over one database (SQLite, Postgres).

Two processes, as behind a load balancer: only the database can keep these requests apart.
"""

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import redis
from sqlalchemy import func, select

from shared.db.session import session_scope
from shared.db.tables import TERMINAL_STATUSES, File, Job
from tests.e2e.conftest import free_port, wait_until
from tests.integration.conftest import GOOD_JSONL

GPT2FT = str(Path(sys.executable).with_name("gpt2ft"))
PARALLEL = 20
# Each round races one create against one delete of the same file. Before the fix about
# one round in ten let both succeed; 40 rounds miss that with a chance of about 1.5%.
DELETE_ROUNDS = 40

Servers = Callable[..., list[str]]
T = TypeVar("T")


@pytest.fixture
def api_servers(gpt2ft_home: Path, redis_db: redis.Redis, tmp_path: Path) -> Iterator[Servers]:
    """Start `gpt2ft api` processes over the test database; settings as keyword arguments."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(count: int = 2, **settings: str) -> list[str]:
        urls = []
        for index in range(count):
            port = free_port()
            log = (tmp_path / f"api-{index}.log").open("ab")
            env = {**os.environ, **settings, "GPT2FT_LOG_LEVEL": "WARNING"}
            processes.append(
                subprocess.Popen(
                    [GPT2FT, "api", "--port", str(port)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            wait_until(lambda u=url: httpx.get(f"{u}/readyz").status_code == 200, 60, url)
        return urls

    yield start
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=30)


@pytest.fixture
def key(gpt2ft_home: Path) -> dict[str, str]:
    from shared.keys import create_api_key

    return {"Authorization": f"Bearer {create_api_key('alice')}"}


def upload(url: str, headers: dict[str, str]) -> int | str:
    """A fine-tune file's id, or the refusal's status code."""
    files = {"file": ("train.jsonl", GOOD_JSONL)}
    response = httpx.post(
        f"{url}/v1/files", headers=headers, files=files, data={"purpose": "fine-tune"}, timeout=60
    )
    assert response.status_code in (200, 429), response.text
    return str(response.json()["id"]) if response.status_code == 200 else response.status_code


def create_job(url: str, headers: dict[str, str], file_id: str) -> int:
    body = {"model": "gpt2-tiny", "training_file": file_id, "hyperparameters": {"n_epochs": 1}}
    response = httpx.post(f"{url}/v1/fine_tuning/jobs", headers=headers, json=body, timeout=60)
    assert response.status_code in (200, 404, 429), response.text
    return response.status_code


def delete_file(url: str, headers: dict[str, str], file_id: str) -> int:
    response = httpx.delete(f"{url}/v1/files/{file_id}", headers=headers, timeout=60)
    assert response.status_code in (200, 409), response.text
    return response.status_code


def at_once(calls: list[Callable[[], T]]) -> list[T]:
    """Run calls in threads released together by a barrier; their results in order."""
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def active_jobs(owner: str) -> list[str]:
    with session_scope() as session:
        unfinished = Job.status.not_in(TERMINAL_STATUSES)
        return list(session.scalars(select(Job.id).where(Job.owner == owner, unfinished)))


def test_parallel_creates_never_pass_the_active_jobs_limit(
    api_servers: Servers, key: dict[str, str]
) -> None:
    limit = 3
    urls = api_servers(GPT2FT_MAX_ACTIVE_JOBS_PER_OWNER=str(limit))
    file_id = str(upload(urls[0], key))
    for round_number in range(5):
        codes = at_once(
            [partial(create_job, urls[i % len(urls)], key, file_id) for i in range(PARALLEL)]
        )
        created = active_jobs("alice")
        assert (codes.count(200), len(created)) == (limit, limit), f"round {round_number}"
        assert codes.count(429) == PARALLEL - limit
        for job_id in created:  # finished jobs free their places for the next round
            cancelled = httpx.post(f"{urls[0]}/v1/fine_tuning/jobs/{job_id}/cancel", headers=key)
            assert cancelled.json()["status"] == "cancelled"


def test_parallel_uploads_never_pass_the_storage_quota(
    api_servers: Servers, key: dict[str, str]
) -> None:
    quota = 3 * len(GOOD_JSONL)
    urls = api_servers(GPT2FT_MAX_STORED_BYTES_PER_OWNER=str(quota))
    answers = at_once([partial(upload, urls[i % len(urls)], key) for i in range(PARALLEL)])
    with session_scope() as session:
        live = select(func.sum(File.bytes)).where(File.owner == "alice", File.deleted_at.is_(None))
        stored = int(session.scalar(live) or 0)
    assert (answers.count(429), stored) == (PARALLEL - 3, quota)


def test_create_racing_the_delete_of_its_file_never_leaves_a_job_without_it(
    api_servers: Servers, key: dict[str, str]
) -> None:
    creator, deleter = api_servers(GPT2FT_MAX_ACTIVE_JOBS_PER_OWNER="1000")
    outcomes = []
    for _ in range(DELETE_ROUNDS):
        file_id = str(upload(creator, key))
        calls = [
            partial(create_job, creator, key, file_id),
            partial(delete_file, deleter, key, file_id),
        ]
        outcomes.append(tuple(at_once(calls)))
    # Either the job came first (the delete is refused while it is unfinished) or the
    # delete did (the create finds no file).
    assert set(outcomes) <= {(200, 409), (404, 200)}, outcomes
    with session_scope() as session:
        orphans = session.scalars(
            select(Job.id)
            .join(File, File.id == Job.training_file)
            .where(File.deleted_at.is_not(None))
        ).all()
    assert orphans == []
