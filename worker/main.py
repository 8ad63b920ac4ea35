"""`gpt2ft worker`: a training and an inference Celery process, plus the sweep."""

import logging
import signal
import subprocess
import sys
import threading
import time
import uuid

from shared.logging_setup import configure_logging
from shared.naming import INFERENCE_QUEUE, TRAINING_QUEUE
from shared.settings import get_settings

log = logging.getLogger("gpt2ft.worker")


def celery_command(queue: str, name: str) -> list[str]:
    """One solo-pool Celery worker on one queue: a single job at a time, no prefetch."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        queue,
        "-P",
        "solo",
        "-c",
        "1",
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        "-l",
        get_settings().log_level,
    ]


def _sweep_forever(stop: threading.Event, interval: float) -> None:
    from worker.sweep import sweep_once

    while not stop.is_set():
        try:
            sweep_once()
        except Exception as exc:  # DB or broker down: the next pass tries again
            log.warning("sweep failed: %s", exc)
        stop.wait(interval)


def _stop_children(children: list[subprocess.Popen], timeout: float = 300.0) -> None:
    """SIGTERM (a running job checkpoints and requeues itself), then SIGKILL after timeout."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def run_worker() -> int:
    """Start both Celery processes and the sweep; exit when either child dies or on SIGTERM."""
    configure_logging(get_settings().log_level)
    suffix = uuid.uuid4().hex[:6]
    named = {
        queue: subprocess.Popen(celery_command(queue, f"{queue}-{suffix}"))
        for queue in (TRAINING_QUEUE, INFERENCE_QUEUE)
    }
    children = list(named.values())
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    sweeper = threading.Thread(
        target=_sweep_forever, args=(stop, get_settings().sweep_interval_seconds), daemon=True
    )
    sweeper.start()
    code = 0
    while not stop.wait(0.5):
        dead = [(queue, c) for queue, c in named.items() if c.poll() is not None]
        if dead:
            log.error("%s celery process exited with code %s", dead[0][0], dead[0][1].returncode)
            code = 1
            break
    stop.set()
    _stop_children(children)
    return code
