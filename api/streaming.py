"""Streamed generation: the worker pushes chunks to a Redis list, the API forwards them as SSE.

The route sends the generate task with a `stream_key` and waits (redis.asyncio, no thread held)
for the worker's first event: an error still becomes a plain HTTP error, `start` opens the
Server-Sent Events response. Each chunk then goes out as `data: {json}` in OpenAI's shape
(text_completion or chat.completion.chunk), an optional usage chunk follows, and `data: [DONE]`
ends the stream. The per-owner inference slot is held until the stream ends; a client that
disconnects frees it and sets `<key>:cancel`, which stops the worker at its next token.
"""

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.errors import ApiError
from api.queue import _RETRY_POLICY, SLOT_GRACE_SECONDS, _unreachable, current_app
from api.slots import Slot, claim_slot, free_slot, slot_client
from shared.naming import GENERATE_TASK, INFERENCE_QUEUE
from shared.settings import get_settings

# How long one blocking read waits before looking at the deadline again.
READ_SECONDS = 1.0
_clients: dict[tuple[str, int], aioredis.Redis] = {}


def _async_redis() -> aioredis.Redis:
    """An asyncio Redis client for the configured URL, one per event loop."""
    key = (get_settings().redis_url, id(asyncio.get_running_loop()))
    if key not in _clients:
        _clients[key] = aioredis.Redis.from_url(key[0], socket_connect_timeout=2)
    return _clients[key]


def completion_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The worker's token entries as a text_completion's logprobs (OpenAI's legacy shape)."""
    if entries is None:
        return None
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [
            None if e["top"] is None else {t["token"]: t["logprob"] for t in e["top"]}
            for e in entries
        ],
        "text_offset": [e["offset"] for e in entries],
    }


def chat_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The worker's token entries as a chat choice's logprobs ({"content": [...]})."""
    if entries is None:
        return None
    return {
        "content": [
            {
                "token": e["token"],
                "logprob": e["logprob"],
                "bytes": e["bytes"],
                "top_logprobs": e["top"] or [],
            }
            for e in entries
        ],
        "refusal": None,
    }


@dataclass
class StreamShape:
    """How chunks look: `text_completion` (completions) or `chat.completion.chunk` (chat)."""

    id: str
    model: str
    chat: bool = False
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def _payload(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            payload["usage"] = None
        return payload

    def opening(self, choices: int) -> list[dict[str, Any]]:
        """Chat streams open each choice with its role, as OpenAI's do."""
        if not self.chat:
            return []
        delta = {"role": "assistant", "content": ""}
        return [
            self._payload([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
            for i in range(choices)
        ]

    def chunk(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The payloads for one worker chunk of one choice."""
        index, finish = event["index"], event["finish_reason"]
        if not self.chat:
            logprobs = completion_logprobs(event["logprobs"])
            choice = {"index": index, "text": event["text"], "logprobs": logprobs}
            return [self._payload([{**choice, "finish_reason": finish}])]
        payloads = []
        if event["text"] or event["logprobs"]:
            content = {"index": index, "delta": {"content": event["text"]}}
            content["logprobs"] = chat_logprobs(event["logprobs"])
            payloads.append(self._payload([{**content, "finish_reason": None}]))
        if finish is not None:
            end = {"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}
            payloads.append(self._payload([end]))
        return payloads

    def usage(self, usage: dict[str, Any] | None) -> list[dict[str, Any]]:
        """stream_options.include_usage: a last chunk with the usage and no choices."""
        if not self.include_usage:
            return []
        return [{**self._payload([]), "usage": usage}]


def sse(payload: Any) -> str:
    """One `data:` message."""
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {text}\n\n"


def _no_worker(timeout: float) -> ApiError:
    return ApiError(
        503,
        f"no inference worker answered within {timeout:g}s; is `gpt2ft worker` running?",
        type="server_error",
        code="no_worker",
    )


class _Stream:
    """One streamed request: its Redis list, slot and deadline."""

    def __init__(self, owner: str, request: dict[str, Any], shape: StreamShape, choices: int):
        self.owner, self.shape, self.choices = owner, shape, choices
        self.key = f"gpt2ft:stream:{shape.id}"
        self.timeout = get_settings().completion_timeout_seconds
        self.deadline = time.time() + self.timeout
        self.request = {**request, "stream_key": self.key, "deadline": self.deadline}
        self.slot: Slot | None = None
        self.ended = False

    def _send_task(self) -> None:
        self.slot = claim_slot(
            "inflight_requests",
            self.owner,
            self.timeout + SLOT_GRACE_SECONDS,
            "max_inflight_inference_per_owner",
            "inference requests in flight",
            "wait for one to answer",
        )
        try:
            current_app().send_task(
                GENERATE_TASK,
                kwargs={"request": self.request},
                queue=INFERENCE_QUEUE,
                expires=self.timeout,
                ignore_result=True,  # the events go through the list; nobody reads a result
                retry=True,
                retry_policy=_RETRY_POLICY,
            )
        except Exception as exc:
            raise _unreachable(GENERATE_TASK, exc) from None

    async def next_event(self) -> dict[str, Any] | None:
        """The worker's next event, or None once the deadline has passed."""
        client = _async_redis()
        while (left := self.deadline - time.time()) > 0:
            item = await client.blpop([self.key], timeout=min(READ_SECONDS, max(left, 0.01)))
            if item is not None:
                event: dict[str, Any] = json.loads(item[1])
                return event
        return None

    def close(self) -> None:
        """Free the slot; tell a worker still generating to stop; drop the list (never raises)."""
        if self.slot is not None:
            free_slot(self.slot)
            self.slot = None
        with contextlib.suppress(redis.RedisError):
            pipe = slot_client().pipeline(transaction=False)
            if not self.ended:
                pipe.set(self.key + ":cancel", 1, ex=int(self.timeout) + 60)
            pipe.delete(self.key)
            pipe.execute()

    async def open(self) -> None:
        """Send the task and wait for `start`; errors before it are plain HTTP errors."""
        try:
            await run_in_threadpool(self._send_task)
            event = await self.next_event()
        except redis.RedisError as exc:
            self.close()
            raise _unreachable(GENERATE_TASK, exc) from None
        except BaseException:
            self.close()
            raise
        if event is None or event.get("type") != "start":
            self.ended = event is not None
            self.close()
            error = (event or {}).get("error") or {}
            if event is None or error.get("code") == "deadline_exceeded":
                raise _no_worker(self.timeout)
            raise ApiError(
                400, str(error.get("message", "generation failed")), param=error.get("param")
            )

    async def messages(self) -> AsyncIterator[str]:
        """SSE messages until [DONE] (or an error message); always closes the stream."""
        try:
            for payload in self.shape.opening(self.choices):
                yield sse(payload)
            while True:
                event = await self.next_event()
                if event is None:
                    message = "generation did not finish before the request's deadline"
                    yield sse({"error": {"message": message, "type": "server_error",
                                         "param": None, "code": "deadline_exceeded"}})  # fmt: skip
                    return
                kind = event.get("type")
                if kind == "chunk":
                    for payload in self.shape.chunk(event):
                        yield sse(payload)
                elif kind == "done":
                    self.ended = True
                    for payload in self.shape.usage(event.get("usage")):
                        yield sse(payload)
                    yield sse("[DONE]")
                    return
                elif kind == "error":
                    self.ended = True
                    error = {"type": "server_error", "param": None, "code": None}
                    yield sse({"error": {**error, **(event.get("error") or {})}})
                    return
        finally:
            self.close()


async def stream_response(
    owner: str, request: dict[str, Any], shape: StreamShape, choices: int
) -> StreamingResponse:
    """Start the worker on request and answer with its chunks as Server-Sent Events.

    429 when the owner's inference slots are all held, 503 when no worker starts in time,
    400 for a request the worker refuses (a prompt too long for the model, a classifier).
    """
    stream = _Stream(owner, request, shape, choices)
    await stream.open()
    return StreamingResponse(
        stream.messages(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
