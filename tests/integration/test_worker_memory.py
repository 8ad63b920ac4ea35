"""Running out of GPU memory mid-job (a fake OOM on CPU): checkpoint, requeue smaller, or fail."""

import math
from typing import Any

import pytest
import redis
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select

from shared.db.session import session_scope
from shared.db.tables import Checkpoint, Job, JobEvent, JobStatus
from shared.settings import get_settings
from tests.fake_cuda import FakeCuda
from tests.integration.conftest import GOOD_JSONL, upload
from worker.outcomes import Outcome
from worker.run_job import run_job
from worker.training import device as device_module
from worker.training import engine

JOBS = "/v1/fine_tuning/jobs"


def create_job(api: TestClient, headers: dict[str, str], block_size: int = 8) -> str:
    file_id = upload(api, headers, GOOD_JSONL)["id"]
    # 8-token blocks: 15 training blocks, 4 steps of 4.
    hp = {"n_epochs": 1, "batch_size": 4, "block_size": block_size, "learning_rate": 1e-3}
    body = {"model": "gpt2-tiny", "training_file": file_id, "hyperparameters": hp}
    response = api.post(JOBS, headers=headers, json=body)
    assert response.status_code == 200, response.text
    job_id: str = response.json()["id"]
    return job_id


def memory_runs_out_above(monkeypatch: pytest.MonkeyPatch, rows: int) -> list[int]:
    """After step 1, a micro-batch of more than rows raises CUDA's OOM; returns those tried."""
    real_step, tried = engine.optimizer_step, []

    def step(run: Any, batch: Any, spec: Any) -> Any:
        micro = math.ceil(batch["input_ids"].shape[0] / spec.gradient_accumulation_steps)
        tried.append(micro)
        if run.progress.global_step >= 1 and micro > rows:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(run, batch, spec)

    monkeypatch.setattr(engine, "optimizer_step", step)
    return tried


def job_state(job_id: str) -> tuple[Job, list[str], list[int]]:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        events = session.scalars(
            select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)
        ).all()
        steps = session.scalars(select(Checkpoint.step).where(Checkpoint.job_id == job_id)).all()
        return job, list(events), sorted(steps)


def test_out_of_memory_requeues_with_halved_micro_batches_until_it_fits(
    api: TestClient, alice: dict[str, str], redis_db: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = create_job(api, alice)
    tried = memory_runs_out_above(monkeypatch, rows=1)

    assert run_job(job_id, "worker-a") is Outcome.retried
    job, events, steps = job_state(job_id)
    assert (job.status, job.attempt, job.lease_owner) == (JobStatus.queued, 0, None)
    assert steps == [1]  # the last full step, checkpointed before giving the job back
    assert events[-1] == (
        "Out of GPU memory in step 2 with micro-batch 4: requeued with micro-batch 2 (retry 1 of 2)"
    )
    assert job.stats is not None and job.stats["micro_batch_limit"] == 2
    assert redis_db.llen("training") >= 1  # woken again, not left for the sweep

    assert run_job(job_id, "worker-a") is Outcome.retried
    job, events, _ = job_state(job_id)
    assert events[-1].endswith("with micro-batch 2: requeued with micro-batch 1 (retry 2 of 2)")
    assert "Resumed from step 1" in "\n".join(events)

    assert run_job(job_id, "worker-a") is Outcome.succeeded
    job, events, steps = job_state(job_id)
    assert job.status == JobStatus.succeeded and job.fine_tuned_model is not None
    assert steps[-1] == 4
    assert tried == [4, 4, 2, 1, 1, 1]  # micro-batch per step: ran, ran out, ran out, fit


def test_out_of_memory_with_retries_spent_fails_saying_what_to_change(
    api: TestClient, alice: dict[str, str], redis_db: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = create_job(api, alice)
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.stats = {"memory_retries": 2, "micro_batch_limit": 2}
    memory_runs_out_above(monkeypatch, rows=1)
    assert run_job(job_id, "worker-a") is Outcome.failed
    job, events, _ = job_state(job_id)
    assert job.status == JobStatus.failed and job.error is not None
    assert job.error["code"] == "out_of_memory"
    assert "micro-batch 2, after 2 smaller retries" in job.error["message"]
    assert "training_method lora" in job.error["message"]
    assert events[-1].startswith("Job failed: Out of GPU memory in step 2")


def test_gpu_memory_goes_back_after_every_job_even_a_failed_one(
    api: TestClient, alice: dict[str, str], redis_db: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPT2FT_DEVICE", "cpu")
    get_settings.cache_clear()
    fake = FakeCuda()  # a GPU the process holds cached blocks on
    monkeypatch.setattr(device_module, "cuda", fake)
    job_id = create_job(api, alice, block_size=512)  # longer than gpt2-tiny's context
    assert run_job(job_id, "worker-a") is Outcome.failed
    assert fake.calls == [("empty_cache", None)]
