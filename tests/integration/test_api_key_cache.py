"""The API's key cache: a revoked key is refused at once, whichever process revoked it."""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from shared.db.session import session_scope
from shared.db.tables import ApiKey
from shared.keys import create_api_key, revoke_api_key
from shared.settings import get_settings

GPT2FT = str(Path(sys.executable).with_name("gpt2ft"))


def status_within(api: TestClient, key: str, wanted: int, seconds: float) -> float:
    """Seconds until GET /v1/models with key answers wanted (fails after seconds)."""
    start = time.monotonic()
    while True:
        code = api.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code
        if code == wanted:
            return time.monotonic() - start
        assert time.monotonic() - start < seconds, f"still {code}, not {wanted}, after {seconds}s"
        time.sleep(0.02)


def warm(api: TestClient, key: str) -> None:
    """Use key until the cache serves it (the revocation listener subscribes on first use)."""
    status_within(api, key, 200, 5)
    time.sleep(0.3)
    status_within(api, key, 200, 5)


@pytest.fixture
def long_cache(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    def set_ttl(seconds: float) -> None:
        monkeypatch.setenv("GPT2FT_KEY_CACHE_SECONDS", str(seconds))
        get_settings.cache_clear()

    set_ttl(600)
    return set_ttl


def test_revoked_in_this_process_is_refused_on_the_next_request(
    api: TestClient, long_cache: Callable[[float], None]
) -> None:
    key = create_api_key("carol")
    warm(api, key)
    assert revoke_api_key(key)
    response = api.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_revoked_by_the_cli_is_refused_within_a_second(
    api: TestClient, long_cache: Callable[[float], None]
) -> None:
    key = create_api_key("carol")
    other = create_api_key("dave")
    warm(api, key)
    warm(api, other)
    # `gpt2ft keys revoke` in its own process: the API hears it on Redis, not by waiting 600 s.
    env = {**os.environ}
    subprocess.run([GPT2FT, "keys", "revoke", key], env=env, check=True, capture_output=True)
    assert status_within(api, key, 401, 5) < 1.0
    # Only the revoked key stops working; the others are looked up again and still pass.
    assert api.get("/v1/models", headers={"Authorization": f"Bearer {other}"}).status_code == 200


def test_a_revocation_nobody_announced_holds_at_most_the_cache_ttl(
    api: TestClient, long_cache: Callable[[float], None]
) -> None:
    long_cache(1.0)
    key = create_api_key("carol")
    warm(api, key)
    # The row changes with no message on Redis (as if the revoking process could not reach it):
    # the cache still answers for the key, which shows it is used ...
    with session_scope() as session:
        session.execute(update(ApiKey).values(revoked_at=time.time()))
    assert api.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    # ... and refuses it once key_cache_seconds have passed.
    assert status_within(api, key, 401, 3) <= 1.5


def test_no_cache_while_redis_is_unreachable(
    api: TestClient, monkeypatch: pytest.MonkeyPatch, long_cache: Callable[[float], None]
) -> None:
    from api import key_cache

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    key = create_api_key("carol")
    status_within(api, key, 200, 5)
    # Revocations cannot be heard: every request asks the database, so the row decides at once.
    with session_scope() as session:
        session.execute(update(ApiKey).values(revoked_at=time.time()))
    assert api.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert not key_cache._owners
