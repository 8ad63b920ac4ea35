"""The storage interface: a few object primitives per backend, sets and manifests on top."""

import hashlib
import secrets
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from shared.storage.cache import LocalCache
from shared.storage.manifest import MANIFEST, Entry, Manifest, describe_folder, sha256_file


class StorageError(RuntimeError):
    """The store refused or lost something (missing object, hash mismatch)."""


class Storage(ABC):
    """Objects under '/'-separated keys; a published set is visible only through its manifest.

    Backends implement the primitives; everything about sets is written once, here.
    Work in progress lives in the local scratch folder; fetched objects in a bounded cache.
    """

    def __init__(self, scratch: Path, cache_max_bytes: int) -> None:
        self.scratch = scratch
        self.cache = LocalCache(scratch / "cache", cache_max_bytes)

    # ---- primitives, one implementation per backend -------------------------------

    @abstractmethod
    def put_file(self, key: str, path: Path, move: bool = False) -> None:
        """Store path's bytes under key (move: the caller gives path up)."""

    @abstractmethod
    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Store data under key only if no object has that key; False when one had."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """A small object's bytes, or None when it does not exist."""

    @abstractmethod
    def get_file(self, key: str, dest: Path) -> None:
        """Copy the object at key to the local file dest; StorageError when it is missing."""

    @abstractmethod
    def open_reader(self, key: str) -> IO[bytes]:
        """A binary stream of the object (close it); StorageError when it is missing."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None when it does not exist."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Every key under prefix/ (recursively), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; a missing one is fine."""

    @abstractmethod
    def local_path(self, key: str) -> Path | None:
        """The object's own file (or folder of a prefix) on a local backend, else None."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, for logs (no credentials)."""

    # ---- objects -------------------------------------------------------------------

    def iter_bytes(self, key: str, chunk: int = 1024 * 1024) -> Iterator[bytes]:
        """The object's bytes in chunks (for streaming a download)."""
        with self.open_reader(key) as reader:
            while data := reader.read(chunk):
                yield data

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under prefix/; returns how many."""
        keys = self.list_keys(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)

    def fetch_file(self, key: str) -> Path:
        """A local file with the object's bytes: the object itself, or a cached copy."""
        own = self.local_path(key)
        if own is not None:
            if not own.is_file():
                raise StorageError(f"{key} is missing from storage")
            return own
        # Keys of fetched files (uploads) never change content: the cache needs no checks.
        cached = self.cache.entry("objects", key.replace("/", "~"))
        if not cached.is_file():
            staging = hidden_beside(cached)
            try:
                self.get_file(key, staging)
                staging.rename(cached)
            finally:
                staging.unlink(missing_ok=True)
        self.cache.touch(cached)
        self.cache.evict(keep=cached)
        return cached

    # ---- published sets ------------------------------------------------------------

    def stage_set(
        self, prefix: str, folder: Path, token: str, writer: dict[str, Any], info: dict[str, Any]
    ) -> Manifest:
        """Upload folder's files under prefix/token/; the manifest is returned, not written."""
        manifest = Manifest(prefix, f"{prefix}/{token}", describe_folder(folder), writer, info)
        for entry in manifest.files:
            self.put_file(manifest.key_of(entry), folder / entry.path)
        return manifest

    def commit_manifest(self, manifest: Manifest) -> Manifest:
        """Write the manifest unless the set has one; returns the visible one (first wins).

        Callers that publish a job's output hold the job's lease while they call this
        (worker.publishing): the conditional create is what keeps a set written once.
        """
        if self.create_exclusive(manifest.key, manifest.to_json()):
            return manifest
        visible = self.read_manifest(manifest.prefix)
        if visible is None:
            raise StorageError(f"{manifest.key} exists but cannot be read")
        return visible

    def read_manifest(self, prefix: str) -> Manifest | None:
        """The set's manifest, or None while it is unpublished (or deleted)."""
        data = self.read_bytes(f"{prefix}/{MANIFEST}")
        return Manifest.from_json(data) if data is not None else None

    def published_sets(self, parent: str) -> list[str]:
        """Prefixes of the published sets directly under parent, sorted."""
        depth = parent.count("/") + 2
        return sorted(
            key.rsplit("/", 1)[0]
            for key in self.list_keys(parent)
            if key.endswith(f"/{MANIFEST}") and key.count("/") == depth
        )

    def discard(self, manifest: Manifest) -> None:
        """Remove a staged set's files (fenced off, or an earlier writer's set won)."""
        for entry in manifest.files:
            self.delete(manifest.key_of(entry))

    def delete_set(self, prefix: str) -> None:
        """Unpublish (manifest first: readers stop seeing it at once), then remove the files."""
        self.delete(f"{prefix}/{MANIFEST}")
        self.delete_prefix(prefix)

    def remove_unpublished(self, prefix: str) -> int:
        """Delete files under prefix that no manifest names (crashed or fenced-off writers)."""
        keys = self.list_keys(prefix)
        kept: set[str] = set()
        for key in keys:
            if key.endswith(f"/{MANIFEST}"):
                manifest = self.read_manifest(key.rsplit("/", 1)[0])
                if manifest is not None:
                    kept.add(key)
                    kept.update(manifest.key_of(entry) for entry in manifest.files)
        stray = [key for key in keys if key not in kept]
        for key in stray:
            self.delete(key)
        return len(stray)

    def materialize(self, manifest: Manifest, dest: Path) -> Path:
        """The set's files in the local folder dest, each checked against the manifest."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = hidden_beside(dest)
        staging.mkdir()
        try:
            for entry in manifest.files:
                target = staging / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                self._fetch_checked(manifest.key_of(entry), entry, target)
            if dest.exists():
                shutil.rmtree(dest)
            staging.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dest

    def fetch_set(self, prefix: str) -> Path:
        """A local folder holding the published set (its own on a local backend, else cached)."""
        manifest = self.read_manifest(prefix)
        if manifest is None:
            raise StorageError(f"{prefix} is not published (no manifest)")
        own = self.local_path(manifest.root)
        if own is not None:
            return own
        digest = hashlib.sha256(manifest.to_json()).hexdigest()[:16]
        cached = self.cache.entry("sets", f"{prefix.replace('/', '~')}~{digest}")
        if not cached.is_dir():
            self.materialize(manifest, cached)
        self.cache.touch(cached)
        self.cache.evict(keep=cached)
        return cached

    def _fetch_checked(self, key: str, entry: Entry, target: Path) -> None:
        own = self.local_path(key)
        if own is not None:
            # One disk: a link costs nothing; hashing gigabytes again would.
            link_or_copy(own, target)
            if target.stat().st_size != entry.bytes:
                raise StorageError(f"{key} has {target.stat().st_size} bytes, not {entry.bytes}")
            return
        self.get_file(key, target)
        if target.stat().st_size != entry.bytes or sha256_file(target) != entry.sha256:
            raise StorageError(f"{key} does not match its manifest (size or sha256)")


def hidden_beside(path: Path) -> Path:
    """A fresh hidden name next to path (staging that a rename makes visible)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}")


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link when both are on one filesystem (instant, no space), else a copy."""
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copyfile(source, target)
