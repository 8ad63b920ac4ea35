"""A job's outputs on disk: old checkpoints retire, and outputs count in the storage quota.

The real run_job trains gpt2-tiny in this process against the real database (SQLite and
Postgres) and the local store; the API app is the real one.
"""

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.limits import stored_bytes
from shared.catalog import find_base_model
from shared.db.session import session_scope
from shared.db.tables import Checkpoint, File, FineTunedModel, Job
from shared.model_size import model_shape, output_bytes_estimate
from shared.settings import get_settings
from shared.storage import checkpoints_prefix, get_storage, step_of
from tests.integration.conftest import GOOD_JSONL, upload
from tests.integration.test_races_worker import after_training, messages
from tests.integration.test_reliability_limits import limit
from worker.outcomes import Outcome
from worker.run_job import run_job

JOBS = "/v1/fine_tuning/jobs"
# The bound: the most often a job may checkpoint.
EVERY = 5


def job_body(training_file: str, **extra: Any) -> dict[str, Any]:
    hyperparameters = {"n_epochs": 2, "batch_size": 1, "block_size": 16}
    return {
        "model": "gpt2-tiny",
        "training_file": training_file,
        **extra,
        "hyperparameters": hyperparameters,
    }


def tiny_estimate(keep: int) -> int:
    entry = find_base_model("gpt2-tiny", get_settings().resolved_models_dir)
    assert entry is not None
    shape = model_shape(entry)
    assert shape is not None
    return output_bytes_estimate(shape, keep, "full", 2)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def assert_upload_over_quota(api: TestClient, headers: dict[str, str]) -> None:
    files = {"file": ("more.jsonl", GOOD_JSONL)}
    response = api.post("/v1/files", headers=headers, files=files, data={"purpose": "fine-tune"})
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "storage_quota_exceeded"


def checkpoint_rows(job_id: str) -> list[Checkpoint]:
    with session_scope() as session:
        query = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)
        return list(session.scalars(query))


def test_old_checkpoints_go_and_outputs_count_in_the_quota(
    api: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints at the bound, keep 1: the rest retire; what stays counts until deleted."""
    training = upload(api, alice, GOOD_JSONL)
    body = job_body(str(training["id"]), checkpoint_every_steps=EVERY, keep_checkpoints=1)
    response = api.post(JOBS, headers=alice, json=body)
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]

    assert run_job(job_id, "w1") is Outcome.succeeded
    saved = [m for m in messages(job_id) if m.startswith("Checkpoint saved at step")]
    assert len(saved) >= 4, saved  # enough checkpoints that keeping them all would show

    rows = checkpoint_rows(job_id)
    sets = get_storage().published_sets(checkpoints_prefix(job_id))
    # keep_checkpoints=1: the newest, plus the best when it is another one.
    assert 1 <= len(rows) <= 2, [r.step for r in rows]
    assert sorted(step_of(p) for p in sets) == [r.step for r in rows]
    assert rows[-1].step == int(saved[-1].split()[4])
    assert len([r for r in rows if r.is_best]) == 1
    listed = api.get(f"{JOBS}/{job_id}/checkpoints", headers=alice).json()["data"]
    assert sorted(c["step_number"] for c in listed) == [r.step for r in rows]
    # On disk: nothing of the retired checkpoints is left in the store.
    stored = get_settings().storage_dir / checkpoints_prefix(job_id)
    assert sorted(p.name for p in stored.iterdir()) == [f"step-{r.step:08d}" for r in rows]
    assert all(r.bytes > 0 for r in rows)
    assert folder_bytes(stored) <= sum(r.bytes for r in rows) + 4096 * len(rows)

    with session_scope() as session:
        model = session.scalars(select(FineTunedModel)).one()
        files = sum(f.bytes for f in session.scalars(select(File).where(File.owner == "alice")))
        used = stored_bytes(session, "alice")
    assert 0 < model.bytes <= folder_bytes(get_settings().storage_dir / model.path)
    assert used == files + model.bytes + sum(r.bytes for r in rows)
    assert used <= files + tiny_estimate(1)  # the estimate at create was an upper bound

    # Uploads alone would fit; with the job's outputs counted they do not.
    limit(monkeypatch, "max_stored_bytes_per_owner", used + len(GOOD_JSONL) - 1)
    assert_upload_over_quota(api, alice)

    deleted = api.delete(f"/v1/models/{model.id}", headers=alice)
    assert deleted.status_code == 200, deleted.text
    with session_scope() as session:
        assert stored_bytes(session, "alice") == files
    upload(api, alice, GOOD_JSONL, name="again.jsonl")


def test_checkpoint_interval_under_the_bound_is_422_naming_it(
    api: TestClient, alice: dict[str, str]
) -> None:
    training = upload(api, alice, GOOD_JSONL)
    body = job_body(str(training["id"]), checkpoint_every_steps=EVERY - 1)
    response = api.post(JOBS, headers=alice, json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert "checkpoint_every_steps" in (error["param"] or "") + error["message"]
    response = api.post(JOBS, headers=alice, json={**body, "keep_checkpoints": 0})
    assert response.status_code == 422, response.text


def test_a_job_that_would_pass_the_quota_is_refused_at_create(
    api: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    training = upload(api, alice, GOOD_JSONL)
    # Room for the file and a job keeping 1 checkpoint, not one keeping the default 2.
    limit(monkeypatch, "max_stored_bytes_per_owner", len(GOOD_JSONL) + tiny_estimate(1) + 10)
    body = job_body(str(training["id"]))
    response = api.post(JOBS, headers=alice, json=body)
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "storage_quota_exceeded"
    assert error["param"] == "keep_checkpoints"
    assert "max_stored_bytes_per_owner" in error["message"]
    with session_scope() as session:
        assert session.scalars(select(Job)).all() == []

    response = api.post(JOBS, headers=alice, json={**body, "keep_checkpoints": 1})
    assert response.status_code == 200, response.text
    # The running job holds its place: nothing more fits until it is done.
    assert_upload_over_quota(api, alice)


def test_checkpoints_of_a_cancelled_job_can_be_deleted_to_free_the_quota(
    api: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No fine-tuned model deletes them with it: the owner deletes them one by one."""
    training = upload(api, alice, GOOD_JSONL)
    body = job_body(str(training["id"]), keep_checkpoints=1)
    job_id = api.post(JOBS, headers=alice, json=body).json()["id"]
    ids: list[str] = []

    def first_checkpoint_then_cancel() -> None:
        listed = api.get(f"{JOBS}/{job_id}/checkpoints", headers=alice).json()["data"]
        ids.extend(c["fine_tuned_model_checkpoint"] for c in listed)
        # While the job runs, a checkpoint is what it would resume from.
        refused = api.delete(f"/v1/models/{ids[0]}", headers=alice)
        assert refused.status_code == 409, refused.text
        cancelled = api.post(f"{JOBS}/{job_id}/cancel", headers=alice)
        assert cancelled.status_code == 200, cancelled.text

    after_training(monkeypatch, first_checkpoint_then_cancel)
    assert run_job(job_id, "w1") is Outcome.cancelled
    rows = checkpoint_rows(job_id)
    assert rows and sorted(r.fine_tuned_model_checkpoint for r in rows) == sorted(ids)
    with session_scope() as session:
        files = stored_bytes(session, "alice") - sum(r.bytes for r in rows)

    for checkpoint_id in ids:
        deleted = api.delete(f"/v1/models/{checkpoint_id}", headers=alice)
        assert deleted.status_code == 200, deleted.text
        assert api.get(f"/v1/models/{checkpoint_id}", headers=alice).status_code == 404
    assert checkpoint_rows(job_id) == []
    assert get_storage().published_sets(checkpoints_prefix(job_id)) == []
    with session_scope() as session:
        assert stored_bytes(session, "alice") == files
