"""`gpt2ft worker` and its device: listed in /readyz, and a GPU it cannot use stops it at once."""

import time

import httpx
import pytest

from tests.e2e.conftest import Service, wait_until

pytestmark = pytest.mark.e2e


def live_workers(service: Service) -> list[dict]:
    workers: list[dict] = httpx.get(f"{service.url}/readyz").json()["workers"]
    return workers


def test_readyz_lists_the_workers_and_their_device(service: Service) -> None:
    wait_until(lambda: len(live_workers(service)) >= 2, 120, "both worker processes in /readyz")
    workers = live_workers(service)
    queues = sorted(queue for w in workers for queue in w["queues"])
    # The shared queues, and the training process's own (jobs only it has the memory for).
    assert [q for q in queues if not q.startswith("training.")] == ["inference", "training"]
    assert len([q for q in queues if q.startswith("training.")]) == 1, queues
    assert all(w["device"] == "cpu" and w["device_kind"] == "cpu" for w in workers)
    assert all(w["torch_version"] and w["hostname"] for w in workers)


def test_a_worker_told_to_use_cuda_without_it_exits_saying_why(service: Service) -> None:
    started = time.monotonic()
    worker = service.start_worker("no-gpu", GPT2FT_DEVICE="cuda")
    try:
        code = worker.wait(timeout=180)
    finally:
        service.processes.pop("no-gpu", None)
    assert code != 0
    log = (service.logs / "no-gpu.log").read_text()
    assert "GPT2FT_DEVICE=cuda but CUDA is not usable" in log
    assert "GPT2FT_DEVICE=cpu" in log
    assert time.monotonic() - started < 180
