"""GET /v1/fine_tuning/jobs/{id}, the route clients poll, answered from memory while the
database has not changed since the job was read.

SQLite only: `PRAGMA data_version`, asked on a connection of our own, changes whenever any
other connection commits (a worker's progress, another API process, this one's own pool), so an
entry read at the current version is exactly what the database holds; a commit anywhere makes
every entry stale at once. Asking costs microseconds and no thread, where reading the row costs
a threadpool hop and an ORM session. Other databases have no such counter: every read goes to
the database.

CachedJobReads answers a poll whose entry is fresh before the request reaches FastAPI: route
matching and dependency solving cost twice the read itself (`make bench`, read_ratio). A miss
goes on to the route, whose load fills the entry.
"""

import asyncio
import re
import sqlite3
import threading
from types import SimpleNamespace

from fastapi.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import owned_job
from api.job_views import job_out
from shared.db.session import get_engine, session_scope

MAX_ENTRIES = 10_000  # a bound on memory; past it the cache starts over
_entries: dict[str, tuple[int, str, bytes]] = {}  # job id -> (data_version, owner, JSON body)
_lock = threading.Lock()
_watch: dict[str, sqlite3.Connection] = {}  # database file -> our own connection to it


def data_version() -> int | None:
    """The SQLite database's change counter as of now; None for other databases."""
    url = get_engine().url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    with _lock:
        conn = _watch.get(url.database)
        if conn is None:
            conn = sqlite3.connect(url.database, timeout=1, check_same_thread=False)
            _watch[url.database] = conn
        try:
            row = conn.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            conn.close()
            del _watch[url.database]
            return None
    return int(row[0])


def cached(job_id: str, owner: str) -> bytes | None:
    """The job's JSON as last read, if nothing was committed since (no thread, no session)."""
    entry = _entries.get(job_id)
    if entry is None or entry[1] != owner:
        return None
    return entry[2] if entry[0] == data_version() else None


# Loads under way, by (job, owner): the version each began at and its future.
_loading: dict[tuple[str, str], tuple[int | None, "asyncio.Future[bytes]"]] = {}


async def read(job_id: str, owner: str) -> bytes:
    """The job's JSON: cached, else loaded in the threadpool.

    After a commit every poller misses at once; they share one load, provided it began at the
    version they found (so no commit came between its start and their arrival: its answer is
    as fresh as their own read would be).
    """
    body = cached(job_id, owner)
    if body is not None:
        return body
    key, version = (job_id, owner), data_version()
    loop = asyncio.get_running_loop()
    under_way = _loading.get(key)
    if (
        under_way
        and version is not None
        and under_way[0] == version
        and under_way[1].get_loop() is loop
    ):
        return await asyncio.shield(under_way[1])
    future: asyncio.Future[bytes] = loop.create_future()
    _loading[key] = (version, future)
    try:
        body = await run_in_threadpool(load, job_id, owner, version)
        future.set_result(body)
        return body
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # retrieved: no "never retrieved" warning when nobody shared it
        raise
    finally:
        if _loading.get(key, (None, None))[1] is future:
            del _loading[key]


def load(job_id: str, owner: str, version: int | None = None) -> bytes:
    """Read the caller's job (404 if it is not theirs) and remember its JSON (threadpool);
    version: data_version() taken before the read (a commit during it makes the entry stale)."""
    if version is None:
        version = data_version()
    with session_scope() as session:
        body = job_out(owned_job(job_id, owner, session)).model_dump_json().encode()
    if version is not None:
        if len(_entries) >= MAX_ENTRIES:
            _entries.clear()
        _entries[job_id] = (version, owner, body)
    return body


def forget_all() -> None:
    """Drop every entry and close the watch connections (tests switching databases)."""
    with _lock:
        _entries.clear()
        for conn in _watch.values():
            conn.close()
        _watch.clear()


# GET /v1/fine_tuning/jobs/{job_id}.
_JOB_PATH = re.compile(r"/v1/fine_tuning/jobs/([^/]+)")
# What the latency middleware records a cached answer under: the route's own template.
_ROUTE = SimpleNamespace(path="/v1/fine_tuning/jobs/{job_id}")


class CachedJobReads:
    """Answers a job poll from a fresh entry without routing; anything else goes to the app.

    Runs after RequestGuard, which put the authenticated owner in the scope's state: an entry
    is only ever served to the owner it was read for.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The cached JSON for a fresh GET of the caller's job; otherwise the app."""
        if scope["type"] == "http" and scope["method"] == "GET":
            match = _JOB_PATH.fullmatch(scope["path"])
            owner = scope.get("state", {}).get("owner")
            body = cached(match.group(1), owner) if match and isinstance(owner, str) else None
            if body is not None:
                scope["route"] = _ROUTE
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
