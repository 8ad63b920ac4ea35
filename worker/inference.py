"""The generate task body: validate the request, call the engine, return JSON."""

import json
import logging
import time
from functools import lru_cache
from typing import Any

import redis

from shared.settings import get_settings
from shared.storage import STORED_LOCATION, StorageError, get_storage

log = logging.getLogger(__name__)


def local_location(location: str) -> str:
    """A stored set fetched into this host's cache (a folder); base models as given."""
    if location.startswith(STORED_LOCATION):
        return str(get_storage().fetch_set(location.removeprefix(STORED_LOCATION)))
    return location


def deadline_error(model: Any) -> dict[str, Any]:
    """The answer for a request whose deadline passed: the API has stopped waiting."""
    message = f"{model}: generation did not finish before the request's deadline"
    return {"error": {"message": message, "param": None, "code": "deadline_exceeded"}}


# A stream's events outlive their last push by this much (the API deletes them when done).
STREAM_TTL_SECONDS = 120


class StreamCancelled(Exception):
    """The API closed the stream (its client went away): stop generating."""


@lru_cache(maxsize=4)
def _redis(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)


class StreamPublisher:
    """Pushes a streamed request's events to its Redis list, where the API reads them.

    Chunks are sent in batches at most FLUSH_SECONDS apart (one round trip for many tokens,
    still faster than anyone reads); `start` and the last event go at once. The API sets
    `<key>:cancel` when its client disconnects; every batch looks for it.
    """

    FLUSH_SECONDS = 0.05

    def __init__(self, key: str) -> None:
        self.key = key
        self.client = _redis(get_settings().redis_url)
        self.pending: list[str] = []
        self.flushed = 0.0

    def push(self, event: dict[str, Any], now: bool = False) -> None:
        """Queue event, sending the batch when it is due; raises StreamCancelled when the API
        has stopped reading."""
        self.pending.append(json.dumps(event))
        if now or time.monotonic() - self.flushed >= self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Send the queued events in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(self.key, *self.pending)
        pipe.expire(self.key, STREAM_TTL_SECONDS)
        pipe.exists(self.key + ":cancel")
        self.pending, self.flushed = [], time.monotonic()
        if pipe.execute()[-1]:
            raise StreamCancelled(self.key)

    def finish(self, answer: dict[str, Any]) -> None:
        """The last event: the error, or done with the usage counts (never raises)."""
        event = (
            {"type": "error", "error": answer["error"]}
            if "error" in answer
            else {"type": "done", "usage": answer.get("usage")}
        )
        try:
            self.push(event, now=True)
        except (StreamCancelled, redis.RedisError):
            pass


def handle_generate(request: dict[str, Any]) -> dict[str, Any]:
    """Run a completion request; errors come back as {"error": {...}}, never a traceback.

    With a `stream_key` the choices' text also goes to that Redis list as it is generated:
    `start` once the request passed its checks, `chunk`s, then `done` (with usage) or `error`.
    """
    publisher = StreamPublisher(request["stream_key"]) if request.get("stream_key") else None
    try:
        answer = _generate(request, publisher)
    except StreamCancelled:
        log.info("stream %s: the client went away; generation stopped", request["stream_key"])
        return {
            "error": {"message": "the client closed the stream", "param": None, "code": "cancelled"}
        }
    except redis.RedisError as exc:
        log.warning(
            "stream %s: Redis failed (%s); generation stopped", request.get("stream_key"), exc
        )
        return {"error": {"message": f"Redis failed: {exc}", "param": None}}
    if publisher is None:
        return answer
    publisher.finish(answer)
    # The text went through the list; the result store keeps only what the stream ended with.
    return answer if "error" in answer else {"streamed": True, "usage": answer.get("usage")}


def _generate(request: dict[str, Any], publisher: StreamPublisher | None) -> dict[str, Any]:
    from worker.training.generate import DeadlineExceeded, generate
    from worker.training.model_loading import ModelUnavailable

    deadline = request.get("deadline")
    if deadline is not None and time.time() >= deadline:
        return deadline_error(request.get("model"))
    try:
        location = local_location(request["location"])
    except StorageError as exc:
        return {"error": {"message": f"{request.get('model')}: {exc}", "param": "model"}}
    if _is_classifier(location):
        return {
            "error": {
                "message": f"{request.get('model')} is a classifier, not a text "
                "generator; use POST /v1/classifications",
                "param": "model",
            }
        }
    streaming: dict[str, Any] = {}
    if publisher is not None:
        streaming["on_start"] = lambda: publisher.push({"type": "start"}, now=True)
        streaming["on_chunk"] = lambda chunk: publisher.push({"type": "chunk", **chunk})
    try:
        return generate(
            location,
            list(request["prompts"]),
            max_tokens=int(request.get("max_tokens") or 16),
            temperature=float(request.get("temperature", 1.0)),
            top_p=float(request.get("top_p", 1.0)),
            n=int(request.get("n") or 1),
            stop=request.get("stop"),
            seed=request.get("seed"),
            echo=bool(request.get("echo", False)),
            top_k=request.get("top_k"),
            deadline=deadline,
            logprobs=request.get("logprobs"),
            **streaming,
        )
    except DeadlineExceeded:
        return deadline_error(request.get("model"))
    except ModelUnavailable as exc:
        return {"error": {"message": str(exc), "param": "model"}}
    except (ValueError, OSError) as exc:
        log.warning("completion for %s failed: %s", request.get("model"), exc)
        return {"error": {"message": f"{request.get('model')}: {exc}", "param": None}}


def _is_classifier(location: str) -> bool:
    from worker.training.classify import is_classifier

    try:
        return is_classifier(location)
    except (OSError, ValueError):
        return False  # a missing or hub model: generate() reports it in its own words


def handle_classify(request: dict[str, Any]) -> dict[str, Any]:
    """Run a classification request; errors come back as {"error": {...}}, never a traceback."""
    from worker.training.classify import classify

    model = request.get("model")
    if request.get("deadline") is not None and time.time() >= request["deadline"]:
        return deadline_error(model)
    try:
        location = local_location(request["location"])
        if not _is_classifier(location):
            message = (
                f'{model} is not a classifier; fine-tune one with task "classification" '
                "(or use POST /v1/completions for text)"
            )
            return {"error": {"message": message, "param": "model"}}
        data = classify(location, list(request["input"]))
    except (ValueError, OSError, StorageError) as exc:
        log.warning("classification for %s failed: %s", model, exc)
        return {"error": {"message": f"{model}: {exc}", "param": None}}
    return {"data": data}
