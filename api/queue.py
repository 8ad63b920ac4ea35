"""A send-only Celery app: wakes workers; never the source of truth."""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from fastapi.concurrency import run_in_threadpool
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from api.errors import ApiError
from api.slots import Slot, claim_slot, free_slot
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


def redis_unreachable(task: str, exc: Exception) -> ApiError:
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


def claim_inference_slot(owner: str, timeout: float) -> Slot:
    """One of the owner's in-flight inference slots (shared by every API process), else 429."""
    return claim_slot(
        "inflight_requests",
        owner,
        timeout + SLOT_GRACE_SECONDS,
        "max_inflight_inference_per_owner",
        "inference requests in flight",
        "wait for one to answer",
    )


@contextlib.contextmanager
def inference_slot(owner: str, timeout: float) -> Iterator[None]:
    """Hold one of the owner's in-flight inference slots for the block."""
    slot = claim_inference_slot(owner, timeout)
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


def no_worker_error(timeout: float) -> ApiError:
    return ApiError(
        503,
        f"no inference worker answered within {timeout:g}s; is `gpt2ft worker` running?",
        type="server_error",
        code="no_worker",
    )


def send_request(
    task: str, request: dict[str, Any], timeout: float, task_id: str | None = None
) -> Any:
    """Put task on the inference queue (an AsyncResult); 503 when the broker does not answer."""
    try:
        return current_app().send_task(
            task,
            task_id=task_id,
            kwargs={"request": request},
            queue=INFERENCE_QUEUE,
            expires=timeout,  # a worker that starts later must not run a request nobody awaits
            retry=True,
            retry_policy=_RETRY_POLICY,
        )
    except Exception as exc:
        raise redis_unreachable(task, exc) from None


def _checked(task: str, answer: object, timeout: float) -> dict[str, Any]:
    """The worker's answer, or the ApiError a failed or late one means."""
    if isinstance(answer, BaseException) or not isinstance(answer, dict):
        log.warning("inference worker failed on %s: %r", task, answer)
        # The worker's exception text stays in the logs: it can quote paths and other input.
        raise ApiError(500, "the inference worker failed; see the worker log", type="server_error")
    if (answer.get("error") or {}).get("code") == "deadline_exceeded":
        raise no_worker_error(timeout)
    return answer


def _send_and_wait(task: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send and wait in this thread (sync callers: the dry run of a job create)."""
    result = send_request(task, request, timeout)
    try:
        answer = result.get(timeout=timeout, propagate=False)
    except CeleryTimeout:
        raise no_worker_error(timeout) from None
    except Exception as exc:
        raise redis_unreachable(task, exc) from None
    finally:
        with contextlib.suppress(Exception):
            result.forget()
    return _checked(task, answer, timeout)


async def _send_and_await(task: str, request: dict[str, Any], timeout: float) -> Any:
    """Send task and await its result from the Celery result store, holding no thread.

    The worker's result backend SETs celery-task-meta-<id> and PUBLISHes it on the channel of
    the same name: we subscribe before the task is sent (so nothing is missed), and GET the
    key once a second too in case a message was lost. None at the timeout.
    """
    backend = current_app().backend
    task_id = uuid.uuid4().hex
    key = backend.get_key_for_task(task_id)
    # A client per request: redis.asyncio connections belong to the event loop that made them.
    client = aioredis.Redis.from_url(
        get_settings().redis_url, socket_connect_timeout=2, socket_timeout=timeout + 10
    )
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(key)
        await run_in_threadpool(send_request, task, request, timeout, task_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        raw = await client.get(key)
        while raw is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            message = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=min(remaining, 1.0)
            )
            raw = message["data"] if message else await client.get(key)
        meta = backend.decode_result(raw)
        await client.delete(key)  # what result.forget() did: nobody reads it again
        return meta["result"] if meta.get("status") == "SUCCESS" else RuntimeError(str(meta))
    finally:
        with contextlib.suppress(Exception):
            await pubsub.aclose()
        with contextlib.suppress(Exception):
            await client.aclose()


async def _ask_inference_worker_async(
    task: str, owner: str, request: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """_ask_inference_worker for async routes: the wait holds no threadpool thread."""
    slot = await run_in_threadpool(claim_inference_slot, owner, timeout)
    try:
        # The worker stops at the deadline too: nobody reads an answer after it.
        request = {**request, "deadline": time.time() + timeout}
        try:
            answer = await _send_and_await(task, request, timeout)
        except RedisError as exc:
            raise redis_unreachable(task, exc) from None
        if answer is None:
            raise no_worker_error(timeout)
        return _checked(task, answer, timeout)
    finally:
        await run_in_threadpool(free_slot, slot)


async def run_completion(owner: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Generated text for a /v1/completions request, from an inference worker."""
    return await _ask_inference_worker_async(GENERATE_TASK, owner, request, timeout)


async def run_classification(owner: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Labels and probabilities for a /v1/classifications request, from an inference worker."""
    return await _ask_inference_worker_async(CLASSIFY_TASK, owner, request, timeout)


def run_dry_run(owner: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """A dry-run job's resolved plan (tokens, steps, memory), from an inference worker."""
    return _ask_inference_worker(DRY_RUN_TASK, owner, request, timeout)
