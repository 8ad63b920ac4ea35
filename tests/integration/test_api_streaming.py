"""stream: true and logprobs on /v1/completions: what the API decides before any worker."""

import json
import time
from pathlib import Path

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


def stream_request(models_dir: Path, key: str, **extra: object) -> dict[str, object]:
    """A streamed generate request as the API sends it to the worker."""
    location = str(models_dir / "gpt2-tiny")
    request = {"model": "gpt2-tiny", "location": location, "prompts": ["Hello"], "max_tokens": 200}
    return {**request, "temperature": 0, "stream_key": key, **extra}


def test_worker_ends_a_stream_at_the_deadline_with_an_error_event(
    redis_db: redis.Redis, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clock that moves one second per look: the deadline 5 s away ends generation early."""
    from worker import inference
    from worker.training import generate

    start, looks = 1_000_000.0, []

    def clock() -> float:
        looks.append(1)
        return start + len(looks)

    monkeypatch.setattr(generate.time, "time", clock)
    monkeypatch.setattr(inference.time, "time", clock)
    answer = inference.handle_generate(
        stream_request(models_dir, "gpt2ft:stream:t1", deadline=start + 5)
    )
    assert answer["error"]["code"] == "deadline_exceeded"
    events = [json.loads(raw) for raw in redis_db.lrange("gpt2ft:stream:t1", 0, -1)]
    assert events[0] == {"type": "start"} and events[-1]["type"] == "error"
    assert events[-1]["error"]["code"] == "deadline_exceeded"
    assert len(looks) <= 8  # about 4 tokens, not 200


def test_worker_stops_when_the_api_cancels(redis_db: redis.Redis, models_dir: Path) -> None:
    from worker import inference

    redis_db.set("gpt2ft:stream:t2:cancel", 1)
    answer = inference.handle_generate(stream_request(models_dir, "gpt2ft:stream:t2"))
    assert answer["error"]["code"] == "cancelled"
    events = [json.loads(raw) for raw in redis_db.lrange("gpt2ft:stream:t2", 0, -1)]
    assert events == [{"type": "start"}]  # nothing generated after the API said stop
