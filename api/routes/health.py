"""Liveness and readiness probes (no API key needed)."""

import logging
from typing import Any

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from shared.db.session import get_engine, session_scope
from shared.settings import get_settings
from shared.workers import live_workers

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


class WorkerView(BaseModel):
    """A live worker process: where it runs and on which device."""

    id: str
    hostname: str
    queues: list[str]
    device: str
    device_kind: str
    device_count: int
    devices: list[dict[str, Any]]
    memory_bytes: int | None
    cuda_version: str | None
    driver_version: str | None
    torch_version: str | None
    started_at: float
    last_seen_at: float


class Health(BaseModel):
    """Probe result; checks maps each dependency to "ok" or why it failed."""

    status: str
    checks: dict[str, str] = {}
    # /readyz: worker processes seen within a lease period, with their devices.
    workers: list[WorkerView] = []


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


def _workers() -> list[WorkerView]:
    """Live workers; none is not a readiness failure (jobs wait in the queue for one)."""
    try:
        with session_scope() as session:
            rows = live_workers(session, get_settings().lease_seconds)
            return [WorkerView.model_validate(row, from_attributes=True) for row in rows]
    except SQLAlchemyError as exc:  # the database answered SELECT 1: say it, still answer
        log.warning("readyz: workers not listed: %s", exc)
        return []


@router.get("/healthz", response_model=Health, operation_id="readHealth", summary="Process is up")
async def read_health() -> Health:
    """200 while the process serves requests (async: it needs no threadpool thread)."""
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
    workers = _workers() if checks["database"] == "ok" else []
    if all(v == "ok" for v in checks.values()):
        return Health(status="ok", checks=checks, workers=workers)
    failed = ", ".join(k for k, v in checks.items() if v != "ok")
    body = Health(status=f"not ready: {failed}", checks=checks, workers=workers)
    return JSONResponse(status_code=503, content=body.model_dump())
