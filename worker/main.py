"""`gpt2ft worker`: a training and an inference Celery process, plus the sweep."""

import ctypes
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

from shared.logging_setup import configure_logging
from shared.naming import INFERENCE_QUEUE, TRAINING_QUEUE, worker_queue
from shared.settings import get_settings

log = logging.getLogger("gpt2ft.worker")


def celery_command(queue: str, name: str) -> list[str]:
    """One solo-pool Celery worker on queue (comma-separated names): one job at a time."""
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


def _die_with_parent() -> None:
    """Linux: a Celery child is killed if this supervisor dies (kill -9 included)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def child_environment(device: str, environ: dict[str, str]) -> dict[str, str]:
    """The children's environment: GPT2FT_DEVICE=cuda:N becomes that one GPU, seen as cuda.

    So N workers on an N-GPU host (GPT2FT_DEVICE=cuda:0 ... cuda:N-1) use N GPUs, and each
    process's CUDA calls, RNG and memory figures all refer to its own GPU.
    """
    match = re.fullmatch(r"cuda:(\d+)", device)
    if match is None:
        return dict(environ)
    index = int(match.group(1))
    visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if visible and index >= len(visible):
        raise ValueError(
            f"GPT2FT_DEVICE={device} but CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']} "
            f"lists {len(visible)} GPU(s); use cuda:0 to cuda:{len(visible) - 1}"
        )
    chosen = visible[index].strip() if visible else str(index)
    return {**environ, "CUDA_VISIBLE_DEVICES": chosen, "GPT2FT_DEVICE": "cuda"}


def start_child(queue: str, name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A Celery child in its own session: outside signals reach only the supervisor.

    Celery's SIGTERM handler takes a non-reentrant lock; a process-group SIGTERM plus the
    supervisor's forwarded one could nest and deadlock it, so each child gets exactly one.
    """
    return subprocess.Popen(
        celery_command(queue, name),
        start_new_session=True,
        preexec_fn=_die_with_parent,
        env=env,
    )


def _stop_children(children: list[subprocess.Popen], timeout: float = 300.0) -> None:
    """SIGTERM once (a running job checkpoints and requeues itself), SIGKILL after timeout."""
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
    settings = get_settings()
    configure_logging(settings.log_level)
    try:
        env = child_environment(settings.device, dict(os.environ))
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    suffix = uuid.uuid4().hex[:6]
    # The training process also serves its own queue: jobs only it has the memory for.
    training = f"{TRAINING_QUEUE},{worker_queue(f'{socket.gethostname()}-{suffix}')}"
    named = {
        queue: start_child(consumes, f"{queue}-{suffix}", env)
        for queue, consumes in ((TRAINING_QUEUE, training), (INFERENCE_QUEUE, INFERENCE_QUEUE))
    }
    stop = threading.Event()
    signalled: list[int] = []

    def _on_signal(signum: int, _frame: object) -> None:
        signalled.append(signum)  # lock-free: handlers may nest; the loop below acts on it

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    sweeper = threading.Thread(
        target=_sweep_forever, args=(stop, get_settings().sweep_interval_seconds), daemon=True
    )
    sweeper.start()
    code = 0
    while not signalled:
        dead = [(queue, c) for queue, c in named.items() if c.poll() is not None]
        if dead:
            log.error("%s celery process exited with code %s", dead[0][0], dead[0][1].returncode)
            code = 1
            break
        time.sleep(0.5)
    stop.set()
    _stop_children(list(named.values()))
    return code
