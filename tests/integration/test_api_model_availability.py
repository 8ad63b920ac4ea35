"""Base models this host cannot load: listed as not available, refused before queueing (#11 F)."""

import socket
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shared import catalog


@pytest.fixture
def hf_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Hugging Face cache, offline: a developer's own ~/.cache cannot change a test."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    catalog._probe.clear()
    return cache


def worker_message(name: str) -> str:
    """What a job on this model fails with (the worker's check)."""
    from worker.training.model_loading import ModelUnavailable, ensure_available

    base = catalog.find_base_model(name, Path("unused"))
    assert base is not None
    with pytest.raises(ModelUnavailable) as caught:
        ensure_available(base)
    return str(caught.value)


def test_offline_catalog_models_are_listed_as_not_available(
    api: TestClient, alice: dict[str, str], hf_cache: Path
) -> None:
    listed = {m["id"]: m for m in api.get("/v1/models", headers=alice).json()["data"]}
    assert listed["gpt2-tiny"]["available"] is True
    assert listed["gpt2-tiny"]["unavailable_reason"] is None
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        assert listed[name]["available"] is False
        assert listed[name]["unavailable_reason"] == worker_message(name)
        assert f"hf download openai-community/{name}" in listed[name]["unavailable_reason"]
    one = api.get("/v1/models/gpt2-xl", headers=alice).json()
    assert one["available"] is False


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "Hello", "max_tokens": 4}),
        ("/v1/classifications", {"input": ["Hello"]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
        ("/v1/completions", {"prompt": "Hello", "stream": True}),
    ],
)
def test_requests_on_them_fail_within_a_second_with_the_job_message(
    api: TestClient, alice: dict[str, str], hf_cache: Path, path: str, body: dict
) -> None:
    # Warm (the key checked once, the app's first request served): the timer sees the route.
    assert api.get("/v1/models/gpt2-tiny", headers=alice).status_code == 200
    # No worker runs here: an answer in under a second was never queued.
    started = time.monotonic()
    response = api.post(path, headers=alice, json={"model": "gpt2-xl", **body})
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, elapsed
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "model_not_available" and error["param"] == "model"
    assert error["message"] == worker_message("gpt2-xl")
    assert "not in the local Hugging Face cache and the hub cannot be reached" in error["message"]
    assert response.headers["x-should-retry"] == "false"


def test_a_model_in_the_hub_cache_is_available(
    api: TestClient, alice: dict[str, str], hf_cache: Path
) -> None:
    # The cache's layout as huggingface_hub writes it: refs/main names the snapshot.
    repo = hf_cache / "models--openai-community--gpt2"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (snapshot / name).write_text("{}")
    from huggingface_hub import try_to_load_from_cache

    # The API's torch- and hub-free lookup finds what huggingface_hub finds.
    found = try_to_load_from_cache("openai-community/gpt2", "config.json", cache_dir=hf_cache)
    assert catalog.cached_file("openai-community/gpt2", "config.json") == Path(str(found))
    listed = {m["id"]: m for m in api.get("/v1/models", headers=alice).json()["data"]}
    assert listed["gpt2"]["available"] is True and listed["gpt2-medium"]["available"] is False


def test_an_unreachable_hub_counts_as_offline(
    api: TestClient, alice: dict[str, str], hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # HF_HUB_OFFLINE unset, but nothing listens where the hub should be.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert api.get("/v1/models/gpt2-tiny", headers=alice).status_code == 200
    started = time.monotonic()
    response = api.post(
        "/v1/completions", headers=alice, json={"model": "gpt2", "prompt": "Hi", "max_tokens": 2}
    )
    assert time.monotonic() - started < 1.0
    assert response.json()["error"]["code"] == "model_not_available"
    listed = {m["id"]: m for m in api.get("/v1/models", headers=alice).json()["data"]}
    assert listed["gpt2"]["available"] is False
