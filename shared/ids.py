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


def _base36(number: int, width: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while number:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
    return out.rjust(width, "0")


def new_sortable_id(prefix: str, length: int = 16) -> str:
    """An id whose text sorts by creation time (ms), so lists page stably within a second."""
    # Lowercase base36 sorts the same under byte order and the usual Postgres collations.
    return f"{prefix}-{_base36(time.time_ns() // 1_000_000, 9)}" + new_id("", length)[1:]
