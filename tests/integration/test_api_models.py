"""Events, checkpoints, models and completions, read from rows the worker would write."""

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.db.session import session_scope
from shared.db.tables import Checkpoint, FineTunedModel, Job, JobEvent
from shared.ids import new_id, now_ts
from shared.naming import checkpoint_model_id, fine_tuned_model_id
from shared.storage import get_storage, model_prefix
from tests.integration.conftest import GOOD_JSONL, upload

JOBS = "/v1/fine_tuning/jobs"


def finished_job(api: TestClient, headers: dict[str, str], owner: str) -> dict[str, Any]:
    """A job made through the API, then completed in the DB as a worker would."""
    file_id = upload(api, headers, GOOD_JSONL)["id"]
    job_id = api.post(
        JOBS, headers=headers, json={"model": "gpt2-tiny", "training_file": file_id}
    ).json()["id"]
    model_id = fine_tuned_model_id("gpt2-tiny", owner, None, job_id)
    model_path = publish_files(model_prefix(job_id), {"config.json": b"{}"})
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status, job.fine_tuned_model, job.finished_at = "succeeded", model_id, now_ts()
        job.resolved = {"n_epochs": 3, "batch_size": 2, "learning_rate": 5e-5, "block_size": 64}
        job.steps_completed, job.total_steps, job.trained_tokens = 30, 30, 1920
        session.add(
            FineTunedModel(
                id=model_id, owner=owner, job_id=job_id, base_model="gpt2-tiny",
                path=model_path, created_at=now_ts(),
            )
        )  # fmt: skip
        for step in (10, 20, 30):
            session.add(
                Checkpoint(
                    id=new_id("ftckpt"), job_id=job_id, owner=owner, step=step, epoch=step / 10,
                    path=f"jobs/{job_id}/checkpoints/step-{step:08d}",
                    metrics={"train_loss": 5.0 - step / 10, "valid_loss": 5.5, "perplexity": 9.0},
                    fine_tuned_model_checkpoint=checkpoint_model_id(model_id, step),
                    created_at=now_ts(),
                )
            )  # fmt: skip
        for number in range(25):
            session.add(
                JobEvent(
                    id=new_id("ftevent"), job_id=job_id, created_at=now_ts(), level="info",
                    type="metrics" if number % 2 else "message", message=f"event {number}",
                    data={"step": number} if number % 2 else None,
                )
            )  # fmt: skip
    return {"job_id": job_id, "model_id": model_id, "model_path": model_path}


def publish_files(prefix: str, files: dict[str, bytes]) -> str:
    """A set published as a worker would (staged, then its manifest); returns its prefix."""
    storage = get_storage()
    folder = storage.scratch / "made" / prefix
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    staged = storage.stage_set(prefix, folder, "a1-test", {}, {})
    return storage.commit_manifest(staged).prefix


def is_published(prefix: str) -> bool:
    """The set has a manifest, and every file it names is in the store."""
    storage = get_storage()
    manifest = storage.read_manifest(prefix)
    return manifest is not None and all(
        storage.size(manifest.key_of(entry)) == entry.bytes for entry in manifest.files
    )


def test_job_shows_resolved_values_and_progress(api: TestClient, alice: dict[str, str]) -> None:
    made = finished_job(api, alice, "alice")
    job = api.get(f"{JOBS}/{made['job_id']}", headers=alice).json()
    assert job["status"] == "succeeded" and job["fine_tuned_model"] == made["model_id"]
    assert job["hyperparameters"]["batch_size"] == 2 and job["hyperparameters"]["block_size"] == 64
    assert job["progress"] == 1.0 and job["trained_tokens"] == 1920


def test_events_newest_first_with_cursor(
    api: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    job_id = finished_job(api, alice, "alice")["job_id"]
    page = api.get(f"{JOBS}/{job_id}/events", headers=alice).json()
    assert page["has_more"] is True and len(page["data"]) == 20
    assert [e["message"] for e in page["data"][:2]] == ["event 24", "event 23"]
    assert page["data"][0]["object"] == "fine_tuning.job.event"
    assert page["data"][1]["type"] == "metrics" and page["data"][1]["data"] == {"step": 23}
    rest = api.get(
        f"{JOBS}/{job_id}/events", headers=alice, params={"after": page["data"][-1]["id"]}
    ).json()
    assert [e["message"] for e in rest["data"]] == [f"event {n}" for n in range(4, -1, -1)]
    assert rest["has_more"] is False
    assert api.get(f"{JOBS}/{job_id}/events", headers=bob).status_code == 404


def test_checkpoints_newest_first(
    api: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    made = finished_job(api, alice, "alice")
    url = f"{JOBS}/{made['job_id']}/checkpoints"
    page = api.get(url, headers=alice, params={"limit": 2}).json()
    assert [c["step_number"] for c in page["data"]] == [30, 20] and page["has_more"] is True
    first = page["data"][0]
    assert first["object"] == "fine_tuning.job.checkpoint"
    assert first["fine_tuned_model_checkpoint"] == f"{made['model_id']}:ckpt-step-30"
    assert first["metrics"] == {
        "step": 30.0, "train_loss": 2.0, "valid_loss": 5.5, "train_mean_token_accuracy": None,
        "valid_mean_token_accuracy": None, "full_valid_loss": None,
        "full_valid_mean_token_accuracy": None,
    }  # fmt: skip
    rest = api.get(url, headers=alice, params={"after": page["data"][-1]["id"]}).json()
    assert [c["step_number"] for c in rest["data"]] == [10]
    assert api.get(url, headers=bob).status_code == 404


def test_models_list_read_delete(
    api: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    mine = finished_job(api, alice, "alice")
    theirs = finished_job(api, bob, "bob")
    listed = api.get("/v1/models", headers=alice).json()
    owners = {m["id"]: m["owned_by"] for m in listed["data"]}
    assert owners["gpt2-tiny"] == "gpt2ft" and owners["gpt2"] == "openai-community"
    assert "gpt2-xl" in owners and owners[mine["model_id"]] == "alice"
    assert theirs["model_id"] not in owners

    read = api.get(f"/v1/models/{mine['model_id']}", headers=alice).json()
    assert read == {**read, "id": mine["model_id"], "object": "model", "owned_by": "alice"}
    ckpt = f"{mine['model_id']}:ckpt-step-20"
    assert api.get(f"/v1/models/{ckpt}", headers=alice).json()["id"] == ckpt
    assert api.get("/v1/models/gpt2-tiny", headers=alice).json()["owned_by"] == "gpt2ft"
    for model_id in (theirs["model_id"], "nope"):
        response = api.get(f"/v1/models/{model_id}", headers=alice)
        assert response.status_code == 404 and model_id in response.json()["error"]["message"]

    assert api.delete(f"/v1/models/{theirs['model_id']}", headers=alice).status_code == 404
    assert is_published(theirs["model_path"])
    assert api.delete("/v1/models/gpt2-tiny", headers=alice).status_code == 403
    deleted = api.delete(f"/v1/models/{mine['model_id']}", headers=alice).json()
    assert deleted == {"id": mine["model_id"], "object": "model", "deleted": True}
    assert not is_published(mine["model_path"])
    assert get_storage().list_keys(mine["model_path"]) == []
    assert api.get(f"/v1/models/{mine['model_id']}", headers=alice).status_code == 404


def test_completion_without_worker_is_503_quickly(
    api: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.settings import get_settings

    monkeypatch.setenv("GPT2FT_COMPLETION_TIMEOUT_SECONDS", "1")
    get_settings.cache_clear()
    started = time.monotonic()
    response = api.post(
        "/v1/completions", headers=alice, json={"model": "gpt2-tiny", "prompt": "Hello"}
    )
    assert response.status_code == 503
    assert "no inference worker answered within 1s" in response.json()["error"]["message"]
    assert time.monotonic() - started < 5


def test_completion_request_checks(
    api: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    theirs = finished_job(api, bob, "bob")["model_id"]
    response = api.post("/v1/completions", headers=alice, json={"model": theirs, "prompt": "x"})
    assert response.status_code == 404
    body = {"model": "gpt2-tiny", "prompt": "x", "max_tokens": 5000}
    response = api.post("/v1/completions", headers=alice, json=body)
    assert response.status_code == 422 and response.json()["error"]["param"] == "max_tokens"
    body = {"model": "gpt2-tiny", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}
    response = api.post("/v1/completions", headers=alice, json=body)
    assert response.status_code == 422 and response.json()["error"]["param"] == "stop"
