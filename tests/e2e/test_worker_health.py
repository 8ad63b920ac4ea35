"""The worker's container health check (scripts/worker_health.py) against a real `gpt2ft worker`."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import Service

pytestmark = pytest.mark.e2e
CHECK = Path(__file__).resolve().parents[2] / "scripts" / "worker_health.py"


def check(service: Service, supervisor: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECK), "--supervisor", str(supervisor)],
        env=service.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def until(service: Service, supervisor: int, healthy: bool) -> subprocess.CompletedProcess[str]:
    """Run the check until its exit status says healthy (or not); the last result."""
    deadline = time.monotonic() + 60
    while True:
        result = check(service, supervisor)
        if (result.returncode == 0) == healthy or time.monotonic() > deadline:
            return result
        time.sleep(1)


def celery_child(supervisor: int, queue: str) -> int:
    """The pid of the supervisor's Celery process for queue."""
    for child in psutil.Process(supervisor).children():
        argv = child.cmdline()
        if "-Q" in argv and queue in argv[argv.index("-Q") + 1].split(","):
            return child.pid
    raise AssertionError(f"no {queue} Celery process under {supervisor}")


def test_a_running_worker_is_healthy_and_a_stopped_celery_process_is_not(
    service: Service,
) -> None:
    supervisor = service.processes["worker"].pid
    result = until(service, supervisor, healthy=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("healthy:")

    child = celery_child(supervisor, "training")
    os.kill(child, signal.SIGSTOP)
    try:
        result = check(service, supervisor)
    finally:
        os.kill(child, signal.SIGCONT)
    assert result.returncode == 1
    assert f"the training Celery process {child} is stopped" in result.stderr
    assert until(service, supervisor, healthy=True).returncode == 0


def test_a_process_that_is_no_worker_is_unhealthy(service: Service) -> None:
    result = check(service, os.getpid())
    assert result.returncode == 1
    assert "no Celery process for the training queue" in result.stderr
    assert "no Celery process for the inference queue" in result.stderr


def test_the_worker_is_unhealthy_while_redis_is_down(service: Service) -> None:
    supervisor = service.processes["worker"].pid
    assert until(service, supervisor, healthy=True).returncode == 0
    service.stop("redis")
    try:
        result = check(service, supervisor)
    finally:
        service.start_redis()
    assert result.returncode == 1
    assert "Redis does not answer" in result.stderr
    result = until(service, supervisor, healthy=True)
    assert result.returncode == 0, result.stderr
