"""n_gpus 2 through the service: torchrun ranks (gloo on this CPU host) under a real worker."""

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Service, api_client, upload_text, wait_until
from tests.e2e.corpus import corpus_text

pytestmark = pytest.mark.e2e
TERMINAL = {"succeeded", "failed", "cancelled"}


def job_processes(job_id: str) -> list[int]:
    """Live pids whose command line names the job's scratch folder: torchrun and its ranks."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if job_id in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def start_job(api: httpx.Client, text: str, **hyperparameters: Any) -> str:
    training = upload_text(api, "corpus.txt", text)
    body = {"n_gpus": 2, "block_size": 32, "batch_size": 4, **hyperparameters}
    response = api.post(
        "/fine_tuning/jobs",
        json={"model": "gpt2-tiny", "training_file": training, "hyperparameters": body},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def wait_status(api: httpx.Client, job_id: str, wanted: set[str], timeout: float) -> dict:
    job: dict[str, Any] = {}

    def reached() -> bool:
        job.update(api.get(f"/fine_tuning/jobs/{job_id}").json())
        return job["status"] in wanted

    wait_until(reached, timeout, f"job {job_id} in {wanted}")
    return job


def messages(api: httpx.Client, job_id: str) -> list[str]:
    events = api.get(f"/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()
    return [event["message"] for event in events["data"]]


def test_two_rank_job_succeeds_with_checkpoints(service: Service) -> None:
    with api_client(service) as api:
        job_id = start_job(api, corpus_text(4), n_epochs=2)
        job = wait_status(api, job_id, TERMINAL, timeout=240)

        assert job["status"] == "succeeded", job.get("error")
        assert job["hyperparameters"]["n_gpus"] == 2 and job["fine_tuned_model"]
        texts = messages(api, job_id)
        assert any(text.startswith("Training gpt2-tiny on cpu") for text in texts)
        assert any(text.startswith("Step ") and "training loss=" in text for text in texts)
        steps = [c["step_number"] for c in api.get(f"/fine_tuning/jobs/{job_id}/checkpoints")
                 .json()["data"]]  # fmt: skip
        assert len(steps) == 2  # one per epoch, published by the worker from rank 0's folder
        assert not job_processes(job_id)


def test_cancel_leaves_no_rank_alive_after_15_seconds(service: Service) -> None:
    with api_client(service) as api:
        job_id = start_job(api, corpus_text(30), n_epochs=50)

        def stepping() -> bool:
            job = api.get(f"/fine_tuning/jobs/{job_id}").json()
            return bool(job.get("steps_completed"))

        wait_until(stepping, 180, "a logged step")
        assert len(job_processes(job_id)) >= 3  # torchrun and two ranks
        assert api.post(f"/fine_tuning/jobs/{job_id}/cancel").status_code == 200
        cancelled = time.monotonic()
        assert wait_status(api, job_id, TERMINAL, timeout=30)["status"] == "cancelled"
        wait_until(lambda: not job_processes(job_id), 15 - (time.monotonic() - cancelled),
                   "every rank gone")  # fmt: skip


def test_pause_then_resume_continues_on_two_ranks(service: Service) -> None:
    with api_client(service) as api:
        job_id = start_job(api, corpus_text(10), n_epochs=3)
        wait_until(lambda: api.get(f"/fine_tuning/jobs/{job_id}").json().get("steps_completed"),
                   180, "a logged step")  # fmt: skip
        assert api.post(f"/fine_tuning/jobs/{job_id}/pause").status_code == 200
        paused = wait_status(api, job_id, {"paused", *TERMINAL}, timeout=120)
        assert paused["status"] == "paused"
        assert not job_processes(job_id)
        assert api.post(f"/fine_tuning/jobs/{job_id}/resume").status_code == 200
        job = wait_status(api, job_id, TERMINAL, timeout=240)

        assert job["status"] == "succeeded", job.get("error")
        resumed = [text for text in messages(api, job_id) if text.startswith("Resumed from step")]
        assert resumed and int(resumed[0].split()[3]) >= 1


def test_a_worker_killed_with_sigkill_leaves_no_rank_behind(service: Service) -> None:
    """PR_SET_PDEATHSIG: torchrun dies with the worker, each rank with torchrun."""
    with api_client(service) as api:
        job_id = start_job(api, corpus_text(30), n_epochs=50)
        wait_until(lambda: api.get(f"/fine_tuning/jobs/{job_id}").json().get("steps_completed"),
                   180, "a logged step")  # fmt: skip
        assert len(job_processes(job_id)) >= 3
        service.stop("worker", signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: not job_processes(job_id), 15 - (time.monotonic() - killed),
                   "every rank gone")  # fmt: skip
        # The next worker's sweep cancels the orphaned job instead of resuming it.
        assert api.post(f"/fine_tuning/jobs/{job_id}/cancel").status_code == 200


def test_a_crashing_rank_fails_the_job_with_its_error(service: Service) -> None:
    if "worker" in service.processes:  # the SIGKILL test above may have taken it
        service.stop("worker")
    service.start_worker("worker", GPT2FT_DDP_FAIL_AT="1:2")
    with api_client(service) as api:
        job_id = start_job(api, corpus_text(4), n_epochs=2)
        job = wait_status(api, job_id, TERMINAL, timeout=240)

        assert job["status"] == "failed"
        assert "rank 1 failed: RuntimeError: injected failure on rank 1" in job["error"]["message"]
        assert not job_processes(job_id)
