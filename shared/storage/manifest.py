"""Manifests: a published set is its files' names, sizes and sha256, written last."""

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
# A gpt2-xl safetensors file is 6 GB: hash it in pieces, never whole in memory.
HASH_CHUNK = 4 * 1024 * 1024


def file_key(file_id: str) -> str:
    """Bytes of an uploaded (or results) file, named by its generated id."""
    return f"files/{file_id}"


def job_prefix(job_id: str) -> str:
    """Everything one job publishes."""
    return f"jobs/{job_id}"


def checkpoints_prefix(job_id: str) -> str:
    """Parent of a job's checkpoint sets."""
    return f"{job_prefix(job_id)}/checkpoints"


def checkpoint_prefix(job_id: str, step: int) -> str:
    """One checkpoint set: step-NNNNNNNN, zero-padded so names sort by step."""
    return f"{checkpoints_prefix(job_id)}/step-{step:08d}"


def model_prefix(job_id: str) -> str:
    """The final fine-tuned model of a job."""
    return f"{job_prefix(job_id)}/model"


def results_prefix(job_id: str) -> str:
    """The manifest naming a job's one results file."""
    return f"{job_prefix(job_id)}/results"


def step_of(prefix: str) -> int:
    """The step of a checkpoint set prefix (…/step-00000042 -> 42)."""
    return int(prefix.rsplit("step-", 1)[1])


def writer_token(attempt: int) -> str:
    """A folder name no other writer uses: a zombie's late uploads never touch a published set."""
    return f"a{attempt}-{secrets.token_hex(4)}"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Entry:
    """One file of a set: its path inside the set, size and content hash."""

    path: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What makes a set visible: written last, with a conditional create, under the lease."""

    prefix: str  # the set's name; the manifest lives at <prefix>/manifest.json
    root: str  # the key prefix of the files (<prefix>/<writer token>, or "files")
    files: tuple[Entry, ...]
    writer: dict[str, Any] = field(default_factory=dict)  # lease owner and attempt
    info: dict[str, Any] = field(default_factory=dict)  # step, metrics, file id

    @property
    def key(self) -> str:
        """Where the manifest itself is stored."""
        return f"{self.prefix}/{MANIFEST}"

    @property
    def total_bytes(self) -> int:
        """Bytes of the files the manifest names (not counting itself)."""
        return sum(entry.bytes for entry in self.files)

    def key_of(self, entry: Entry) -> str:
        """The object key holding entry's bytes."""
        return f"{self.root}/{entry.path}"

    def to_json(self) -> bytes:
        """The stored form (sorted keys: the same manifest always has the same bytes)."""
        body = {
            "version": 1,
            "prefix": self.prefix,
            "root": self.root,
            "files": [vars(entry) for entry in self.files],
            "writer": self.writer,
            "info": self.info,
        }
        return json.dumps(body, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Manifest":
        """Parse a stored manifest."""
        body = json.loads(data)
        return cls(
            prefix=body["prefix"],
            root=body["root"],
            files=tuple(Entry(**entry) for entry in body["files"]),
            writer=body.get("writer") or {},
            info=body.get("info") or {},
        )


def describe_folder(folder: Path) -> tuple[Entry, ...]:
    """Every file under folder (hidden ones skipped), with sizes and hashes, sorted by path."""
    found = [path.relative_to(folder) for path in sorted(folder.rglob("*")) if path.is_file()]
    return tuple(
        Entry(str(name), (folder / name).stat().st_size, sha256_file(folder / name))
        for name in found
        if not any(part.startswith(".") for part in name.parts)
    )
