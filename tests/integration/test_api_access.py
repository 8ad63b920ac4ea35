"""Keys, the 401/404 envelopes, and the health probes."""

from fastapi.testclient import TestClient

from shared.db.session import session_scope
from shared.db.tables import ApiKey
from shared.keys import create_api_key, ensure_api_key, hash_key, owner_for_key, revoke_api_key


def test_keys_are_hashed_and_revocable(api: TestClient) -> None:
    plain = create_api_key("carol", name="laptop")
    assert plain.startswith("sk-gpt2ft-") and len(plain) == len("sk-gpt2ft-") + 40
    with session_scope() as session:
        (row,) = session.query(ApiKey).all()
        assert row.key_hash == hash_key(plain) and plain not in row.key_hash
    assert owner_for_key(plain) == "carol" and owner_for_key(plain + "x") is None
    assert revoke_api_key(plain) is True and revoke_api_key(plain) is False
    assert owner_for_key(plain) is None


def test_ensure_api_key_is_idempotent(api: TestClient) -> None:
    first = ensure_api_key("dev", "sk-dev-local")
    assert ensure_api_key("dev", "sk-dev-local") == first
    assert owner_for_key("sk-dev-local") == "dev"
    with session_scope() as session:
        assert session.query(ApiKey).count() == 1


def test_missing_and_bad_keys_are_401(api: TestClient, alice: dict[str, str]) -> None:
    for path in ("/v1/files", "/v1/models", "/v1/fine_tuning/jobs"):
        response = api.get(path)
        assert response.status_code == 401
        assert response.json()["error"]["message"].startswith("Missing bearer token")
        response = api.get(path, headers={"Authorization": "Bearer sk-wrong"})
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["message"].startswith("Incorrect API key provided")
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
        assert "sk-wrong" not in response.text
    assert api.get("/v1/models", headers=alice).status_code == 200


def test_unknown_route_is_404_envelope(api: TestClient, alice: dict[str, str]) -> None:
    response = api.get("/v1/nothing-here", headers=alice)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Unknown request URL: GET /v1/nothing-here"


def test_health_and_readiness(api: TestClient) -> None:
    assert api.get("/healthz").json()["status"] == "ok"
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "redis": "ok"}


def test_readiness_names_redis_when_down(api: TestClient, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from shared.settings import get_settings

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    ready = api.get("/readyz")
    assert ready.status_code == 503 and "redis" in ready.json()["status"]
    assert ready.json()["checks"]["database"] == "ok"


def test_openapi_has_operation_ids(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    operations = [op for path in spec["paths"].values() for op in path.values()]
    assert all(op.get("operationId") and op.get("tags") for op in operations)
    assert len({op["operationId"] for op in operations}) == len(operations)
