"""Jobs go where they fit: the routing rule on SQLite and Postgres, with real Redis queues.

The workers here are rows (as a worker's heartbeat writes them); run_job runs for real in
this process, with GPT2FT_WORKER_MEMORY_GIB making it a worker too small for the job.
"""

import time
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from api.queue import training_queue
from shared.db.session import session_scope
from shared.db.tables import Job, JobEvent, JobStatus, Worker
from shared.settings import get_settings
from shared.workers import GIB, fleet, place, register_worker
from tests.integration.test_worker_memory import create_job
from worker.dispatch import send_job, settle_placement
from worker.outcomes import Outcome
from worker.run_job import run_job

TINY = 1 / 1024  # GiB: 1 MiB, less than any job on gpt2-tiny needs


def worker(
    worker_id: str, memory_gib: float | None, queues: list[str] | None = None, gpus: int = 1
) -> None:
    report: dict[str, Any] = {
        "hostname": worker_id.split(":")[0],
        "queues": queues if queues is not None else ["training", f"training.{worker_id}"],
        "device_kind": "cpu" if memory_gib is None else "cuda",
        "device": "cpu" if memory_gib is None else "cuda:0",
        "device_count": 0 if memory_gib is None else gpus,
        "devices": [],
        "memory_bytes": None if memory_gib is None else int(memory_gib * GIB),
    }
    with session_scope() as session:
        register_worker(session, worker_id, report)


def job_state(job_id: str) -> tuple[Job, list[str]]:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        query = select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)
        return job, list(session.scalars(query))


def test_the_rule_prefers_idle_then_smallest_fitting_worker(api: TestClient) -> None:
    worker("small", 8)
    worker("big", 80)
    worker("huge", 140)
    worker("serving", 1, queues=["inference"])  # inference processes never take training
    with session_scope() as session:
        assert place(session, None, 60).queue == "training"  # not planned yet: anyone
        assert place(session, 4 * GIB, 60).queue == "training"  # every trainer fits
        assert place(session, 20 * GIB, 60).queue == "training.big"  # smallest that fits
        assert place(session, 100 * GIB, 60).queue == "training.huge"
        nowhere = place(session, 200 * GIB, 60)
        assert nowhere.queue is None
        assert nowhere.reason == (
            "it needs about 200.00 GiB; the largest live worker (huge, cuda:0) offers 140.00 GiB"
        )
        # big is busy with another job: the idle huge one gets it.
        session.add(
            Job(
                id="ftjob-busy", owner="x", model="gpt2-tiny", training_file="f", seed=1,
                status=JobStatus.running, hyperparameters={}, created_at=1,
                lease_owner="big", lease_expires_at=time.time() + 60,
            )
        )  # fmt: skip
    with session_scope() as session:
        assert place(session, 20 * GIB, 60).queue == "training.huge"
        # A worker not seen within the window is not live.
        session.execute(update(Worker).where(Worker.id == "huge").values(last_seen_at=1.0))
    with session_scope() as session:
        assert place(session, 20 * GIB, 60).queue == "training.big"
        assert place(session, 100 * GIB, 60).queue is None
        listed = {row["id"]: row["job"] for row in fleet(session, 60)}
        assert listed == {"small": None, "big": "ftjob-busy"}


def test_a_worker_that_stops_cleanly_leaves_the_fleet_at_once(api: TestClient) -> None:
    import torch

    from worker.fleet import WorkerBeat, device_report

    report = {**device_report(torch.device("cpu")), "queues": ["training", "training.w"]}
    beat = WorkerBeat("w", report, interval=0.2).start()
    with session_scope() as session:
        assert [row["id"] for row in fleet(session, 60)] == ["w"]
        assert place(session, 1, 60).queue == "training"
    beat.leave()
    with session_scope() as session:
        assert fleet(session, 60, everyone=True) == []
    time.sleep(0.5)  # no beat brings it back
    with session_scope() as session:
        assert fleet(session, 60, everyone=True) == []


def test_n_gpus_goes_to_a_worker_with_that_many(api: TestClient) -> None:
    worker("one", 80)
    worker("four", 80, gpus=4)
    with session_scope() as session:
        assert place(session, None, 60).queue == "training"
        assert place(session, None, 60, gpus=2).queue == "training.four"  # known before planning
        assert place(session, 10 * GIB, 60, gpus=4).queue == "training.four"
        nowhere = place(session, 10 * GIB, 60, gpus=8)
        assert nowhere.reason == "n_gpus 8: the live worker with the most GPUs (four) has 4"
    worker("cpu", None)  # a CPU worker runs any n_gpus as gloo ranks
    with session_scope() as session:
        assert place(session, 10 * GIB, 60, gpus=8).queue == "training.cpu"


def test_a_job_too_big_for_its_worker_goes_to_one_that_fits_else_waits_then_fails(
    api: TestClient,
    alice: dict[str, str],
    redis_db: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker("small-host:1:a", TINY)
    worker("big-host:1:b", 80)
    job_id = create_job(api, alice)
    assert redis_db.llen("training") == 1  # not planned yet: the shared queue
    redis_db.delete("training")

    # The small worker takes it, plans it, and sends it on without spending an attempt.
    monkeypatch.setenv("GPT2FT_WORKER_MEMORY_GIB", str(TINY))
    get_settings.cache_clear()
    assert run_job(job_id, "small-host:1:a") is Outcome.forwarded
    job, events = job_state(job_id)
    assert (job.status, job.attempt, job.lease_owner) == (JobStatus.queued, 0, None)
    need = job.stats["memory_estimate"]["total_bytes"]  # type: ignore[index]
    assert TINY * GIB < need < 80 * GIB
    assert events[-1] == (
        f"Needs about {need / GIB:.2f} GiB; this worker (small-host:1:a) offers 0.00 GiB: "
        "sent to big-host:1:b"
    )
    assert redis_db.llen("training.big-host:1:b") == 1 and redis_db.llen("training") == 0
    # The API's resume path and the sweep route it the same way from now on.
    assert training_queue(job_id) == "training.big-host:1:b"

    # The big worker goes away: nobody can run it; it waits queued, saying why.
    with session_scope() as session:
        session.execute(update(Worker).where(Worker.id == "big-host:1:b").values(last_seen_at=1.0))
    assert send_job(job_id) is False
    job, events = job_state(job_id)
    assert job.status == JobStatus.queued and job.stats["unplaceable_since"]  # type: ignore[index]
    assert events[-1].startswith(
        f"No live worker can run this job: it needs about {need / GIB:.2f} GiB; the largest "
        "live worker (small-host:1:a, cuda:0) offers 0.00 GiB. It stays queued"
    )
    assert "3600 s (unplaceable_timeout_seconds)" in events[-1]

    # One that fits comes back before the timeout: sent there.
    worker("big-host:1:b", 80)
    assert send_job(job_id) is True
    job, events = job_state(job_id)
    assert events[-1] == "A worker that fits is live: sent to big-host:1:b"
    assert job.stats["unplaceable_since"] is None  # type: ignore[index]

    # Gone again, past the configured wait: failed with a clear code, never an OOM later.
    with session_scope() as session:
        session.execute(update(Worker).where(Worker.id == "big-host:1:b").values(last_seen_at=1.0))
    monkeypatch.setenv("GPT2FT_UNPLACEABLE_TIMEOUT_SECONDS", "30")
    get_settings.cache_clear()
    now = time.time()
    with session_scope() as session:
        assert settle_placement(session, job_id, now).queue is None  # marked now
    with session_scope() as session:
        settle_placement(session, job_id, now + 29)
    assert job_state(job_id)[0].status == JobStatus.queued
    with session_scope() as session:
        settle_placement(session, job_id, now + 31)
    job, events = job_state(job_id)
    assert job.status == JobStatus.failed and job.error is not None
    assert job.error["code"] == "no_worker_fits"
    assert "add a worker with more memory" in job.error["message"]
    assert events[-1].startswith("Job failed: No live worker could run this job for 31 s")
    body = api.get(f"/v1/fine_tuning/jobs/{job_id}", headers=alice).json()
    assert (body["status"], body["error"]["code"]) == ("failed", "no_worker_fits")
