"""Engine and short-lived sessions; SQLite gets WAL and a busy timeout."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import get_settings

SQLITE_POOL_SIZE = 40


def make_engine(url: str) -> Engine:
    """An engine for url; for SQLite, WAL and a 30 s busy timeout so workers and API coexist."""
    if url.startswith("sqlite"):
        # WAL lets readers run beside the one writer: a connection per API threadpool thread
        # (AnyIO's 40) means no request waits for the pool just to read.
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=SQLITE_POOL_SIZE,
            max_overflow=0,
            pool_timeout=60,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


_ENGINES: dict[str, Engine] = {}
# One session factory per engine: making a sessionmaker costs more than the query it serves.
_SESSIONS: dict[str, sessionmaker[Session]] = {}


# The settings object the last lookup resolved, and its URL: resolving the SQLite path touches
# the filesystem, and get_settings() returns the same object until a test clears it.
_RESOLVED: list[tuple[object, str]] = []


def _database_url() -> str:
    settings = get_settings()
    if not _RESOLVED or _RESOLVED[0][0] is not settings:
        _RESOLVED[:] = [(settings, settings.resolved_database_url)]
    return _RESOLVED[0][1]


def get_engine() -> Engine:
    """The engine for the configured database (one per URL per process)."""
    url = _database_url()
    if url not in _ENGINES:
        _ENGINES[url] = make_engine(url)
    return _ENGINES[url]


def _session_factory() -> sessionmaker[Session]:
    url = _database_url()
    if url not in _SESSIONS:
        _SESSIONS[url] = sessionmaker(bind=get_engine(), expire_on_commit=False)
    return _SESSIONS[url]


def reset_engines() -> None:
    """Dispose every cached engine (tests that switch databases, forked processes)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()
    _SESSIONS.clear()
    _RESOLVED.clear()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A short transaction: commit on success, roll back on error, always close."""
    session = _session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
