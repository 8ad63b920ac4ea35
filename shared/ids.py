"""Generated public ids: never derived from client input."""

import secrets
import time

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def new_id(prefix: str, length: int = 24) -> str:
    """A random id such as file-Xy12...; prefixes follow OpenAI (file, ftjob, ftevent, ftckpt)."""
    return f"{prefix}-" + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def now_ts() -> int:
    """Unix seconds, the unit OpenAI objects use for created_at."""
    return int(time.time())
