"""The storage interface on both backends: a local folder and a real S3 server (SeaweedFS)."""

import hashlib
import os
import threading
from pathlib import Path

import pytest

from shared.settings import Settings
from shared.storage import LocalStorage, Storage, StorageError, open_storage
from shared.storage.manifest import MANIFEST
from tests.s3server import S3Server

MiB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """A fresh, empty store of each kind, with a 5 MiB multipart size and a 1 MiB cache."""
    limits = {"cache_max_bytes": MiB, "s3_part_bytes": 5 * MiB}
    if request.param == "local":
        settings = Settings(home=tmp_path, **limits)  # type: ignore[arg-type]
    else:
        server: S3Server = request.getfixturevalue("s3_env")
        settings = Settings(home=tmp_path, storage_url=server.url("unit"), **limits)  # type: ignore[arg-type]
    return open_storage(settings)


def folder_with(path: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def test_objects_round_trip(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"abc" * 1000)
    storage.put_file("files/file-1", source)
    assert source.is_file()  # copied, not moved
    storage.put_file("files/file-2", source, move=True)
    assert not source.exists()
    assert storage.read_bytes("files/file-1") == b"abc" * 1000
    assert storage.size("files/file-2") == 3000
    assert b"".join(storage.iter_bytes("files/file-2", chunk=7)) == b"abc" * 1000
    storage.get_file("files/file-1", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == b"abc" * 1000
    assert storage.fetch_file("files/file-1").read_bytes() == b"abc" * 1000
    assert storage.list_keys("files") == ["files/file-1", "files/file-2"]
    assert storage.list_keys("fil") == []  # a prefix is a folder, not a string prefix

    storage.delete("files/file-1")
    storage.delete("files/never-there")
    assert storage.read_bytes("files/file-1") is None and storage.size("files/file-1") is None
    with pytest.raises(StorageError, match="missing"):
        storage.get_file("files/file-1", tmp_path / "gone.bin")
    with pytest.raises(StorageError, match="missing"):
        storage.open_reader("files/file-1")
    assert storage.delete_prefix("files") == 1 and storage.list_keys("files") == []
    for bad in ("../etc/passwd", "files/../../x", "/abs"):
        with pytest.raises(StorageError, match="invalid storage key"):
            storage.read_bytes(bad)


def test_create_exclusive_has_one_winner(storage: Storage) -> None:
    assert storage.create_exclusive("jobs/j/m/manifest.json", b"first") is True
    assert storage.create_exclusive("jobs/j/m/manifest.json", b"second") is False
    assert storage.read_bytes("jobs/j/m/manifest.json") == b"first"

    winners: list[int] = []
    barrier = threading.Barrier(8)

    def race(number: int) -> None:
        barrier.wait()
        if storage.create_exclusive("jobs/j/race/manifest.json", f"writer {number}".encode()):
            winners.append(number)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1, winners
    assert storage.read_bytes("jobs/j/race/manifest.json") == f"writer {winners[0]}".encode()


def test_large_files_go_up_in_parts(storage: Storage, tmp_path: Path) -> None:
    data = os.urandom(12 * MiB + 5)
    source = tmp_path / "big.safetensors"
    source.write_bytes(data)
    storage.put_file("jobs/j/big", source)
    back = tmp_path / "back"
    storage.get_file("jobs/j/big", back)
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()
    if not isinstance(storage, LocalStorage):
        head = storage.client.head_object(Bucket=storage.bucket, Key=storage._key("jobs/j/big"))  # type: ignore[attr-defined]
        # A multipart upload's ETag ends in -<parts>: 12 MiB in 5 MiB parts is 3.
        assert head["ETag"].strip('"').endswith("-3"), head["ETag"]


def test_a_set_is_invisible_until_its_manifest(storage: Storage, tmp_path: Path) -> None:
    files = {"config.json": b"{}", "model.safetensors": b"w" * 5000, "sub/tok.json": b"[]"}
    folder = folder_with(tmp_path / "ckpt", files)
    prefix = "jobs/j/checkpoints/step-00000005"
    staged = storage.stage_set(prefix, folder, "a1-aaaa", {"attempt": 1}, {"step": 5})
    assert storage.read_manifest(prefix) is None
    assert storage.published_sets("jobs/j/checkpoints") == []
    assert len(storage.list_keys(prefix)) == 3  # uploaded, just not visible

    visible = storage.commit_manifest(staged)
    assert visible == staged and storage.read_manifest(prefix) == staged
    assert storage.published_sets("jobs/j/checkpoints") == [prefix]
    assert {e.path: e.sha256 for e in visible.files} == {
        name: hashlib.sha256(data).hexdigest() for name, data in files.items()
    }
    # A second writer of the same set loses: the first manifest stays the visible one.
    other = storage.stage_set(prefix, folder, "a2-bbbb", {"attempt": 2}, {"step": 5})
    assert storage.commit_manifest(other) == staged
    storage.discard(other)
    assert storage.list_keys(prefix) == sorted(
        [f"{prefix}/{MANIFEST}", *(staged.key_of(e) for e in staged.files)]
    )
    fetched = storage.materialize(staged, tmp_path / "restored" / "step-00000005")
    assert {p.name: p.read_bytes() for p in fetched.rglob("*") if p.is_file()} == {
        Path(name).name: data for name, data in files.items()
    }


def test_a_changed_object_fails_its_check(storage: Storage, tmp_path: Path) -> None:
    folder = folder_with(tmp_path / "model", {"model.safetensors": b"w" * 100})
    manifest = storage.commit_manifest(storage.stage_set("jobs/j/model", folder, "a1-aaaa", {}, {}))
    (tmp_path / "evil").write_bytes(b"x" * 101)
    storage.put_file(manifest.key_of(manifest.files[0]), tmp_path / "evil")
    with pytest.raises(StorageError, match="model.safetensors"):
        storage.materialize(manifest, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()


def test_stray_uploads_are_swept_and_sets_deleted_manifest_first(
    storage: Storage, tmp_path: Path
) -> None:
    folder = folder_with(tmp_path / "f", {"a.bin": b"a", "b.bin": b"b"})
    kept = storage.commit_manifest(storage.stage_set("jobs/j/model", folder, "a1-k", {}, {}))
    storage.stage_set("jobs/j/model", folder, "a2-stray", {}, {})  # never published
    storage.stage_set("jobs/j/checkpoints/step-00000001", folder, "a1-s", {}, {})
    assert storage.remove_unpublished("jobs/j") == 4
    assert storage.list_keys("jobs/j") == sorted([kept.key, *(kept.key_of(e) for e in kept.files)])
    storage.delete_set("jobs/j/model")
    assert storage.read_manifest("jobs/j/model") is None and storage.list_keys("jobs/j") == []


def test_fetched_sets_stay_within_the_cache_bound(storage: Storage, tmp_path: Path) -> None:
    prefixes = []
    for number in range(3):
        folder = folder_with(tmp_path / f"m{number}", {"w.bin": bytes([number]) * 400_000})
        prefix = f"jobs/j{number}/model"
        storage.commit_manifest(storage.stage_set(prefix, folder, "a1-x", {}, {}))
        prefixes.append(prefix)
    fetched = [storage.fetch_set(prefix) for prefix in prefixes]
    assert [(path / "w.bin").read_bytes()[:1] for path in fetched[-1:]] == [b"\x02"]
    if isinstance(storage, LocalStorage):
        # One disk: the store's own folders, nothing copied.
        assert all(path.is_relative_to(storage.root) for path in fetched)
        return
    cached = sum(p.stat().st_size for p in storage.cache.root.rglob("*") if p.is_file())
    assert cached <= MiB  # 3 x 400 kB: the least recently used was evicted
    assert not fetched[0].exists() and fetched[2].exists()
    assert storage.fetch_set(prefixes[0]) == fetched[0]  # fetched again on demand
    with pytest.raises(StorageError, match="not published"):
        storage.fetch_set("jobs/nope/model")
