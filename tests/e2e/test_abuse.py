"""Abuse against real processes: huge bodies, in-flight limits, deadlines, private files."""

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from tests.e2e.conftest import GPT2FT, Service, free_port, wait_until
from tests.e2e.corpus import corpus_text

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024
# The test APIs wait this long for an inference worker (and tell it this deadline).
TIMEOUT = 8


@dataclass
class ApiServer:
    """`gpt2ft api` processes over one home and one Redis, as behind a load balancer."""

    urls: list[str]
    pids: list[int]
    api_key: str

    @property
    def url(self) -> str:
        return self.urls[0]

    def peak_rss(self, index: int = 0) -> int:
        """The process's high-water resident set (VmHWM), in bytes."""
        for line in Path(f"/proc/{self.pids[index]}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/<pid>/status")


@pytest.fixture(scope="module")
def api_server(service: Service) -> Iterator[ApiServer]:
    """Two more API processes with small inference limits; no worker answers them."""
    service.stop("worker")
    env = {
        **service.env,
        "GPT2FT_COMPLETION_TIMEOUT_SECONDS": str(TIMEOUT),
        "GPT2FT_MAX_INFLIGHT_INFERENCE_PER_OWNER": "2",
    }
    ports = [free_port(), free_port()]
    for index, port in enumerate(ports):
        service.processes[f"api-{index}"] = subprocess.Popen(
            [GPT2FT, "api", "--port", str(port)],
            env=env,
            stdout=(service.logs / f"api-{index}.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    for url in urls:
        wait_until(lambda u=url: httpx.get(f"{u}/readyz").status_code == 200, 60, url)
    pids = [service.processes[f"api-{index}"].pid for index in range(len(ports))]
    yield ApiServer(urls, pids, service.api_key)


def post_raw(
    url: str, path: str, key: str | None, body_bytes: int, chunked: bool = False
) -> tuple[int | None, int]:
    """POST body_bytes of JSON-ish filler over a raw socket; (status or None, bytes sent).

    The server may answer and close before the body is sent: that is the point, so a
    broken pipe while sending is not an error; the status line is read either way.
    """
    host, port = url.removeprefix("http://").split(":")
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
    if key is not None:
        head.append(f"Authorization: Bearer {key}")
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {body_bytes}")
    sock = socket.create_connection((host, int(port)), timeout=60)
    sent = 0
    answer = b""
    try:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sock.setblocking(False)
        chunk = b'{"model": "gpt2-tiny", "prompt": "' + b"a" * (MiB - 40)
        while sent < body_bytes:
            try:
                answer += sock.recv(65536)
                if answer:
                    break  # answered before the whole body arrived
            except BlockingIOError:
                pass
            piece = chunk[: min(len(chunk), body_bytes - sent)]
            data = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
            try:
                sock.setblocking(True)
                sock.sendall(data)
                sock.setblocking(False)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        if chunked and sent >= body_bytes:
            sock.setblocking(True)
            sock.sendall(b"0\r\n\r\n")
        sock.setblocking(True)
        sock.settimeout(60)
        while b"\r\n" not in answer:
            try:
                more = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not more:
                break
            answer += more
    finally:
        sock.close()
    if not answer.startswith(b"HTTP/1.1 "):
        return None, sent
    return int(answer.split(b" ", 2)[1]), sent


def test_wrong_key_is_refused_before_a_huge_body_is_read(api_server: ApiServer) -> None:
    status, sent = post_raw(api_server.url, "/v1/completions", "sk-wrong", 300 * MiB)
    assert status == 401
    # The answer came while the client was still sending: the body was never read.
    assert sent < 300 * MiB


def test_oversized_bodies_in_parallel_leave_the_api_memory_flat(api_server: ApiServer) -> None:
    """300 MiB bodies, 6 at once, wrong key / no key / valid key, sized and chunked."""
    before = api_server.peak_rss()
    results: list[tuple[int | None, int]] = []
    cases = [
        ("sk-wrong", False),
        ("sk-wrong", True),
        (None, False),
        (None, True),
        (api_server.api_key, False),
        (api_server.api_key, True),
    ]

    def one(key: str | None, chunked: bool) -> None:
        path = "/v1/completions"
        results.append(post_raw(api_server.url, path, key, 300 * MiB, chunked))

    threads = [threading.Thread(target=one, args=case) for case in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    grown = api_server.peak_rss() - before
    print(f"peak RSS {before / MiB:.0f} MiB -> +{grown / MiB:.1f} MiB")  # bench figure, -s
    assert grown < 50 * MiB, f"the API's peak RSS grew by {grown / MiB:.0f} MiB"
    statuses = sorted(status for status, _ in results if status is not None)
    assert statuses == [401, 401, 401, 401, 413, 413], results
    assert httpx.get(f"{api_server.url}/readyz").status_code == 200


def test_body_over_the_cap_is_413_naming_the_setting(api_server: ApiServer) -> None:
    headers = {"Authorization": f"Bearer {api_server.api_key}"}
    body = {"model": "gpt2-tiny", "prompt": "x" * (MiB + 10)}
    response = httpx.post(f"{api_server.url}/v1/completions", json=body, headers=headers)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large"
    assert "GPT2FT_MAX_REQUEST_BYTES" in error["message"]
    # Uploads keep their own (streamed) limit: a 2 MiB file is fine.
    text = b'{"text": "%s"}\n' % (b"y" * 1000)
    files = {"file": ("big.jsonl", text * 2100)}
    upload = httpx.post(
        f"{api_server.url}/v1/files", headers=headers, files=files, data={"purpose": "fine-tune"}
    )
    assert upload.status_code == 200, upload.text


def complete(url: str, key: str, body: dict[str, object], out: list[httpx.Response]) -> None:
    """POST /v1/completions; the response is appended to out (for threads)."""
    headers = {"Authorization": f"Bearer {key}"}
    out.append(httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=60))


def test_inflight_inference_limit_holds_across_api_processes(
    api_server: ApiServer, service: Service
) -> None:
    """Limit 2 per owner: two waiting requests on two processes; a third on either is 429."""
    slots = redis.Redis.from_url(service.env["REDIS_URL"])
    body = {"model": "gpt2-tiny", "prompt": "hi", "max_tokens": 1}
    waiting: list[httpx.Response] = []
    threads = [
        threading.Thread(target=complete, args=(url, api_server.api_key, body, waiting))
        for url in api_server.urls
    ]
    for thread in threads:
        thread.start()
    wait_until(
        lambda: slots.zcard("gpt2ft:inflight_requests:dev") == 2, 10, "two requests in flight"
    )
    for url in api_server.urls:
        refused: list[httpx.Response] = []
        complete(url, api_server.api_key, body, refused)
        assert refused[0].status_code == 429, refused[0].text
        error = refused[0].json()["error"]
        assert error["code"] == "too_many_inflight_requests" and refused[0].headers["Retry-After"]
    for thread in threads:
        thread.join()
    # No worker runs: both waited their timeout and gave their slots back.
    assert [r.status_code for r in waiting] == [503, 503]
    assert slots.zcard("gpt2ft:inflight_requests:dev") == 0


@pytest.fixture
def worker(service: Service) -> Iterator[None]:
    """A worker for this test only (the other tests here want requests left waiting)."""
    service.start_worker()
    try:
        yield
    finally:
        service.stop("worker")


def test_generation_stops_at_the_deadline_and_frees_the_worker(
    api_server: ApiServer, service: Service, worker: None
) -> None:
    key = api_server.api_key
    worker_log = service.logs / "worker.log"
    logged_before = worker_log.stat().st_size  # the log file outlives earlier runs
    light = {"model": "gpt2-tiny", "prompt": "zebra quokka 7731", "max_tokens": 8}
    answers: list[httpx.Response] = []
    wait_until(
        lambda: complete(api_server.url, key, light, answers) or answers[-1].status_code == 200,
        120,
        "the inference worker",
    )
    # 32 prompts x 250 tokens (8,000, within the 8,192 cap): about 15 s on an idle 2-core CPU,
    # twice the API's deadline (16 prompts took 7.5 s: under the deadline on an idle machine).
    heavy = {"model": "gpt2-tiny", "prompt": ["Once"] * 32, "max_tokens": 250}
    started = time.monotonic()
    complete(api_server.url, key, heavy, answers)
    assert answers[-1].status_code == 503, answers[-1].text
    assert time.monotonic() - started < TIMEOUT + 5
    # Before the deadline reached the worker, it kept generating and this waited behind it.
    complete(api_server.url, key, light, answers)
    assert answers[-1].status_code == 200, answers[-1].text
    text = answers[-1].json()["choices"][0]["text"]
    # Prompts and generations are not logged at INFO (the service's level).
    with worker_log.open("rb") as handle:
        handle.seek(logged_before)
        log = handle.read().decode(errors="replace")
    assert "gpt2ft.generate" in log  # this run's lines are there
    assert "zebra quokka 7731" not in log
    assert len(text) < 6 or text not in log


def test_what_the_service_stores_is_private_to_its_user(
    api_server: ApiServer, service: Service, worker: None
) -> None:
    """Uploads, the database, checkpoints (training_state.pt), the model and results: 0600/0700."""
    http = httpx.Client(
        base_url=f"{api_server.url}/v1", headers={"Authorization": f"Bearer {service.api_key}"}
    )
    files = {"file": ("jokes.txt", corpus_text(10).encode())}
    upload = http.post("/files", files=files, data={"purpose": "fine-tune"})
    assert upload.status_code == 200, upload.text
    body = {
        "model": "gpt2-tiny",
        "training_file": upload.json()["id"],
        "hyperparameters": {"n_epochs": 1, "batch_size": 4, "block_size": 32},
    }
    job = http.post("/fine_tuning/jobs", json=body).json()
    wait_until(
        lambda: http.get(f"/fine_tuning/jobs/{job['id']}").json()["status"] == "succeeded",
        240,
        "the job to succeed",
    )
    stored = [p for p in service.home.rglob("*") if not p.is_symlink()]
    names = {p.name for p in stored}
    assert {"gpt2ft.db", "training_state.pt", upload.json()["id"]} <= names
    shared = [f"{p} {p.stat().st_mode & 0o777:o}" for p in stored if p.stat().st_mode & 0o077]
    assert not shared, "readable by other users: " + ", ".join(shared)
