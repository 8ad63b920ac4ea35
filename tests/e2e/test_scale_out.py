"""Workers on many hosts: three worker processes, each with its own home, share only
Postgres, Redis and an S3 store (SeaweedFS). No folder is shared between them."""

import io
import os
import secrets
import shutil
import signal
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import psycopg
import pytest

from shared.storage import Storage, job_prefix
from shared.storage.s3 import S3Storage
from tests.conftest import POSTGRES_URL, postgres_available
from tests.e2e.conftest import GPT2FT, REPO, Service, free_port, job_events, wait_until
from tests.e2e.corpus import corpus_text
from tests.e2e.test_reliability import FAST, TERMINAL, parent_pid
from tests.s3server import KEY_ID, SECRET, S3Server
from tests.services import missing_service

pytestmark = pytest.mark.e2e
WORKERS = ("host-a", "host-b", "host-c")


class Fleet:
    """The API, three worker 'hosts', their Postgres database and their S3 prefix."""

    def __init__(self, service: Service, database: str, store: Storage, homes: dict) -> None:
        self.service, self.database, self.store, self.homes = service, database, store, homes
        self.http = httpx.Client(
            base_url=f"{service.url}/v1",
            headers={"Authorization": f"Bearer {service.api_key}"},
            timeout=120,
        )
        self.file_id = ""

    def create(self, epochs: int = 1, every: int | None = None) -> str:
        """A gpt2-tiny job on 120 lines: 17 steps an epoch."""
        if not self.file_id:
            response = self.http.post(
                "/files",
                files={"file": ("corpus.txt", corpus_text(20).encode())},
                data={"purpose": "fine-tune"},
            )
            assert response.status_code == 200, response.text
            self.file_id = response.json()["id"]
        hyperparameters: dict[str, Any] = {"n_epochs": epochs, "batch_size": 4, "block_size": 32}
        if every:
            hyperparameters["checkpoint_every_steps"] = every
        body = {
            "model": "gpt2-tiny",
            "training_file": self.file_id,
            "seed": 7,
            "hyperparameters": hyperparameters,
        }
        response = self.http.post("/fine_tuning/jobs", json=body)
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.http.get(f"/fine_tuning/jobs/{job_id}").json())

    def wait(self, job_id: str, statuses: set[str], timeout: float = 600) -> dict[str, Any]:
        wait_until(lambda: self.job(job_id)["status"] in statuses, timeout, f"{job_id} {statuses}")
        return self.job(job_id)

    def messages(self, job_id: str) -> list[str]:
        return [e["message"] for e in job_events(self.http, job_id) if e["type"] == "message"]

    def holder(self, job_id: str) -> str:
        """The worker 'host' whose Celery child holds the job's lease."""
        with psycopg.connect(self.database.replace("+psycopg", "")) as db:
            row = db.execute("SELECT lease_owner FROM jobs WHERE id = %s", (job_id,)).fetchone()
        assert row and row[0], f"{job_id} has no lease owner"
        supervisor = parent_pid(int(row[0].split(":")[1]))
        names = [n for n, p in self.service.processes.items() if p.pid == supervisor]
        assert names, f"supervisor {supervisor} is none of {list(self.service.processes)}"
        return names[0]

    def claimants(self, job_id: str) -> list[str]:
        """Workers whose log says they claimed job_id, in name order."""
        return [
            name
            for name in WORKERS
            if f"job {job_id}: claimed" in (self.service.logs / f"{name}.log").read_text()
        ]

    def assert_one_result(self, job: dict[str, Any]) -> None:
        """One results file, one model; the store holds only what manifests name."""
        job_id = job["id"]
        assert len(job["result_files"]) == 1, job
        files = self.http.get("/files", params={"purpose": "fine-tune-results"}).json()["data"]
        assert [f["id"] for f in files if f["filename"] == f"{job_id}_results.csv"] == (
            job["result_files"]
        )
        csv = self.http.get(f"/files/{job['result_files'][0]}/content")
        assert csv.status_code == 200 and csv.text.startswith("step,")
        assert len(csv.text.splitlines()) - 1 == job["total_steps"]
        archive = self.http.get(f"/models/{job['fine_tuned_model']}/content")
        assert archive.status_code == 200, archive.text
        with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
            names = {Path(name).name for name in tar.getnames()}
        assert {"config.json", "model.safetensors"} <= names, names
        named = set()
        for prefix in self.store.published_sets(job_prefix(job_id)) + self.store.published_sets(
            f"{job_prefix(job_id)}/checkpoints"
        ):
            manifest = self.store.read_manifest(prefix)
            assert manifest is not None
            named |= {manifest.key, *(manifest.key_of(e) for e in manifest.files)}
        results_key = f"files/{job['result_files'][0]}"
        assert results_key in named and self.store.size(results_key) is not None
        stored = set(self.store.list_keys(job_prefix(job_id))) | {results_key}
        archives = {key for key in stored if key.endswith(".tar.gz")}
        assert stored - archives == named, sorted((stored - archives) ^ named)


def fresh_database() -> str:
    reason = postgres_available()
    if reason:
        missing_service(reason)
    name = f"gpt2ft_scale_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}"


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
    s3_server: S3Server,
    models_dir: Path,
    tokenizer_dir: Path,
) -> Iterator[Fleet]:
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        missing_service("redis-server is not installed (apt-get install redis-server)")
    database = fresh_database()
    url = s3_server.url("scale")
    root = tmp_path_factory.mktemp("fleet")
    logs = REPO / "test-artifacts" / "e2e-logs" / root.name
    logs.mkdir(parents=True, exist_ok=True)
    redis_port, api_port = free_port(), free_port()
    key = "sk-gpt2ft-e2e-" + secrets.token_hex(8)
    env = {
        **os.environ,
        **s3_server.env,
        **FAST,
        "DATABASE_URL": database,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "GPT2FT_STORAGE_URL": url,
        "GPT2FT_DEV_API_KEY": key,
        "GPT2FT_TOKENIZER_DIR": str(tokenizer_dir),
        "HF_HUB_OFFLINE": "1",
        "GPT2FT_SWEEP_INTERVAL_SECONDS": "2",
        "GPT2FT_REQUEUE_AFTER_SECONDS": "5",
        "GPT2FT_METRICS_FLUSH_SECONDS": "0.5",
        "GPT2FT_MAX_ATTEMPTS": "3",
    }
    redis_command = [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1"]
    redis_command += ["--save", "", "--appendonly", "no"]
    processes: dict[str, subprocess.Popen] = {}
    homes: dict[str, Path] = {}
    for name in ("api", *WORKERS):
        # Each 'host' has its own home: scratch, cache and a copy of the base models.
        homes[name] = root / name
        shutil.copytree(models_dir, homes[name] / "models")
    service = Service(
        f"http://127.0.0.1:{api_port}", key, env, homes["api"], logs, processes, redis_command
    )
    service.start_redis()
    api_env = {**env, "GPT2FT_HOME": str(homes["api"])}
    subprocess.run([GPT2FT, "migrate"], env=api_env, check=True, capture_output=True)
    processes["api"] = subprocess.Popen(
        [GPT2FT, "api", "--port", str(api_port)],
        env=api_env,
        stdout=(logs / "api.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    for name in WORKERS:
        service.start_worker(name, GPT2FT_HOME=str(homes[name]))
    client = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    store = S3Storage(client, bucket, prefix, root / "reader", 1024**3, 64 * 1024**2)
    wait_until(lambda: httpx.get(f"{service.url}/readyz").status_code == 200, 90, "the API")
    fleet = Fleet(service, database, store, homes)
    yield fleet
    fleet.http.close()
    for name in list(service.processes):
        service.stop(name, timeout=30)
    with psycopg.connect(POSTGRES_URL.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database.rsplit("/", 1)[1]}" WITH (FORCE)')


def test_jobs_drain_across_workers_with_one_result_each(fleet: Fleet) -> None:
    jobs = [fleet.create() for _ in range(4)]
    finished = [fleet.wait(job_id, TERMINAL) for job_id in jobs]
    assert [job["status"] for job in finished] == ["succeeded"] * 4
    ran = {job_id: fleet.claimants(job_id) for job_id in jobs}
    assert all(len(names) == 1 for names in ran.values()), ran
    assert len({names[0] for names in ran.values()}) >= 2, f"one worker ran everything: {ran}"
    for job in finished:
        fleet.assert_one_result(job)
    # Nothing went through a shared folder: no host has a local store.
    assert not any((home / "storage").exists() for home in fleet.homes.values())


def test_sigkill_mid_job_resumes_on_another_worker_from_the_store(fleet: Fleet) -> None:
    job_id = fleet.create(epochs=2, every=5)
    fleet.wait(job_id, {"running"})
    checkpoints = f"/fine_tuning/jobs/{job_id}/checkpoints"
    wait_until(lambda: fleet.http.get(checkpoints).json()["data"], 300, "a checkpoint")
    victim = fleet.holder(job_id)
    fleet.service.stop(victim, signal.SIGKILL)
    at_kill = fleet.job(job_id)["steps_completed"]
    assert at_kill < fleet.job(job_id)["total_steps"], "finished before the kill: make it longer"

    job = fleet.wait(job_id, TERMINAL)
    assert job["status"] == "succeeded", job
    messages = fleet.messages(job_id)
    resumed = [m for m in messages if m.startswith("Resumed from step ")]
    assert len(resumed) == 1 and resumed[0].endswith("(attempt 2)"), messages
    assert int(resumed[0].split()[3]) >= 5
    # The worker that resumed had never seen the job: it fetched the checkpoint from S3.
    claimants = fleet.claimants(job_id)
    assert victim in claimants and len(claimants) == 2, claimants
    fleet.assert_one_result(job)
