"""stream: true and logprobs on /v1/completions: what the API decides before any worker."""

import time

import pytest
import redis
from fastapi.testclient import TestClient

from shared.settings import get_settings


def test_stream_without_worker_is_503_quickly_and_frees_the_slot(
    api: TestClient, alice: dict[str, str], redis_db: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPT2FT_COMPLETION_TIMEOUT_SECONDS", "1")
    get_settings.cache_clear()
    started = time.monotonic()
    body = {"model": "gpt2-tiny", "prompt": "Hello", "stream": True}
    response = api.post("/v1/completions", headers=alice, json=body)
    assert response.status_code == 503, response.text
    assert "no inference worker answered within 1s" in response.json()["error"]["message"]
    assert time.monotonic() - started < 5
    assert [k for k in redis_db.scan_iter("gpt2ft:inflight_requests:*") if redis_db.zcard(k)] == []
    # A worker that starts later finds the request cancelled, not a reader waiting.
    assert list(redis_db.scan_iter("gpt2ft:stream:*:cancel"))


def test_stream_and_logprobs_fields_are_checked(api: TestClient, alice: dict[str, str]) -> None:
    body = {"model": "gpt2-tiny", "prompt": "x", "stream_options": {"include_usage": True}}
    response = api.post("/v1/completions", headers=alice, json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "stream_options"
    response = api.post("/v1/completions", headers=alice, json={**body, "stream": True,
                        "stream_options": {"include_usage": True, "other": 1}})  # fmt: skip
    assert response.status_code == 422
    for logprobs in (6, -1):
        body = {"model": "gpt2-tiny", "prompt": "x", "logprobs": logprobs}
        response = api.post("/v1/completions", headers=alice, json=body)
        assert response.status_code == 422 and response.json()["error"]["param"] == "logprobs"
    # An unknown model is a plain 404 before any stream opens.
    body = {"model": "nope", "prompt": "x", "stream": True}
    assert api.post("/v1/completions", headers=alice, json=body).status_code == 404
