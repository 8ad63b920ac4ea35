"""Prometheus metrics: job and queue figures read at scrape time, HTTP latency by route."""

import logging
import time
from collections.abc import Iterator
from typing import Any

import redis
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.db.session import session_scope
from shared.db.tables import Job, JobStatus
from shared.naming import INFERENCE_QUEUE, TRAINING_QUEUE
from shared.settings import get_settings
from shared.workers import device_counts

log = logging.getLogger(__name__)
REGISTRY = CollectorRegistry()
HTTP_LATENCY = Histogram(
    "gpt2ft_http_request_duration_seconds",
    "HTTP request latency by method, route template and status",
    ["method", "route", "status"],
    registry=REGISTRY,
)
router = APIRouter(tags=["health"])


def job_families() -> list[Metric]:
    """Jobs by status, the duration of finished jobs, and tokens/s of running jobs."""
    by_status = GaugeMetricFamily("gpt2ft_jobs", "Jobs by status", labels=["status"])
    durations = SummaryMetricFamily(
        "gpt2ft_job_duration_seconds", "First start to finish of succeeded jobs"
    )
    # Summed, never per job: /metrics has no key, and job ids belong to their owners.
    speed = GaugeMetricFamily(
        "gpt2ft_training_tokens_per_second", "Training throughput summed over running jobs"
    )
    # Jobs from before started_at was recorded count from their creation.
    started = func.coalesce(Job.started_at, Job.created_at)
    with session_scope() as session:
        counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        finished = session.execute(
            select(func.count(), func.sum(Job.finished_at - started)).where(
                Job.status == JobStatus.succeeded.value, Job.finished_at.is_not(None)
            )
        ).one()
        running = session.scalars(
            select(Job.stats).where(Job.status == JobStatus.running.value)
        ).all()
    for status in JobStatus:
        by_status.add_metric([status.value], counts.get(status, 0))
    durations.add_metric([], count_value=finished[0] or 0, sum_value=float(finished[1] or 0))
    rates = [(stats or {}).get("tokens_per_second") for stats in running]
    speed.add_metric([], float(sum(rate for rate in rates if rate is not None)))
    return [by_status, durations, speed]


def queue_family() -> Metric:
    """Messages waiting in each Celery queue (LLEN of its Redis list)."""
    depth = GaugeMetricFamily("gpt2ft_queue_depth", "Messages waiting per queue", labels=["queue"])
    client = redis.Redis.from_url(
        get_settings().redis_url, socket_connect_timeout=1, socket_timeout=1
    )
    try:
        for queue in (TRAINING_QUEUE, INFERENCE_QUEUE):
            depth.add_metric([queue], float(client.llen(queue)))  # type: ignore[arg-type]
    finally:
        client.close()
    return depth


def worker_family() -> Metric:
    """Live training workers by device kind (seen within a lease period)."""
    gauge = GaugeMetricFamily(
        "gpt2ft_workers", "Live training workers by device kind", labels=["device"]
    )
    with session_scope() as session:
        counts = device_counts(session, get_settings().lease_seconds)
    for kind in sorted({"cpu", "cuda", *counts}):
        gauge.add_metric([kind], float(counts.get(kind, 0)))
    return gauge


class ScrapeCollector:
    """Reads the database and Redis on every scrape; a failing source is skipped and logged."""

    def describe(self) -> list[Metric]:
        """Nothing up front: without this, register() would query the database at import."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Families for one scrape."""
        for source in (job_families, lambda: [queue_family()], lambda: [worker_family()]):
            try:
                yield from source()
            except Exception as exc:  # a scrape must still answer when Redis is down
                log.warning("metrics source failed: %s: %s", type(exc).__name__, exc)


REGISTRY.register(ScrapeCollector())  # type: ignore[arg-type]


@router.get(
    "/metrics",
    response_class=Response,
    operation_id="readPrometheusMetrics",
    summary="Prometheus metrics",
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
)
async def read_prometheus_metrics() -> Response:
    """Jobs by status, queue depths, job durations, tokens/s, HTTP latency (text format)."""
    body = await run_in_threadpool(generate_latest, REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class LatencyMiddleware:
    """Times every HTTP request under its route template (never the raw path: ids vary)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass through, observing the duration once the response is finished."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            HTTP_LATENCY.labels(scope["method"], route_template(scope), str(status[0])).observe(
                time.perf_counter() - started
            )


def route_template(scope: Scope) -> str:
    """The matched route's full path template (/v1/.../{job_id}), or "unmatched"."""
    # FastAPI keeps the prefixed template of an included router's route here.
    context: Any = (scope.get("fastapi") or {}).get("effective_route_context")
    route: Any = scope.get("route")
    return getattr(context, "path", None) or getattr(route, "path", None) or "unmatched"
