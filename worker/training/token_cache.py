"""Token ids of a job's records, kept in the worker's local cache for the next job on the file.

A second job on the same file (a sweep over learning rates, a retry, a resume on another
attempt) would otherwise tokenize it all again. The key is the hash of the record texts the
task reads (so the file's content and the task's choice of fields), the tokenizer's own
definition (vocabulary, merges, normalizer: not its name) and the tokenizer call's options.
Options applied after tokenization (max_length, packing, block size) are not part of it: the
examples are rebuilt from the cached ids, so they cannot go stale.

Entries live under <scratch>/cache/tokens and share the cache's byte budget
(GPT2FT_CACHE_MAX_BYTES): the least recently used go first.
"""

import contextlib
import contextvars
import hashlib
import time
import weakref
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.settings import get_settings
from shared.storage.base import hidden_beside
from shared.storage.cache import LocalCache
from worker.training.data import token_stream, tokenize_records

# Part of every key: bump when the stored layout or tokenize_records' call changes.
FORMAT = "tokens-v1 add_special_tokens=False"


@dataclass
class TokenizeTiming:
    """What one job's planning spent tokenizing: seconds, calls, and calls the cache served."""

    seconds: float = 0.0
    calls: int = 0
    hits: int = 0

    @property
    def cached(self) -> bool:
        """Every tokenization came from the cache."""
        return self.calls > 0 and self.hits == self.calls


_timing: contextvars.ContextVar[TokenizeTiming | None] = contextvars.ContextVar(
    "tokenize_timing", default=None
)
_fingerprints: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def timed_tokenization() -> Iterator[TokenizeTiming]:
    """Use the token cache for tokenize_cached calls inside the block, and time them."""
    timing = TokenizeTiming()
    token = _timing.set(timing)
    try:
        yield timing
    finally:
        _timing.reset(token)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the tokenizer's full definition (its tokenizer.json), once per object."""
    found = _fingerprints.get(tokenizer)
    if found is None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        definition = backend.to_str() if backend is not None else repr(tokenizer.get_vocab())
        found = hashlib.sha256(f"{type(tokenizer).__name__}\n{definition}".encode()).hexdigest()
        _fingerprints[tokenizer] = found
    return found


def cache_key(texts: Iterable[str], tokenizer: Any) -> str:
    """The entry name for texts tokenized by tokenizer."""
    digest = hashlib.sha256(f"{FORMAT}\n{tokenizer_fingerprint(tokenizer)}\n".encode())
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def token_cache() -> LocalCache:
    """The worker's local cache (the same folder and budget as fetched files and models)."""
    settings = get_settings()
    return LocalCache(settings.resolved_scratch_dir / "cache", settings.cache_max_bytes)


def tokenize_cached(texts: list[str], tokenizer: Any) -> list[list[int]]:
    """tokenize_records(texts, tokenizer), from the cache when these texts were seen before.

    Only inside timed_tokenization() (a worker preparing a job): elsewhere (tests, benches,
    notebooks) this tokenizes, and leaves nothing on disk.
    """
    timing = _timing.get()
    if timing is None:
        return tokenize_records(texts, tokenizer)
    start = time.perf_counter()
    cache = token_cache()
    path = cache.entry("tokens", cache_key(texts, tokenizer) + ".npz")
    ids = _load(cache, path)
    hit = ids is not None
    if ids is None:
        ids = tokenize_records(texts, tokenizer)
        _store(cache, path, ids)
    timing.seconds += time.perf_counter() - start
    timing.calls += 1
    timing.hits += int(hit)
    return ids


def _load(cache: LocalCache, path: Any) -> list[list[int]] | None:
    try:
        with np.load(path) as stored:
            flat, ends = stored["ids"], stored["ends"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing or damaged
        return None
    cache.touch(path)
    return [part.tolist() for part in np.split(flat, ends[:-1])] if len(ends) else []


def token_stream_cached(texts: Iterable[str], tokenizer: Any, eos_id: int) -> np.ndarray:
    """token_stream(texts, tokenizer, eos_id), from the cache when these texts were seen before.

    texts is read twice on a miss (hashed, then tokenized): pass records streamed from the
    stored file (task_plan.RecordTexts), so planning never holds them all (#10 B4).
    """
    timing = _timing.get()
    if timing is None:
        return token_stream(texts, tokenizer, eos_id)
    start = time.perf_counter()
    cache = token_cache()
    path = cache.entry("tokens", f"{cache_key(texts, tokenizer)}-stream-eos{eos_id}.npz")
    ids = _load_stream(cache, path)
    hit = ids is not None
    if ids is None:
        ids = token_stream(texts, tokenizer, eos_id)
        _save(cache, path, ids=ids)
    timing.seconds += time.perf_counter() - start
    timing.calls += 1
    timing.hits += int(hit)
    return ids


def _load_stream(cache: LocalCache, path: Any) -> np.ndarray | None:
    try:
        with np.load(path) as stored:
            ids = np.asarray(stored["ids"], dtype=np.int32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing or damaged
        return None
    cache.touch(path)
    return ids


def _store(cache: LocalCache, path: Any, ids: list[list[int]]) -> None:
    flat = np.fromiter((i for row in ids for i in row), dtype=np.int32)
    ends = np.cumsum([len(row) for row in ids], dtype=np.int64)
    _save(cache, path, ids=flat, ends=ends)


def _save(cache: LocalCache, path: Any, **arrays: np.ndarray) -> None:
    staging = hidden_beside(path)
    try:
        with staging.open("wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy stubs: allow_pickle
        staging.rename(path)  # readers see a whole entry or none
    except OSError:  # a full disk costs the next job a tokenization, not this one its run
        staging.unlink(missing_ok=True)
        return
    cache.evict(keep=path)
