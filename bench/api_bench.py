"""The API figures of `make bench` (issue #8): job reads against a trivial FastAPI route,
/healthz while completions wait, job pickup, and a second job's tokenization.

One service for all of them, as `make run` starts it: a private redis-server, `gpt2ft api` and
`gpt2ft worker` on free ports, a SQLite home in a temporary folder, gpt2-tiny built there.
`python -m bench.api_bench [--quick]` prints the figures; bench/run.py calls api_figures().
"""

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO, corpus, tiny_models_dir

GPT2FT = str(Path(sys.executable).with_name("gpt2ft"))
CONNECTIONS = 50  # the issue's load: 50 connections from wrk on loopback
WAITING_COMPLETIONS = 45
# A trivial FastAPI JSON route, served by `gpt2ft api`'s own uvicorn settings (cli.main.serve).
TRIVIAL_APP = "bench.trivial_app:create_app"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    """Poll check() (connection errors count as not yet) until true, else TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError, ConnectionError):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


@dataclass
class BenchService:
    """A running gpt2ft on loopback: URL, key, environment and processes."""

    root: Path
    url: str
    key: str
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, command: list[str]) -> None:
        log = (self.root / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop_all(self) -> None:
        for proc in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.processes.clear()

    def client(self, timeout: float = 60) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.Client(base_url=f"{self.url}/v1", headers=headers, timeout=timeout)

    def job_stats(self, job_id: str) -> dict[str, Any]:
        """The job row's stats (the worker's figures), read from the SQLite home."""
        with contextlib.closing(sqlite3.connect(self.root / "home" / "gpt2ft.db")) as db:
            row = db.execute("SELECT stats FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else {}


@contextlib.contextmanager
def bench_service(root: Path) -> Iterator[BenchService]:
    """redis-server, `gpt2ft api` and `gpt2ft worker` on free ports; stopped on exit."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    models = tiny_models_dir(root / "models")
    redis_port, api_port = free_port(), free_port()
    key = "sk-gpt2ft-bench-" + secrets.token_hex(8)
    env = {
        **os.environ,
        "GPT2FT_HOME": str(root / "home"),
        "GPT2FT_MODELS_DIR": str(models),
        "GPT2FT_TOKENIZER_DIR": str(REPO / "var" / "tokenizer" / "gpt2"),
        "GPT2FT_DEV_API_KEY": key,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "HF_HUB_OFFLINE": "1",
        # 45 completions from one key must all wait, not be refused by the per-owner cap.
        "GPT2FT_MAX_INFLIGHT_INFERENCE_PER_OWNER": str(WAITING_COMPLETIONS + 5),
    }
    env.pop("DATABASE_URL", None)
    service = BenchService(root, f"http://127.0.0.1:{api_port}", key, env)
    try:
        service.start(
            "redis",
            [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no"],
        )
        subprocess.run([GPT2FT, "migrate"], env=env, check=True, capture_output=True)
        service.start("api", [GPT2FT, "api", "--port", str(api_port)])
        service.start("worker", [GPT2FT, "worker"])
        wait_for(lambda: httpx.get(f"{service.url}/readyz").status_code == 200, 90, "the API")
        wait_for(lambda: _workers_ready(service), 120, "the worker's training and inference")
        yield service
    finally:
        service.stop_all()


def _workers_ready(service: BenchService) -> bool:
    queues = {q for w in httpx.get(f"{service.url}/readyz").json()["workers"] for q in w["queues"]}
    return len(queues) >= 2


def upload(api: httpx.Client, name: str, records: list[dict[str, str]]) -> str:
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    response = api.post("/files", files={"file": (name, body)}, data={"purpose": "fine-tune"})
    response.raise_for_status()
    return str(response.json()["id"])


def create_job(api: httpx.Client, file_id: str, **extra: Any) -> str:
    body = {"model": "gpt2-tiny", "training_file": file_id, **extra}
    body.setdefault("hyperparameters", {"n_epochs": 1, "batch_size": 8})
    response = api.post("/fine_tuning/jobs", json=body)
    response.raise_for_status()
    return str(response.json()["id"])


def wait_status(api: httpx.Client, job_id: str, wanted: set[str], timeout: float) -> str:
    """Poll the job every 10 ms until its status is one of wanted; the status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(api.get(f"/fine_tuning/jobs/{job_id}").json()["status"])
        if status in wanted:
            return status
        time.sleep(0.01)
    raise TimeoutError(f"job {job_id} not in {wanted} after {timeout:g}s")


FINISHED = {"succeeded", "failed", "cancelled"}
IDLE_SECONDS = 2.0


def run_until_running(api: httpx.Client, file_id: str) -> tuple[str, float]:
    """Create a job, time create -> running, then cancel it and wait until the worker is idle."""
    start = time.perf_counter()
    job_id = create_job(api, file_id)
    status = wait_status(api, job_id, {"running"} | FINISHED, 120)
    elapsed = time.perf_counter() - start
    if status != "running":
        raise RuntimeError(f"job {job_id} ended {status} before running")
    api.post(f"/fine_tuning/jobs/{job_id}/cancel").raise_for_status()
    wait_status(api, job_id, FINISHED, 120)
    # The worker records the cancel, then cleans the job's scratch up and frees its memory:
    # the next job is measured against an idle worker, as the figure is defined.
    time.sleep(IDLE_SECONDS)
    return job_id, elapsed


# --- pickup_s and retokenize_ratio --------------------------------------------------------


def pickup_figures(service: BenchService, repeats: int) -> dict[str, Any]:
    """create -> running with an idle worker (file validation included), median of repeats."""
    with service.client() as api:
        file_id = upload(api, "pickup.jsonl", [{"text": t} for t in corpus(20_000)])
        times = [run_until_running(api, file_id)[1] for _ in range(repeats)]
    # The first job after the worker started also loads the model's tokenizer (then cached).
    return {"pickup_s": statistics.median(times), "pickup_first_s": times[0], "pickup_all_s": times}


def retokenize_figures(service: BenchService) -> dict[str, Any]:
    """Tokenization seconds of a second job on the same file over the first's (worker stats)."""
    rows = [{"text": t} for t in corpus(400_000)] * 4
    with service.client() as api:
        file_id = upload(api, "retokenize.jsonl", rows)
        first, _ = run_until_running(api, file_id)
        second, _ = run_until_running(api, file_id)
    a, b = service.job_stats(first), service.job_stats(second)
    first_s, second_s = a.get("tokenize_seconds"), b.get("tokenize_seconds")
    if first_s is None or second_s is None:
        raise RuntimeError("the worker did not record tokenize_seconds in the job's stats")
    return {
        "retokenize_ratio": second_s / first_s if first_s else None,
        "tokenize_first_s": first_s,
        "tokenize_second_s": second_s,
        "tokenize_second_cached": b.get("tokenize_cached"),
    }


# --- read_ratio, read_p99_ms --------------------------------------------------------------


def load_tool() -> str:
    """wrk, else hey (installed from Debian when missing and we may), else the Python fallback."""
    for tool in ("wrk", "hey"):
        if shutil.which(tool):
            return tool
    if os.geteuid() == 0 and shutil.which("apt-get"):
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for tool in ("wrk", "hey"):
            install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", tool]
            if subprocess.run(install, env=apt_env, check=False, **quiet).returncode != 0:
                subprocess.run(["apt-get", "update", "-q"], check=False, **quiet)
                subprocess.run(install, env=apt_env, check=False, **quiet)
            if shutil.which(tool):
                return tool
    return "python"


def _wrk_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def hammer(tool: str, url: str, headers: dict[str, str], seconds: float) -> tuple[float, float]:
    """(requests/s, p99 ms) of GETs on url from CONNECTIONS connections for seconds."""
    if tool == "wrk":
        command = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency", url]
        for name, value in headers.items():
            command += ["-H", f"{name}: {value}"]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        if re.search(r"Non-2xx or 3xx responses: \d+", out):
            raise RuntimeError(f"non-2xx answers from {url}:\n{out}")
        rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))  # type: ignore[union-attr]
        p99 = re.search(r"^\s*99%\s+(\S+)", out, re.MULTILINE).group(1)  # type: ignore[union-attr]
        return rps, _wrk_ms(p99)
    if tool == "hey":
        command = ["hey", "-z", f"{seconds:g}s", "-c", str(CONNECTIONS)]
        for name, value in headers.items():
            command += ["-H", f"{name}: {value}"]
        out = subprocess.run(command + [url], capture_output=True, text=True, check=True).stdout
        rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))  # type: ignore[union-attr]
        p99 = float(re.search(r"99%% in ([\d.]+) secs", out).group(1))  # type: ignore[union-attr]
        return rps, p99 * 1000
    return asyncio.run(_python_hammer(url, headers, seconds))


async def _python_hammer(url: str, headers: dict[str, str], seconds: float) -> tuple[float, float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=CONNECTIONS)
    async with httpx.AsyncClient(headers=headers, limits=limits) as client:
        stop = time.perf_counter() + seconds

        async def one_connection() -> None:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                (await client.get(url)).raise_for_status()
                latencies.append((time.perf_counter() - start) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(one_connection() for _ in range(CONNECTIONS)))
        return len(latencies) / (time.perf_counter() - began), percentile(latencies, 0.99)


@contextlib.contextmanager
def trivial_server(service: BenchService) -> Iterator[str]:
    """The trivial app on a free port, started exactly as `gpt2ft api` starts ours."""
    port = free_port()
    command = [sys.executable, "-c", f"from cli.main import serve; serve({TRIVIAL_APP!r}, {port})"]
    log = (service.root / "trivial.log").open("ab")
    proc = subprocess.Popen(
        command, env=service.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}/ping"
    try:
        wait_for(lambda: httpx.get(url).status_code == 200, 60, "the trivial app")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def read_figures(service: BenchService, rounds: int, seconds: float) -> dict[str, Any]:
    """Job reads over the trivial route, alternating rounds, worker idle (its job finished)."""
    tool = load_tool()
    with service.client() as api:
        file_id = upload(api, "read.jsonl", [{"text": t} for t in corpus(4_000)])
        job_id, _ = run_until_running(api, file_id)
    job_url = f"{service.url}/v1/fine_tuning/jobs/{job_id}"
    auth = {"Authorization": f"Bearer {service.key}"}
    ours: list[tuple[float, float]] = []
    trivial: list[tuple[float, float]] = []
    with trivial_server(service) as trivial_url:
        hammer(tool, trivial_url, {}, 1)  # warm both servers (imports, first connections)
        hammer(tool, job_url, auth, 1)
        for _ in range(rounds):
            trivial.append(hammer(tool, trivial_url, {}, seconds))
            ours.append(hammer(tool, job_url, auth, seconds))
    read_rps = statistics.median(r for r, _ in ours)
    trivial_rps = statistics.median(r for r, _ in trivial)
    return {
        "read_ratio": read_rps / trivial_rps,
        "read_p99_ms": statistics.median(p for _, p in ours),
        "read_rps": read_rps,
        "trivial_rps": trivial_rps,
        "trivial_p99_ms": statistics.median(p for _, p in trivial),
        "load_tool": tool,
    }


# --- healthz_p99_ms -----------------------------------------------------------------------


def healthz_figures(service: BenchService, samples: int) -> dict[str, Any]:
    """/healthz latency while WAITING_COMPLETIONS completions wait on a busy inference worker."""
    return asyncio.run(_healthz_under_load(service, samples))


async def _healthz_under_load(service: BenchService, samples: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {service.key}"}
    body = {"model": "gpt2-tiny", "prompt": "The service", "max_tokens": 256, "seed": 1}
    limits = httpx.Limits(max_connections=WAITING_COMPLETIONS + 5)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=300) as client:
        url = f"{service.url}/v1/completions"
        waiting = [
            asyncio.create_task(client.post(url, json=body)) for _ in range(WAITING_COMPLETIONS)
        ]
        await asyncio.sleep(1.0)  # every request sent and waiting on the worker
        latencies: list[float] = []
        async with httpx.AsyncClient() as probe:
            for _ in range(samples):
                start = time.perf_counter()
                (await probe.get(f"{service.url}/healthz")).raise_for_status()
                latencies.append((time.perf_counter() - start) * 1000)
                await asyncio.sleep(0.01)
        still_waiting = sum(not task.done() for task in waiting)
        answered = await asyncio.gather(*waiting, return_exceptions=True)
    ok = sum(isinstance(r, httpx.Response) and r.status_code == 200 for r in answered)
    return {
        "healthz_p99_ms": percentile(latencies, 0.99),
        "healthz_max_ms": max(latencies),
        "completions_waiting_at_end": still_waiting,
        "completions_ok": ok,
    }


# --- all together -------------------------------------------------------------------------

PARTS: dict[str, Callable[[BenchService, bool], dict[str, Any]]] = {
    "pickup": lambda s, quick: pickup_figures(s, 3),
    "retokenize": lambda s, quick: retokenize_figures(s),
    "read": lambda s, quick: read_figures(s, 1 if quick else 2, 5 if quick else 10),
    "healthz": lambda s, quick: healthz_figures(s, 100 if quick else 300),
}
KEYS = ("read_ratio", "read_p99_ms", "healthz_p99_ms", "pickup_s", "retokenize_ratio")


def api_figures(quick: bool = False, root: Path | None = None) -> dict[str, Any]:
    """Every API figure from one service; a part that fails leaves its keys None and says why."""
    figures: dict[str, Any] = dict.fromkeys(KEYS)
    errors: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="api-bench-")))
        service = stack.enter_context(bench_service(root))
        for name, part in PARTS.items():
            try:
                figures.update(part(service, quick))
            except Exception as exc:  # one part failing must not lose the others' figures
                errors[name] = f"{type(exc).__name__}: {exc}"[:500]
    figures["errors"] = errors
    figures["table"] = table(figures)
    return figures


def table(figures: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows for the bench's table."""

    def shown(key: str, fmt: str) -> str:
        value = figures.get(key)
        return "na" if value is None else format(value, fmt)

    reads = "API job reads/s (GET /v1/fine_tuning/jobs/{id})"
    p99 = f"{shown('read_p99_ms', '.1f')} ({shown('trivial_p99_ms', '.1f')})"
    tokenize = f"{shown('tokenize_first_s', '.3f')} / {shown('tokenize_second_s', '.3f')}"
    return [
        (reads, shown("read_rps", ".0f")),
        ("API trivial FastAPI route reads/s", shown("trivial_rps", ".0f")),
        ("API read p99 ms (trivial route's)", p99),
        ("API load generator", str(figures.get("load_tool", "na"))),
        (
            f"/healthz p99 ms, {WAITING_COMPLETIONS} completions waiting",
            shown("healthz_p99_ms", ".1f"),
        ),
        ("job pickup s (create -> running), median of 3", shown("pickup_s", ".2f")),
        ("job pickup s, the worker's first job", shown("pickup_first_s", ".2f")),
        ("tokenize s, first job / second job on the same file", tokenize),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, shorter loads")
    parser.add_argument("--only", choices=sorted(PARTS), action="append", help="run these parts")
    args = parser.parse_args()
    if args.only:
        for name in list(PARTS):
            if name not in args.only:
                del PARTS[name]
    figures = api_figures(quick=args.quick)
    for label, value in figures["table"]:
        print(f"{label:<60} {value}")
    for name, error in figures["errors"].items():
        print(f"error in {name}: {error}")
    print("api: " + " ".join(f"{k}={figures[k]}" for k in KEYS))


if __name__ == "__main__":
    main()
