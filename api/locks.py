"""Locks that make a check-then-write atomic across API processes, on SQLite and Postgres.

Each lock lasts until the transaction ends. On SQLite any write takes the database's one
write lock, so a no-op UPDATE serialises the whole check-then-write; on Postgres the lock
is a row lock (files) or a transaction-level advisory lock (an owner has no row).
"""

import hashlib
from collections.abc import Iterable

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.db.tables import ApiKey, File

# The advisory lock space of per-owner quota locks (any constant other code does not use).
_OWNER_LOCKS = 0x67707432  # "gpt2"


def _owner_key(owner: str) -> int:
    """A stable signed 32-bit key for owner; a collision only makes two owners wait."""
    return int.from_bytes(hashlib.blake2b(owner.encode(), digest_size=4).digest(), signed=True)


def lock_owner(session: Session, owner: str) -> None:
    """Serialise the owner's quota checks and the inserts they guard."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_OWNER_LOCKS, _owner_key(owner))))
    else:
        # Matches no row, yet as a write it takes SQLite's write lock.
        session.execute(update(ApiKey).where(ApiKey.id.is_(None)).values(name=ApiKey.name))


def lock_files(session: Session, file_ids: Iterable[str | None]) -> None:
    """Lock the files' rows, so that a job create and a file delete run one after the other.

    Sorted: two creates naming the same two files lock them in the same order (no deadlock).
    """
    for file_id in sorted({i for i in file_ids if i is not None}):
        session.execute(
            update(File)
            .where(File.id == file_id)
            .values(deleted_at=File.deleted_at)
            .execution_options(synchronize_session=False)
        )
