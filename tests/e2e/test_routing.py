"""Jobs go where they fit, with real worker processes: one offers too little memory.

The service's worker ("worker") offers the host's RAM; "small" offers 1 MiB
(GPT2FT_WORKER_MEMORY_GIB), less than any gpt2-tiny job needs.
"""

import re
import signal
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import (
    GPT2FT,
    Service,
    api_client,
    job_events,
    upload_text,
    wait_until,
)
from tests.e2e.corpus import corpus_text
from tests.e2e.test_reliability import TERMINAL

pytestmark = pytest.mark.e2e
SMALL = {"GPT2FT_WORKER_MEMORY_GIB": str(1 / 1024), "GPT2FT_UNPLACEABLE_TIMEOUT_SECONDS": "4"}


def workers_table(service: Service) -> list[list[str]]:
    """`gpt2ft workers` rows (header dropped), split on runs of two or more spaces."""
    done = subprocess.run(
        [GPT2FT, "workers"], env=service.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and lines[0].split() == ["ID", "HOST", "DEVICE", "MEMORY", "LAST", "SEEN", "JOB"]
    return [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]


@pytest.fixture(scope="module")
def api(service: Service) -> Iterator[httpx.Client]:
    service.start_worker("small", **SMALL)
    wait_until(lambda: len(workers_table(service)) == 2, 90, "both workers in `gpt2ft workers`")
    with api_client(service) as client:
        yield client


def create(api: httpx.Client, file_id: str) -> str:
    hp = {"n_epochs": 1, "batch_size": 4, "block_size": 32}
    body = {"model": "gpt2-tiny", "training_file": file_id, "hyperparameters": hp}
    response = api.post("/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def messages(api: httpx.Client, job_id: str) -> list[str]:
    return [e["message"] for e in job_events(api, job_id)]


def claims(service: Service, name: str, job_id: str) -> int:
    return (service.logs / f"{name}.log").read_text().count(f"job {job_id}: claimed")


def test_fleet_is_listed_and_jobs_run_only_where_they_fit(
    service: Service, api: httpx.Client
) -> None:
    rows = {row[3]: row for row in workers_table(service)}
    assert set(rows) >= {"0.0 GiB"} and len(rows) == 2, rows  # small's 1 MiB, and the host's
    assert all(row[2] == "cpu" and row[5] == "-" for row in rows.values())
    metrics = httpx.get(f"{service.url}/metrics").text
    assert 'gpt2ft_workers{device="cpu"} 2.0' in metrics
    assert 'gpt2ft_workers{device="cuda"} 0.0' in metrics

    # Two jobs at once: whichever worker takes the first is busy when the second comes.
    file_id = upload_text(api, "corpus.txt", corpus_text(3))
    jobs = [create(api, file_id) for _ in range(2)]
    wait_until(
        lambda: all(api.get(f"/fine_tuning/jobs/{j}").json()["status"] in TERMINAL for j in jobs),
        240,
        "both jobs",
    )
    forwarded = 0
    for job_id in jobs:
        assert api.get(f"/fine_tuning/jobs/{job_id}").json()["status"] == "succeeded"
        assert claims(service, "worker", job_id) == 1  # the one that fits trained every job
        sent = [m for m in messages(api, job_id) if "this worker" in m and "sent to" in m]
        # small took it (once per message it got), planned it, and sent it on.
        assert len(sent) == claims(service, "small", job_id), messages(api, job_id)
        forwarded += len(sent)
    assert forwarded >= 1, "small never took a job: the routing was not exercised"


def test_a_job_no_live_worker_fits_waits_then_fails_clearly(
    service: Service, api: httpx.Client
) -> None:
    service.stop("worker", signal.SIGTERM)
    # A clean shutdown removes its rows at once (a killed worker's age out within a lease).
    rows = workers_table(service)
    assert len(rows) == 1 and rows[0][3] == "0.0 GiB", rows
    job_id = create(api, upload_text(api, "corpus.txt", corpus_text(3)))
    wait_until(
        lambda: api.get(f"/fine_tuning/jobs/{job_id}").json()["status"] in TERMINAL, 90, "fail"
    )
    job = api.get(f"/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"]["code"] == "no_worker_fits", job
    assert job["trained_tokens"] in (None, 0)
    said = messages(api, job_id)
    assert any(m.startswith("No live worker can run this job: it needs about") for m in said)
