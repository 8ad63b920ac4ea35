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
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.errors import ApiError
from api.queue import claim_inference_slot, no_worker_error, redis_unreachable, send_request
from api.slots import Slot, free_slot, slot_client
from shared.naming import GENERATE_TASK
from shared.settings import get_settings

# How long one blocking read waits before looking at the deadline again.
READ_SECONDS = 1.0
# At most this many queued events are read per round trip.
BATCH = 256
# An asyncio client belongs to its event loop: one per loop (tests start several) and URL.
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, aioredis.Redis]]" = (
    weakref.WeakKeyDictionary()
)


def _async_redis() -> aioredis.Redis:
    """An asyncio Redis client for the configured URL on the running event loop."""
    url, mine = get_settings().redis_url, _clients.setdefault(asyncio.get_running_loop(), {})
    if url not in mine:
        mine[url] = aioredis.Redis.from_url(url, socket_connect_timeout=2)
    return mine[url]


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
        self.early: list[dict[str, Any]] = []  # events read with `start`

    def _send_task(self) -> None:
        self.slot = claim_inference_slot(self.owner, self.timeout)
        send_request(GENERATE_TASK, self.request, self.timeout)

    async def next_events(self) -> list[dict[str, Any]]:
        """The worker's events so far (waiting for the first), or [] once the deadline passed."""
        client = _async_redis()
        while (left := self.deadline - time.time()) > 0:
            item = await client.blpop([self.key], timeout=min(READ_SECONDS, max(left, 0.01)))
            if item is not None:
                rest = await client.lpop(self.key, BATCH) or []
                return [json.loads(raw) for raw in [item[1], *rest]]
        return []

    def close(self) -> None:
        """Tell a worker still generating to stop, drop the list, then free the slot (never
        raises). In that order: whoever sees the slot free finds the worker told."""
        with contextlib.suppress(redis.RedisError):
            pipe = slot_client().pipeline(transaction=False)
            if not self.ended:
                pipe.set(self.key + ":cancel", 1, ex=int(self.timeout) + 60)
            pipe.delete(self.key)
            pipe.execute()
        if self.slot is not None:
            free_slot(self.slot)
            self.slot = None

    async def open(self) -> None:
        """Send the task and wait for `start`; errors before it are plain HTTP errors."""
        try:
            await run_in_threadpool(self._send_task)
            events = await self.next_events()
        except redis.RedisError as exc:
            self.close()
            raise redis_unreachable(GENERATE_TASK, exc) from None
        except BaseException:
            self.close()
            raise
        first = events[0] if events else None
        if first is None or first.get("type") != "start":
            self.ended = first is not None
            self.close()
            error = (first or {}).get("error") or {}
            if first is None or error.get("code") == "deadline_exceeded":
                raise no_worker_error(self.timeout)
            raise ApiError(
                400, str(error.get("message", "generation failed")), param=error.get("param")
            )
        self.early = events[1:]

    async def messages(self) -> AsyncIterator[str]:
        """SSE messages until [DONE] (or an error message); always closes the stream."""
        try:
            for payload in self.shape.opening(self.choices):
                yield sse(payload)
            events = self.early
            while True:
                if not events:
                    events = await self.next_events()
                if not events:
                    message = "generation did not finish before the request's deadline"
                    yield sse({"error": {"message": message, "type": "server_error",
                                         "param": None, "code": "deadline_exceeded"}})  # fmt: skip
                    return
                batch: list[str] = []  # one write for all the events read together
                for event in events:
                    batch += self._messages(event)
                    if self.ended:
                        break
                if batch:
                    yield "".join(batch)
                if self.ended:
                    return
                events = []
        finally:
            self.close()

    def _messages(self, event: dict[str, Any]) -> list[str]:
        """The SSE messages for one worker event; an ending one sets self.ended."""
        kind = event.get("type")
        if kind == "chunk":
            return [sse(payload) for payload in self.shape.chunk(event)]
        if kind == "done":
            self.ended = True
            return [*(sse(p) for p in self.shape.usage(event.get("usage"))), sse("[DONE]")]
        if kind == "error":
            self.ended = True
            error = {"type": "server_error", "param": None, "code": None}
            return [sse({"error": {**error, **(event.get("error") or {})}})]
        return []


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
