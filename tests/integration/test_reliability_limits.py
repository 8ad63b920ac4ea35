"""Per-owner quotas: active jobs and stored bytes answer 429, not to be retried, with a way out."""

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shared.db.session import session_scope
from shared.db.tables import File, Job
from shared.settings import get_settings
from tests.integration.conftest import GOOD_JSONL, upload
from tests.integration.test_api_files import stored_files

JOBS = "/v1/fine_tuning/jobs"


def limit(monkeypatch: pytest.MonkeyPatch, name: str, value: int) -> None:
    monkeypatch.setenv(f"GPT2FT_{name.upper()}", str(value))
    get_settings.cache_clear()


def rows(model: type, owner: str) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).where(model.owner == owner)) or 0)


def test_active_jobs_limit_is_429_until_one_finishes(
    api: TestClient,
    alice: dict[str, str],
    bob: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert get_settings().max_active_jobs_per_owner == 4
    limit(monkeypatch, "max_active_jobs_per_owner", 2)
    file_id = upload(api, alice, GOOD_JSONL)["id"]
    body = {"model": "gpt2-tiny", "training_file": file_id}
    first, second = (api.post(JOBS, headers=alice, json=body).json()["id"] for _ in range(2))

    refused = api.post(JOBS, headers=alice, json=body)
    assert refused.status_code == 429
    # Retrying cannot free a job place: the SDK must fail at once (test_api_retry.py).
    assert refused.headers["x-should-retry"] == "false" and "Retry-After" not in refused.headers
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "too_many_active_jobs"
    assert "max_active_jobs_per_owner=2" in error["message"] and "cancel" in error["message"]
    assert rows(Job, "alice") == 2

    # Another owner has a quota of their own.
    bob_file = upload(api, bob, GOOD_JSONL)["id"]
    assert api.post(JOBS, headers=bob, json={**body, "training_file": bob_file}).status_code == 200

    # A paused job still counts (resume would run it); a cancelled one frees the slot.
    assert api.post(f"{JOBS}/{first}/pause", headers=alice).json()["status"] == "paused"
    assert api.post(JOBS, headers=alice, json=body).status_code == 429
    assert api.post(f"{JOBS}/{second}/cancel", headers=alice).json()["status"] == "cancelled"
    assert api.post(JOBS, headers=alice, json=body).status_code == 200


def test_storage_quota_is_429_and_stores_nothing(
    api: TestClient,
    alice: dict[str, str],
    bob: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert get_settings().max_stored_bytes_per_owner == 100 * 1024**3
    limit(monkeypatch, "max_stored_bytes_per_owner", int(len(GOOD_JSONL) * 1.5))
    kept = upload(api, alice, GOOD_JSONL)["id"]
    files_before = stored_files()

    refused = api.post(
        "/v1/files",
        headers=alice,
        files={"file": ("train.jsonl", GOOD_JSONL)},
        data={"purpose": "fine-tune"},
    )
    assert refused.status_code == 429, refused.text
    assert refused.headers["x-should-retry"] == "false" and "Retry-After" not in refused.headers
    error = refused.json()["error"]
    assert error["code"] == "storage_quota_exceeded" and error["param"] == "file"
    assert "max_stored_bytes_per_owner" in error["message"]
    assert "DELETE /v1/files/" in error["message"]
    assert rows(File, "alice") == 1
    files_after = stored_files()
    assert files_after == files_before

    upload(api, bob, GOOD_JSONL)  # bob's bytes are his own
    assert api.delete(f"/v1/files/{kept}", headers=alice).status_code == 200
    upload(api, alice, GOOD_JSONL)  # deleting freed the space


def test_full_storage_is_refused_before_streaming(
    api: TestClient, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    limit(monkeypatch, "max_stored_bytes_per_owner", len(GOOD_JSONL))
    upload(api, alice, GOOD_JSONL)
    refused = api.post(
        "/v1/files",
        headers=alice,
        files={"file": ("big.txt", b"x" * 10_000_000)},
        data={"purpose": "fine-tune"},
    )
    assert refused.status_code == 429
    assert refused.json()["error"]["message"].startswith("you have used your storage quota")
