"""Liveness and readiness probes (no API key needed)."""

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from shared.db.session import get_engine
from shared.settings import get_settings

router = APIRouter(tags=["health"])


class Health(BaseModel):
    """Probe result; checks maps each dependency to "ok" or why it failed."""

    status: str
    checks: dict[str, str] = {}


def _check_database() -> str:
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means not ready; say which
        return f"error: {type(exc).__name__}: {exc}"[:300]
    return "ok"


def _check_redis() -> str:
    try:
        client = redis.Redis.from_url(
            get_settings().redis_url, socket_connect_timeout=1, socket_timeout=1
        )
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure means not ready; say which
        return f"error: {type(exc).__name__}: {exc}"[:300]
    return "ok"


@router.get("/healthz", response_model=Health, operation_id="readHealth", summary="Process is up")
def read_health() -> Health:
    """200 while the process serves requests."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    operation_id="readReadiness",
    summary="Database and Redis answer",
    responses={503: {"model": Health}},
)
def read_readiness() -> Health | JSONResponse:
    """200 when the database and Redis answer; 503 naming the one that did not."""
    checks = {"database": _check_database(), "redis": _check_redis()}
    if all(v == "ok" for v in checks.values()):
        return Health(status="ok", checks=checks)
    failed = ", ".join(k for k, v in checks.items() if v != "ok")
    body = Health(status=f"not ready: {failed}", checks=checks)
    return JSONResponse(status_code=503, content=body.model_dump())
