"""Recently checked API keys, so a request need not ask the database who its key belongs to.

Revocation is honoured at once: `gpt2ft keys revoke` publishes on a Redis channel
(shared.keys.KEYS_REVOKED_CHANNEL) and every API process listening on it empties its cache.
A revocation made in the API process itself empties it before the next lookup. The cache
is used only while this process is subscribed to that channel, so a Redis outage
means a database lookup per request, never a stale answer; should a revoke's message be lost
anyway (its Redis unreachable from the CLI), an entry lives key_cache_seconds at most.
"""

import asyncio
import contextlib
import logging
import time

from redis import asyncio as aioredis

from shared.keys import KEYS_REVOKED_CHANNEL, hash_key, revocations_here
from shared.settings import get_settings

log = logging.getLogger(__name__)

MAX_ENTRIES = 10_000  # a bound on memory; past it the cache starts over
_owners: dict[str, tuple[str, float]] = {}  # sha256 of the key -> (owner, monotonic expiry)
_listener: asyncio.Task[None] | None = None
_subscribed = False
_generation = 0  # bumped by every forget_all: a lookup that began before one is not cached
_revocations_seen = 0  # shared.keys.revocations_here() when the cache last started over


def generation() -> int:
    """Take before a database lookup; hand to remember() after it."""
    return _generation


def cached_owner(token: str) -> str | None:
    """The owner of token if this process checked it lately and is hearing revocations."""
    global _revocations_seen
    if not _listening():
        return None
    if revocations_here() != _revocations_seen:  # revoked in this very process: no waiting
        _revocations_seen = revocations_here()
        forget_all()
        return None
    entry = _owners.get(hash_key(token))
    if entry is None or entry[1] < time.monotonic():
        return None
    return entry[0]


def remember(token: str, owner: str, since: int) -> None:
    """Cache a key the database accepted in a lookup begun at generation since (only while
    revocations can be heard, and none was heard during the lookup)."""
    ttl = get_settings().key_cache_seconds
    if ttl <= 0 or since != _generation or not _listening():
        return
    if len(_owners) >= MAX_ENTRIES:
        _owners.clear()
    _owners[hash_key(token)] = (owner, time.monotonic() + ttl)


def forget_all() -> None:
    """Drop every cached key (a key was revoked somewhere, or we may have missed it)."""
    global _generation
    _generation += 1
    _owners.clear()


def _listening() -> bool:
    """Subscribed to revocations from the running event loop (tests run several loops)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    return (
        _subscribed
        and _listener is not None
        and not _listener.done()
        and _listener.get_loop() is loop
    )


def ensure_listener() -> None:
    """Start this event loop's revocation listener unless it runs (called per request)."""
    global _listener, _subscribed
    if get_settings().key_cache_seconds <= 0:
        return
    loop = asyncio.get_running_loop()
    if _listener is not None and not _listener.done() and _listener.get_loop() is loop:
        return
    _subscribed = False
    forget_all()
    _listener = loop.create_task(_listen(), name="gpt2ft-key-revocations")


async def _listen() -> None:
    """Empty the cache on every revocation message; on a lost connection, empty it and retry."""
    global _subscribed
    while True:
        client = aioredis.Redis.from_url(get_settings().redis_url, socket_connect_timeout=2)
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(KEYS_REVOKED_CHANNEL)
                forget_all()  # revocations before now reached the database: start clean
                _subscribed = True
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        forget_all()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis down or restarting: no cache until we hear again
            log.debug("key revocation listener: %s; retrying", exc)
        finally:
            _subscribed = False
            forget_all()
            with contextlib.suppress(Exception):
                await client.aclose()
        await asyncio.sleep(1.0)
