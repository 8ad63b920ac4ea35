"""API fixtures: a TestClient on create_app(), two owners' keys, Redis db 15."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from shared.settings import get_settings
from tests.services import missing_service

# GPT2FT_TEST_REDIS_URL lets parallel test runs use separate Redis servers.
REDIS_BASE = os.environ.get("GPT2FT_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
TEST_REDIS_URL = f"{REDIS_BASE}/15"


@pytest.fixture
def redis_db(monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """Redis db 15, emptied, with REDIS_URL pointing at it."""
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        missing_service(f"Redis not reachable at {TEST_REDIS_URL}: {exc}")
    client.flushdb()
    monkeypatch.setenv("REDIS_URL", TEST_REDIS_URL)
    get_settings.cache_clear()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def api(gpt2ft_home: Path, redis_db: redis.Redis) -> Iterator[TestClient]:
    """A TestClient on a fresh app over the migrated test database."""
    from api.app import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def alice(api: TestClient) -> dict[str, str]:
    """Authorization headers for owner alice."""
    from shared.keys import create_api_key

    return {"Authorization": f"Bearer {create_api_key('alice')}"}


@pytest.fixture
def bob(api: TestClient) -> dict[str, str]:
    """Authorization headers for owner bob."""
    from shared.keys import create_api_key

    return {"Authorization": f"Bearer {create_api_key('bob')}"}


def upload(
    client: TestClient, headers: dict[str, str], content: bytes, name: str = "train.jsonl"
) -> dict[str, object]:
    """Upload content as a fine-tune file and return the file object (asserting 200)."""
    response = client.post(
        "/v1/files", headers=headers, files={"file": (name, content)}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


GOOD_JSONL = b"".join(b'{"text": "line %d of a tiny corpus"}\n' % i for i in range(20))
