"""Real processes: a private redis-server, `gpt2ft api` and `gpt2ft worker`, SQLite home."""

import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.services import missing_service

REPO = Path(__file__).resolve().parents[2]
GPT2FT = str(Path(sys.executable).with_name("gpt2ft"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# What a process that is still starting (or restarting) raises: worth waiting through.
NOT_UP_YET: tuple[type[BaseException], ...] = (
    httpx.TransportError,
    ConnectionError,
    redis.exceptions.ConnectionError,
)


def wait_until(
    check: Callable[[], object],
    timeout: float,
    what: str,
    retry_on: tuple[type[BaseException], ...] = NOT_UP_YET,
) -> None:
    """Poll check() until it is true; an error other than retry_on fails at once."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
            last = None
        except retry_on as exc:
            last = exc
        time.sleep(0.2)
    error = f" (last error: {last!r})" if last is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{error}")


@dataclass
class Service:
    """A running gpt2ft: URL, key, environment, home and log files."""

    url: str
    api_key: str
    env: dict[str, str]
    home: Path
    logs: Path
    processes: dict[str, subprocess.Popen]
    redis_command: list[str] = field(default_factory=list)

    def start_worker(self, name: str = "worker", **env: str) -> subprocess.Popen:
        """`gpt2ft worker` in its own session; env overrides this worker's settings."""
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [GPT2FT, "worker"],
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = proc
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        proc = self.processes.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def start_redis(self) -> None:
        """(Re)start the private redis-server on its port, e.g. after stop("redis")."""
        port = int(self.env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
        self.processes["redis"] = subprocess.Popen(
            self.redis_command,
            stdout=(self.logs / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(lambda: redis.Redis(port=port).ping(), 30, "redis-server")


def api_client(service: Service) -> httpx.Client:
    """Plain HTTP on the service's /v1 with its key."""
    headers = {"Authorization": f"Bearer {service.api_key}"}
    return httpx.Client(base_url=f"{service.url}/v1", headers=headers, timeout=60)


def download_model(service: Service, model_id: str, into: Path) -> Path:
    """GET /v1/models/{id}/content unpacked into into; the model's folder."""
    response = httpx.get(
        f"{service.url}/v1/models/{model_id}/content",
        headers={"Authorization": f"Bearer {service.api_key}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        tar.extractall(into, filter="data")
    (folder,) = list(into.iterdir())
    return folder


def upload_text(api: httpx.Client, name: str, text: str) -> str:
    """Upload text as a fine-tune file; its id."""
    response = api.post(
        "/files", files={"file": (name, text.encode())}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def job_events(api: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """A job's events oldest first: the API's newest-first list (by write order) reversed.

    Never re-sorted by created_at: it is whole seconds, and two epochs' evaluations of a tiny
    job can share one (a sort with the random ids as tie-break once made epoch 1's valid_loss
    the "final" one).
    """
    response = api.get(f"/fine_tuning/jobs/{job_id}/events", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return list(reversed(response.json()["data"]))


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, tokenizer_dir: Path
) -> Iterator[Service]:
    """The whole service on loopback, as `make run` starts it."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        missing_service("redis-server is not installed (apt-get install redis-server)")
    home = tmp_path_factory.mktemp("home")
    logs = REPO / "test-artifacts" / "e2e-logs" / home.name
    logs.mkdir(parents=True, exist_ok=True)
    redis_port, api_port = free_port(), free_port()
    key = "sk-gpt2ft-e2e-" + secrets.token_hex(8)
    env = {
        **os.environ,
        "GPT2FT_HOME": str(home),
        "GPT2FT_MODELS_DIR": str(models_dir),
        "GPT2FT_TOKENIZER_DIR": str(tokenizer_dir),
        "GPT2FT_DEV_API_KEY": key,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "HF_HUB_OFFLINE": "1",
        "GPT2FT_SWEEP_INTERVAL_SECONDS": "2",
        "GPT2FT_REQUEUE_AFTER_SECONDS": "5",
        "GPT2FT_LEASE_SECONDS": "20",
        "GPT2FT_HEARTBEAT_SECONDS": "2",
        "GPT2FT_METRICS_FLUSH_SECONDS": "0.5",
    }
    env.pop("DATABASE_URL", None)
    processes: dict[str, subprocess.Popen] = {}
    redis_command = [
        redis_server,
        "--port",
        str(redis_port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    processes["redis"] = subprocess.Popen(
        redis_command,
        stdout=(logs / "redis.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    subprocess.run([GPT2FT, "migrate"], env=env, check=True, capture_output=True)
    processes["api"] = subprocess.Popen(
        [GPT2FT, "api", "--port", str(api_port)],
        env=env,
        stdout=(logs / "api.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    svc = Service(f"http://127.0.0.1:{api_port}", key, env, home, logs, processes, redis_command)
    svc.start_worker()
    wait_until(lambda: httpx.get(f"{svc.url}/readyz").status_code == 200, 60, "the API")
    yield svc
    for name in list(svc.processes):
        svc.stop(name, timeout=30)


@pytest.fixture
def client(service: Service):
    """The official openai SDK pointed at the service."""
    from openai import OpenAI

    return OpenAI(base_url=f"{service.url}/v1", api_key=service.api_key, max_retries=0, timeout=180)
