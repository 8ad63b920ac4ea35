"""The local-folder backend: one machine, or a folder every host mounts."""

import os
import shutil
from pathlib import Path
from typing import IO

from shared.storage.base import Storage, StorageError, hidden_beside, link_or_copy


class LocalStorage(Storage):
    """Keys are paths under root; writes land under a hidden name and are renamed in."""

    def __init__(self, root: Path, scratch: Path, cache_max_bytes: int) -> None:
        super().__init__(scratch, cache_max_bytes)
        self.root = root

    def path(self, key: str) -> Path:
        """The file for key; refuses keys that would leave the root."""
        parts = key.split("/")
        if not key or any(part in ("", ".", "..") for part in parts):
            raise StorageError(f"invalid storage key {key!r}")
        return self.root.joinpath(*parts)

    def put_file(self, key: str, path: Path, move: bool = False) -> None:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = hidden_beside(final)
        try:
            if move:
                try:
                    path.rename(staging)
                except OSError:  # another filesystem
                    shutil.copyfile(path, staging)
            else:
                link_or_copy(path, staging)
            staging.replace(final)
        finally:
            staging.unlink(missing_ok=True)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = hidden_beside(final)
        staging.write_bytes(data)
        try:
            # link() fails if final exists: an atomic create of a complete file.
            os.link(staging, final)
            return True
        except FileExistsError:
            return False
        finally:
            staging.unlink(missing_ok=True)

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None

    def get_file(self, key: str, dest: Path) -> None:
        try:
            shutil.copyfile(self.path(key), dest)
        except FileNotFoundError:
            raise StorageError(f"{key} is missing from storage") from None

    def open_reader(self, key: str) -> IO[bytes]:
        try:
            return self.path(key).open("rb")
        except FileNotFoundError:
            raise StorageError(f"{key} is missing from storage") from None

    def size(self, key: str) -> int | None:
        path = self.path(key)
        return path.stat().st_size if path.is_file() else None

    def list_keys(self, prefix: str) -> list[str]:
        folder = self.path(prefix)
        if not folder.is_dir():
            return []
        return sorted(
            "/".join(path.relative_to(self.root).parts)
            for path in folder.rglob("*")
            if path.is_file() and not path.name.startswith(".")
        )

    def delete(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        # Empty folders left behind would read as sets to a person looking at the disk.
        for parent in path.parents:
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def delete_prefix(self, prefix: str) -> int:
        count = len(self.list_keys(prefix))
        shutil.rmtree(self.path(prefix), ignore_errors=True)
        self.delete(f"{prefix}/.gone")  # prunes the parents the removal left empty
        return count

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    def describe(self) -> str:
        return str(self.root)
