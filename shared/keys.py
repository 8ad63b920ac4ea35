"""API keys: stored as sha256 hex, compared in constant time, never logged."""

import hashlib
import hmac
import logging
import secrets
import string

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from shared.db.session import session_scope
from shared.db.tables import ApiKey
from shared.ids import new_id, now_ts

log = logging.getLogger(__name__)
KEY_PREFIX = "sk-gpt2ft-"
# API processes cache checked keys and empty that cache on a message here (api/key_cache.py).
KEYS_REVOKED_CHANNEL = "gpt2ft:api-keys:revoked"
# Revocations made by this process (an API process's cache checks it on every hit).
_revocations = [0]


def revocations_here() -> int:
    """How many keys this process revoked so far."""
    return _revocations[0]


_KEY_ALPHABET = string.ascii_letters + string.digits


def hash_key(plain: str) -> str:
    """The stored form of a key: sha256 hex of its UTF-8 bytes."""
    return hashlib.sha256(plain.encode("utf-8")).hexdigest()


def generate_key() -> str:
    """A new plain key: sk-gpt2ft- and 40 random letters and digits."""
    return KEY_PREFIX + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(40))


def _insert(owner: str, plain: str, name: str | None) -> str:
    key_id = new_id("key")
    with session_scope() as session:
        session.add(
            ApiKey(id=key_id, owner=owner, key_hash=hash_key(plain), name=name, created_at=now_ts())
        )
    return key_id


def create_api_key(owner: str, name: str | None = None) -> str:
    """Register a new key for owner; the plain key is returned once and never stored."""
    plain = generate_key()
    _insert(owner, plain, name)
    return plain


def ensure_api_key(owner: str, plain: str, name: str | None = "dev") -> str:
    """Register plain for owner unless it already is (idempotent); returns the key id."""
    if not plain:
        raise ValueError("an empty API key cannot be registered")
    for _ in range(2):
        with session_scope() as session:
            row = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(plain))).first()
            if row is not None:
                if row.owner != owner:
                    raise ValueError(f"this key is already registered to another owner ({row.id})")
                if row.revoked_at is not None:
                    raise ValueError(f"this key ({row.id}) was revoked; configure a new one")
                return row.id
        try:
            return _insert(owner, plain, name)
        except IntegrityError:
            continue  # another process registered it between our read and insert
    raise RuntimeError("could not register the API key")


def revoke_api_key(key: str) -> bool:
    """Revoke by key id or plain key; False when no active key matched."""
    with session_scope() as session:
        result = session.execute(
            update(ApiKey)
            .where((ApiKey.id == key) | (ApiKey.key_hash == hash_key(key)))
            .where(ApiKey.revoked_at.is_(None))
            .values(revoked_at=now_ts())
        )
        revoked = bool(getattr(result, "rowcount", 0))
    if revoked:
        _revocations[0] += 1
        announce_revocation()
    return revoked


def announce_revocation() -> None:
    """Tell API processes to forget the keys they cached (best effort: unheard, the cache's
    key_cache_seconds bounds how long a revoked key still works)."""
    import redis

    from shared.settings import get_settings

    try:
        client = redis.Redis.from_url(
            get_settings().redis_url, socket_connect_timeout=2, socket_timeout=2
        )
        try:
            client.publish(KEYS_REVOKED_CHANNEL, "revoked")
        finally:
            client.close()
    except redis.RedisError as exc:
        log.warning(
            "could not announce the revocation on Redis (%s): API processes may accept the key "
            "for up to GPT2FT_KEY_CACHE_SECONDS more",
            exc,
        )


def owner_for_key(plain: str) -> str | None:
    """The owner of an active key, or None for unknown or revoked keys."""
    if not plain:
        return None
    digest = hash_key(plain)
    with session_scope() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).first()
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.key_hash, digest):
            return None
        return row.owner


def list_api_keys(owner: str | None = None) -> list[dict[str, object]]:
    """Key ids, owners, names and dates (never hashes), optionally for one owner."""
    with session_scope() as session:
        query = select(ApiKey).order_by(ApiKey.created_at)
        if owner is not None:
            query = query.where(ApiKey.owner == owner)
        return [
            {
                "id": row.id,
                "owner": row.owner,
                "name": row.name,
                "created_at": row.created_at,
                "revoked_at": row.revoked_at,
            }
            for row in session.scalars(query)
        ]
