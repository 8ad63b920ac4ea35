"""A send-only Celery app: wakes workers; never the source of truth."""

import contextlib
import logging
import time
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from api.errors import ApiError
from api.slots import claim_slot, free_slot
from shared.db.session import session_scope
from shared.naming import (
    CLASSIFY_TASK,
    DRY_RUN_TASK,
    GENERATE_TASK,
    INFERENCE_QUEUE,
    TRAIN_TASK,
    TRAINING_QUEUE,
)
from shared.settings import get_settings
from shared.workers import place_job

log = logging.getLogger(__name__)

# One quick retry: a down broker must not hold a request; the worker's sweep re-sends.
_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.3}


@lru_cache(maxsize=4)
def queue_app(redis_url: str) -> Celery:
    """The Celery app that sends to redis_url (one per URL, so tests can switch)."""
    app = Celery("gpt2ft-api", broker=redis_url, backend=redis_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        broker_connection_retry=False,
        broker_connection_retry_on_startup=False,
        broker_connection_max_retries=1,
        broker_connection_timeout=2,
        redis_socket_connect_timeout=2,
        redis_socket_timeout=10,
        result_expires=600,
        # The result store's default is 20 reconnects a second apart: far too long for a request.
        result_backend_transport_options={"retry_policy": _RETRY_POLICY},
    )
    return app


def current_app() -> Celery:
    """The send-only app for the configured Redis."""
    return queue_app(get_settings().redis_url)


def training_queue(job_id: str) -> str:
    """The queue of a worker with the memory for job_id (shared.workers.place).

    A job not yet planned, or one no live worker fits, goes to the shared queue: the worker
    that takes it plans it and sends it on, or records why it waits.
    """
    try:
        with session_scope() as session:
            queue = place_job(session, job_id, get_settings().lease_seconds).queue
    except Exception as exc:  # the row is committed; routing is best effort here
        log.warning("job %s: placement not read: %s", job_id, exc)
        return TRAINING_QUEUE
    return queue or TRAINING_QUEUE


def send_training(job_id: str) -> bool:
    """Wake a training worker for job_id; False (logged) when the broker is unreachable."""
    try:
        current_app().send_task(
            TRAIN_TASK,
            args=[job_id],
            queue=training_queue(job_id),
            ignore_result=True,  # job state lives in the database, never in Celery results
            retry=True,
            retry_policy=_RETRY_POLICY,
        )
    except Exception as exc:  # the job row is committed; the sweep re-sends it later
        log.warning(
            "could not send %s for %s (a worker sweep will retry): %s", TRAIN_TASK, job_id, exc
        )
        return False
    return True


def _unreachable(task: str, exc: Exception) -> ApiError:
    """503 for a broker or result store that does not answer."""
    log.warning("task queue unreachable for %s: %s", task, exc)
    queue_app.cache_clear()  # a result consumer that gave up must not serve the next request
    return ApiError(
        503,
        "the task queue (Redis) is unreachable; check REDIS_URL and `gpt2ft worker`",
        type="server_error",
        code="queue_unavailable",
        retry_after=2,  # Redis restarting or a network blip: worth one more try
    )


# A slot outlives its request's timeout by this much, then frees itself (a killed API).
SLOT_GRACE_SECONDS = 30.0


@contextlib.contextmanager
def inference_slot(owner: str, timeout: float) -> Iterator[None]:
    """Hold one of the owner's in-flight inference slots (shared by every API process)."""
    slot = claim_slot(
        "inflight_requests",
        owner,
        timeout + SLOT_GRACE_SECONDS,
        "max_inflight_inference_per_owner",
        "inference requests in flight",
        "wait for one to answer",
    )
    try:
        yield
    finally:
        free_slot(slot)


def _ask_inference_worker(
    task: str, owner: str, request: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Send request as task to the inference queue and wait up to timeout for the answer."""
    with inference_slot(owner, timeout):
        # The worker stops at the deadline too: nobody reads an answer after it.
        return _send_and_wait(task, {**request, "deadline": time.time() + timeout}, timeout)


def _send_and_wait(task: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    no_worker = ApiError(
        503,
        f"no inference worker answered within {timeout:g}s; is `gpt2ft worker` running?",
        type="server_error",
        code="no_worker",
    )
    try:
        result = current_app().send_task(
            task,
            kwargs={"request": request},
            queue=INFERENCE_QUEUE,
            expires=timeout,  # a worker that starts later must not run a request nobody awaits
            retry=True,
            retry_policy=_RETRY_POLICY,
        )
    except Exception as exc:
        raise _unreachable(task, exc) from None
    try:
        answer = result.get(timeout=timeout, propagate=False)
    except CeleryTimeout:
        raise no_worker from None
    except Exception as exc:
        raise _unreachable(task, exc) from None
    finally:
        with contextlib.suppress(Exception):
            result.forget()
    if isinstance(answer, BaseException) or not isinstance(answer, dict):
        log.warning("inference worker failed on %s: %r", task, answer)
        # The worker's exception text stays in the logs: it can quote paths and other input.
        raise ApiError(500, "the inference worker failed; see the worker log", type="server_error")
    if (answer.get("error") or {}).get("code") == "deadline_exceeded":
        raise no_worker
    return answer


def run_completion(owner: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Generated text for a /v1/completions request, from an inference worker."""
    return _ask_inference_worker(GENERATE_TASK, owner, request, timeout)


def run_classification(owner: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Labels and probabilities for a /v1/classifications request, from an inference worker."""
    return _ask_inference_worker(CLASSIFY_TASK, owner, request, timeout)


def run_dry_run(owner: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """A dry-run job's resolved plan (tokens, steps, memory), from an inference worker."""
    return _ask_inference_worker(DRY_RUN_TASK, owner, request, timeout)
