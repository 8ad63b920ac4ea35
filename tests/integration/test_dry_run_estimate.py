"""The dry run's time estimate: from recent succeeded jobs of the same model and method."""

import pytest
from fastapi.testclient import TestClient

from shared.db.session import session_scope
from shared.db.tables import Job
from tests.integration.conftest import upload

CORPUS = b"".join(b'{"text": "line %d of a corpus about foxes and dogs"}\n' % i for i in range(40))


def finished_job(job_id: str, method: str, seconds: float, tokens: int, status: str) -> Job:
    return Job(
        id=job_id, owner="alice", model="gpt2-tiny", training_file="file-x", seed=1,
        status=status, hyperparameters={}, options={"training_method": method},
        created_at=1000, started_at=1000.0, finished_at=int(1000 + seconds),
        trained_tokens=tokens, steps_completed=1, attempt=1,
    )  # fmt: skip


def test_dry_run_times_the_plan_with_recent_jobs_of_the_same_method(
    api: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.dry_run import handle_plan

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    file_id = upload(api, alice, CORPUS)["id"]
    request = {"id": "ftjob-dry", "owner": "alice", "model": "gpt2-tiny",
               "training_file": file_id, "seed": 5,
               "hyperparameters": {"block_size": 32, "batch_size": 4, "n_epochs": 2},
               "options": {"training_method": "lora"}}  # fmt: skip
    plan = handle_plan(request)["plan"]
    assert plan["estimated_seconds"] is None
    assert "no succeeded lora job on gpt2-tiny" in plan["estimate_basis"]

    with session_scope() as session:
        session.add_all([
            finished_job("ftjob-a", "lora", 100, 1000, "succeeded"),  # 0.1 s per token
            finished_job("ftjob-b", "lora", 300, 1000, "succeeded"),  # 0.3 s per token
            finished_job("ftjob-c", "lora", 200, 1000, "succeeded"),  # 0.2: the median
            finished_job("ftjob-d", "full", 9000, 1000, "succeeded"),  # another method
            finished_job("ftjob-e", "lora", 9000, 1000, "failed"),  # not a finished run
        ])  # fmt: skip
    plan = handle_plan(request)["plan"]
    assert plan["estimated_seconds"] == round(plan["trained_tokens"] * 0.2)
    assert plan["estimate_basis"].startswith("5 trained tokens/s: the median of the last 3 jobs")
