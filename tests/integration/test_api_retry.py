"""Errors the openai SDK handles well: no retries where retrying cannot help, a /v1 hint."""

import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from shared.settings import get_settings
from tests.integration.conftest import GOOD_JSONL, upload


@pytest.fixture
def requests_sent(api: TestClient) -> Iterator[list[str]]:
    """Every request the client sends, as 'METHOD path' (the SDK's retries included)."""
    sent: list[str] = []

    def record(request: httpx.Request) -> None:
        sent.append(f"{request.method} {request.url.path}")

    api.event_hooks["request"].append(record)
    yield sent
    api.event_hooks["request"].remove(record)


def sdk(api: TestClient, headers: dict[str, str], base_url: str = "http://testserver/v1"):
    key = headers["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(base_url=base_url, api_key=key, http_client=api)


def test_a_job_over_the_quota_fails_at_once_with_the_sdk(
    api: TestClient,
    alice: dict[str, str],
    requests_sent: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GPT2FT_MAX_ACTIVE_JOBS_PER_OWNER", "1")
    get_settings.cache_clear()
    client = sdk(api, alice)  # the SDK's defaults: two retries of a 409, 429 or 5xx
    file_id = upload(api, alice, GOOD_JSONL)["id"]
    client.fine_tuning.jobs.create(model="gpt2-tiny", training_file=file_id)
    requests_sent.clear()

    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as refused:
        client.fine_tuning.jobs.create(model="gpt2-tiny", training_file=file_id)
    assert time.monotonic() - started < 5  # was 120 s: Retry-After 60, retried twice
    assert requests_sent == ["POST /v1/fine_tuning/jobs"]
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert "Retry-After" not in refused.value.response.headers
    assert refused.value.code == "too_many_active_jobs"


def test_a_conflict_is_not_retried(
    api: TestClient, alice: dict[str, str], requests_sent: list[str]
) -> None:
    client = sdk(api, alice)
    file_id = upload(api, alice, GOOD_JSONL)["id"]
    job = client.fine_tuning.jobs.create(model="gpt2-tiny", training_file=file_id)
    client.fine_tuning.jobs.cancel(job.id)
    requests_sent.clear()

    with pytest.raises(openai.ConflictError) as conflict:
        client.fine_tuning.jobs.pause(job.id)
    assert requests_sent == [f"POST /v1/fine_tuning/jobs/{job.id}/pause"]
    assert conflict.value.response.headers["x-should-retry"] == "false"
    assert "its status is cancelled" in conflict.value.message


def test_a_busy_slot_is_worth_a_retry_soon(api: TestClient, alice: dict[str, str]) -> None:
    from api.errors import ApiError, error_response

    busy = error_response(ApiError(429, "busy", code="too_many_inflight_requests", retry_after=1))
    assert busy.headers["x-should-retry"] == "true" and busy.headers["Retry-After"] == "1"
    final = error_response(ApiError(400, "bad"))
    assert final.headers["x-should-retry"] == "false" and "Retry-After" not in final.headers

    unknown = api.get("/v1/nothing-here", headers=alice)
    assert unknown.status_code == 404 and unknown.headers["x-should-retry"] == "false"
    invalid = api.post("/v1/completions", headers=alice, json={"model": "gpt2-tiny", "n": 0})
    assert invalid.status_code == 422 and invalid.headers["x-should-retry"] == "false"


def test_a_client_without_v1_hears_where_the_api_lives(
    api: TestClient, alice: dict[str, str]
) -> None:
    client = sdk(api, alice, base_url="http://testserver")
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.list()
    message = missing.value.message
    assert "Unknown request URL: GET /models" in message
    assert "The API lives under /v1" in message and "http://testserver/v1" in message

    # Under /v1 an unknown URL is only that: no hint that would mislead.
    under = api.get("/v1/nothing-here", headers=alice).json()["error"]["message"]
    assert under == "Unknown request URL: GET /v1/nothing-here"
