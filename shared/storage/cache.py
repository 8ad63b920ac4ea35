"""A bounded local cache of fetched objects and sets: oldest use evicted first."""

import os
import shutil
import time
from pathlib import Path


def entry_bytes(path: Path) -> int:
    """Bytes of a cached file, or of every file in a cached folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


class LocalCache:
    """Entries are files or folders directly under root/<kind>/; a use refreshes their mtime."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def entry(self, kind: str, name: str) -> Path:
        """Where an entry lives (present or not); its folder exists."""
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def touch(self, path: Path) -> None:
        """Mark an entry used now (eviction removes the least recently used)."""
        now = time.time()
        os.utime(path, (now, now))

    def evict(self, keep: Path) -> list[Path]:
        """Remove the least recently used entries until the cache fits; keep survives."""
        entries = [
            (item.stat().st_mtime, item)
            for kind in (self.root.iterdir() if self.root.is_dir() else [])
            if kind.is_dir()
            for item in kind.iterdir()
            if not item.name.startswith(".")
        ]
        sizes = {item: entry_bytes(item) for _, item in entries}
        total = sum(sizes.values())
        removed = []
        for _, item in sorted(entries):
            if total <= self.max_bytes:
                break
            if item == keep:
                continue
            if item.is_dir():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)
            total -= sizes[item]
            removed.append(item)
        return removed
