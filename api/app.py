"""The FastAPI application factory."""

import logging

from fastapi import APIRouter, Depends, FastAPI

from api.auth import require_owner
from api.errors import install_error_handlers
from api.job_reads import CachedJobReads
from api.observability import LatencyMiddleware
from api.observability import router as prometheus_router
from api.request_guard import RequestGuard
from api.routes import (
    chat,
    classifications,
    completions,
    dashboard,
    files,
    health,
    jobs,
    metrics,
    models,
)
from api.schemas import ERROR_RESPONSES

log = logging.getLogger(__name__)


def create_app() -> FastAPI:
    """The gpt2ft API: OpenAI-shaped routes under /v1, probes at the root."""
    app = FastAPI(
        title="gpt2ft",
        version="0.1.0",
        summary="Self-hosted GPT-2 fine-tuning with an OpenAI-shaped API",
    )
    install_error_handlers(app)
    # Innermost first: a fresh job poll is answered before routing, once the guard has
    # authenticated it; the guard runs inside the latency middleware, so its early 401/413
    # answers are timed.
    app.add_middleware(CachedJobReads)
    app.add_middleware(RequestGuard)
    app.add_middleware(LatencyMiddleware)
    # Routes match in the order they are included, one by one: the probes first (a load
    # balancer polls them), then /v1 (clients poll their jobs first of all).
    app.include_router(health.router)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_owner)], responses=ERROR_RESPONSES)
    for module in (jobs, files, metrics, models, completions, chat, classifications):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(prometheus_router)
    app.include_router(dashboard.router)
    return app
