"""Per-owner slots counted in Redis, so every API process shares one limit per owner."""

import contextlib
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache

import redis

from api.errors import ApiError
from shared.settings import get_settings

# Drop expired slots, then take one if the owner holds fewer than the limit (atomic in Redis).
# The set itself lives as long as its longest slot, so an idle owner leaves no key behind.
_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[5]) then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
return 1
"""
_RENEW_SLOT = """
if redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[1], ARGV[2]) == 0 then return 0 end
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
"""


@dataclass(frozen=True)
class Slot:
    """One held slot: the owner's sorted set in Redis and this holder's member in it."""

    key: str
    token: str


@lru_cache(maxsize=4)
def _redis(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)


def slot_client() -> redis.Redis:
    """The Redis client for the configured URL."""
    return _redis(get_settings().redis_url)


def slot_key(kind: str, owner: str) -> str:
    """The sorted set holding the owner's slots of kind (member: token, score: expiry)."""
    return f"gpt2ft:{kind}:{owner}"


def take_slot(kind: str, owner: str, limit: int, ttl: float) -> Slot | None:
    """One of the owner's `limit` slots of kind for ttl seconds, or None when all are held.

    A slot expires after ttl unless renewed: an API process killed mid-request frees its
    slots then, not never. Raises redis.RedisError when Redis does not answer.
    """
    slot = Slot(slot_key(kind, owner), uuid.uuid4().hex)
    now, seconds = time.time(), int(ttl) + 1
    taken = slot_client().eval(_TAKE_SLOT, 1, slot.key, now, limit, now + ttl, slot.token, seconds)
    return slot if taken else None


def renew_slot(slot: Slot, ttl: float) -> bool:
    """Push the slot's expiry ttl seconds ahead (a long stream keeps its slot); False if lost."""
    expiry, seconds = time.time() + ttl, int(ttl) + 1
    return bool(slot_client().eval(_RENEW_SLOT, 1, slot.key, expiry, slot.token, seconds))


def free_slot(slot: Slot) -> None:
    """Give the slot back; a Redis error leaves it to expire."""
    with contextlib.suppress(redis.RedisError):
        slot_client().zrem(slot.key, slot.token)


def claim_slot(kind: str, owner: str, ttl: float, setting: str, what: str, advice: str) -> Slot:
    """A slot of kind under the limit named by setting; else 429 saying what and how, or 503."""
    limit = int(getattr(get_settings(), setting))
    try:
        slot = take_slot(kind, owner, limit, ttl)
    except redis.RedisError as exc:
        raise ApiError(
            503,
            f"Redis is unreachable ({type(exc).__name__}); check REDIS_URL",
            type="server_error",
            code="queue_unavailable",
            retry_after=2,
        ) from None
    if slot is None:
        raise ApiError(
            429,
            f"you have {limit} {what}, the most allowed per owner ({setting}); {advice}",
            type="rate_limit_error",
            code=f"too_many_{kind}",
            retry_after=1,  # a slot frees when a request answers or a stream closes
        )
    return slot
