"""A job on n_gpus ranks: torchrun as a child process, its reports relayed to the callbacks.

train_on_ranks() takes what engine.train() takes and returns the same TrainResult, so the
worker calls one or the other. The parent (the Celery worker process holding the lease)
starts `python -m torch.distributed.run --standalone` (a free rendezvous port per job, no
collisions on 29500) in its own session with PR_SET_PDEATHSIG, not
torch.multiprocessing.spawn (a Celery prefork child is daemonic: it may not have children
of that kind). Rank 0 writes its reports to the rank folder; the parent replays them to the
callbacks (the job's DbReporter, which publishes checkpoints under the lease) and, once
the ranks have exited, returns the result so the worker publishes the final model.

Stops: cancel and lease loss kill the process group and every rank at once (they write
nothing); pause and shutdown ask rank 0 through the folder so the ranks checkpoint first,
and are killed if they have not exited STOP_GRACE_SECONDS later. A rank that fails makes
torchrun stop the others; the job fails with the first failing rank's error.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from shared.spec import TrainingSpec
from worker.training.callbacks import StopReason, TrainingCallbacks
from worker.training.engine import TrainResult
from worker.training.examples import Examples
from worker.training.ranks import EVENTS, INPUTS, RESULT, STOP

log = logging.getLogger(__name__)
POLL_SECONDS = 0.2
# A pause or shutdown waits this long for the ranks' checkpoint before killing them.
STOP_GRACE_SECONDS = 120.0
KILLED_AT_ONCE = (StopReason.cancel, StopReason.lease_lost)


class RankFailed(RuntimeError):
    """A rank (or torchrun itself) failed: the message is that rank's error."""


class EventRelay:
    """Replays rank 0's complete JSON lines to the callbacks, in order, once each."""

    def __init__(self, path: Path, callbacks: TrainingCallbacks) -> None:
        self.path, self.callbacks = path, callbacks
        self.offset = 0
        self.step, self.tokens = 0, 0

    def relay(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as source:
            source.seek(self.offset)
            data = source.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            self.replay(json.loads(line))

    def replay(self, event: dict[str, Any]) -> None:
        kind, callbacks = event["kind"], self.callbacks
        if kind == "log":
            self.step = event["step"]
            self.tokens = int(event["metrics"].get("tokens_seen", self.tokens))
            callbacks.on_log(event["step"], event["metrics"])
        elif kind == "eval":
            callbacks.on_eval(event["step"], event["metrics"])
        elif kind == "checkpoint":
            callbacks.on_checkpoint(event["step"], Path(event["path"]), event["metrics"])
        elif kind == "message":
            callbacks.on_message(event["message"], event["data"])


# Runs first in the child: PR_SET_PDEATHSIG (kept across exec), then exec torchrun. Not
# Popen's preexec_fn, which may deadlock in a process with threads (the heartbeat's).
EXEC_DYING_WITH_PARENT = """
import ctypes, os, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    if os.getppid() != int(sys.argv[1]):
        sys.exit(1)  # the parent died before the prctl
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def torchrun_command(n_ranks: int, folder: Path) -> list[str]:
    """torchrun on one host, its rendezvous on a free port, each rank in worker.training.ranks."""
    return [
        sys.executable, "-c", EXEC_DYING_WITH_PARENT, str(os.getpid()),
        "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={n_ranks}", "-m", "worker.training.ranks", str(folder),
    ]  # fmt: skip


def start_ranks(n_ranks: int, folder: Path) -> subprocess.Popen[bytes]:
    """torchrun in its own session, dying with this process (Linux); output to torchrun.log."""
    root = str(Path(__file__).resolve().parents[2])  # the repository: ranks import worker.*
    path = [root, os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
    # Ranks share the host's cores: one thread each unless told (torchrun's own default).
    env.setdefault("OMP_NUM_THREADS", "1")
    with (folder / "torchrun.log").open("ab") as out:
        return subprocess.Popen(
            torchrun_command(n_ranks, folder),
            env=env,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_ranks(process: subprocess.Popen[bytes], folder: Path) -> None:
    """SIGKILL torchrun's group and every rank (torchrun starts each in its own session)."""
    pids = [process.pid]
    for pid_file in folder.glob("rank-*.pid"):
        try:
            pids.append(int(pid_file.read_text()))
        except (OSError, ValueError):
            continue
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in pids[1:]:
        try:
            os.killpg(pid, signal.SIGKILL)  # a rank leads its own session and group
        except (ProcessLookupError, PermissionError):
            pass
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.error("torchrun (pid %d) did not exit after SIGKILL", process.pid)


def first_error(folder: Path, code: int) -> str:
    """The earliest rank error (the others follow from it), else torchrun's log tail."""
    errors = []
    for path in folder.glob("error-rank-*.json"):
        try:
            errors.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    if errors:
        first = min(errors, key=lambda error: error["time"])
        log.error("rank %d failed:\n%s", first["rank"], first["traceback"])
        return f"rank {first['rank']} failed: {first['message']}"
    tail = (folder / "torchrun.log").read_text(errors="replace")[-2000:]
    log.error("torchrun exited with %d:\n%s", code, tail)
    last = tail.strip().splitlines()[-1:] or ["no output"]
    return f"torchrun exited with status {code}: {last[0]}"


def train_on_ranks(
    spec: TrainingSpec,
    train_blocks: Examples | Sequence[Sequence[int]],
    valid_blocks: Examples | Sequence[Sequence[int]],
    checkpoints_dir: Path,
    final_dir: Path,
    callbacks: TrainingCallbacks,
    **options: Any,
) -> TrainResult:
    """engine.train() on spec.n_gpus ranks; options: train()'s keywords but device.

    See the module docstring.
    """
    folder = checkpoints_dir.parent / "ranks"
    shutil.rmtree(folder, ignore_errors=True)  # a previous run's stop request and result
    folder.mkdir(parents=True)
    inputs = {
        "spec": spec.model_dump(mode="json"),
        "train": train_blocks,
        "valid": valid_blocks,
        "checkpoints_dir": str(checkpoints_dir),
        "final_dir": str(final_dir),
        "options": options,  # resume_from, log_every_steps, micro_batch_limit
    }
    torch.save(inputs, folder / INPUTS)
    relay = EventRelay(folder / EVENTS, callbacks)
    process = start_ranks(spec.n_gpus, folder)
    try:
        code = supervise(process, folder, relay, callbacks)
    finally:
        kill_ranks(process, folder)
    if isinstance(code, StopReason):
        return TrainResult(code, relay.step, relay.tokens, {}, None)
    relay.relay()
    if code != 0 or not (folder / RESULT).exists():
        raise RankFailed(first_error(folder, code))
    result = json.loads((folder / RESULT).read_text())
    model_dir = result["model_dir"]
    return TrainResult(
        StopReason(result["stopped"]) if result["stopped"] else None,
        result["step"],
        result["trained_tokens"],
        result["final_metrics"],
        Path(model_dir) if model_dir else None,
    )


def supervise(
    process: subprocess.Popen[bytes], folder: Path, relay: EventRelay, callbacks: TrainingCallbacks
) -> int | StopReason:
    """Relay reports until torchrun exits (its code), or a cancel or lease loss (the reason)."""
    deadline: float | None = None
    while (code := process.poll()) is None:
        relay.relay()
        reason = callbacks.should_stop()
        if reason in KILLED_AT_ONCE:
            return reason
        if reason is not None and deadline is None:
            (folder / STOP).write_text(reason.value)
            deadline = time.monotonic() + STOP_GRACE_SECONDS
        if deadline is not None and time.monotonic() > deadline:
            raise RankFailed(f"the ranks did not stop within {STOP_GRACE_SECONDS:.0f}s of {reason}")
        time.sleep(POLL_SECONDS)
    return code
