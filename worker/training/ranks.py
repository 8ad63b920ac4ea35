"""One rank of a multi-GPU job: `torchrun ... -m worker.training.ranks FOLDER` (launch.py).

FOLDER holds what the parent wrote (inputs.pt) and what the ranks write back: each rank's
pid (rank-N.pid, so the parent can kill it), rank 0's reports as JSON lines (events.jsonl)
and its TrainResult (result.json), and any rank's error (error-rank-N.json). The parent
asks for a pause or shutdown by writing the reason to FOLDER/stop; rank 0 reads it and
every rank stops at the same step (distributed.agree).

Test hook: GPT2FT_DDP_FAIL_AT=RANK:STEP makes that rank raise before that optimizer step.
"""

import ctypes
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from shared.spec import TrainingSpec
from worker.training import distributed
from worker.training.callbacks import StopReason
from worker.training.engine import train

INPUTS, EVENTS, RESULT, STOP = "inputs.pt", "events.jsonl", "result.json", "stop"


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """Linux: signum reaches this process when its parent (torchrun, the worker) dies."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signum)  # PR_SET_PDEATHSIG
        except OSError:
            pass


class FileReporter:
    """Rank 0's TrainingCallbacks: every report a JSON line the parent relays to the job."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.out = (folder / EVENTS).open("a", encoding="utf-8")

    def _write(self, kind: str, **fields: Any) -> None:
        self.out.write(json.dumps({"kind": kind, **fields}) + "\n")
        self.out.flush()

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self._write("log", step=step, metrics=metrics)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self._write("eval", step=step, metrics=metrics)

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        self._write("checkpoint", step=step, path=str(path), metrics=metrics)

    def on_message(self, message: str, data: dict[str, Any] | None = None) -> None:
        self._write("message", message=message, data=data)

    def should_stop(self) -> StopReason | None:
        stop = self.folder / STOP
        return StopReason(stop.read_text().strip()) if stop.exists() else None


class SilentReporter:
    """The other ranks' callbacks: rank 0 reports for the group."""

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        pass

    def on_message(self, message: str, data: dict[str, Any] | None = None) -> None:
        pass

    def should_stop(self) -> StopReason | None:
        return None


class FailAt:
    """GPT2FT_DDP_FAIL_AT's failure: raise on this rank before the given step."""

    def __init__(self, inner: Any, rank: int, step: int) -> None:
        self.inner, self.rank, self.step, self.calls = inner, rank, step, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def should_stop(self) -> StopReason | None:
        self.calls += 1
        if self.calls >= self.step:
            raise RuntimeError(f"injected failure on rank {self.rank} before step {self.step}")
        return self.inner.should_stop()


def callbacks_for(folder: Path, rank: int) -> Any:
    """Rank 0 reports to the folder; the test hook wraps the rank it names."""
    callbacks: Any = FileReporter(folder) if rank == 0 else SilentReporter()
    fail_at = os.environ.get("GPT2FT_DDP_FAIL_AT", "")
    if fail_at:
        fail_rank, fail_step = (int(part) for part in fail_at.split(":"))
        if fail_rank == rank:
            callbacks = FailAt(callbacks, rank, fail_step)
    return callbacks


def run_rank(folder: Path, rank: int) -> None:
    """Train this rank's part; rank 0 writes the result."""
    inputs = torch.load(folder / INPUTS, weights_only=False)
    device = distributed.init_group()
    try:
        result = train(
            TrainingSpec.model_validate(inputs["spec"]),
            inputs["train"],
            inputs["valid"],
            Path(inputs["checkpoints_dir"]),
            Path(inputs["final_dir"]),
            callbacks_for(folder, rank),
            device=str(device),
            **inputs["options"],
        )
    finally:
        distributed.leave_group()
    if rank == 0:
        payload = {
            "stopped": result.stopped.value if result.stopped else None,
            "step": result.step,
            "trained_tokens": result.trained_tokens,
            "final_metrics": result.final_metrics,
            "model_dir": str(result.model_dir) if result.model_dir else None,
        }
        staging = folder / f".{RESULT}"
        staging.write_text(json.dumps(payload))
        staging.rename(folder / RESULT)


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    die_with_parent()
    rank = int(os.environ.get("RANK", "0"))
    (folder / f"rank-{rank}.pid").write_text(str(os.getpid()))
    try:
        run_rank(folder, rank)
    except BaseException as exc:
        error = {
            "rank": rank,
            "time": time.time(),
            "message": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
        (folder / f"error-rank-{rank}.json").write_text(json.dumps(error))
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
