"""The contract between the engine and whoever runs it (Celery task, CLI, test)."""

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol


class StopReason(StrEnum):
    """Why the engine stopped before the end (TrainResult.stopped is None when it finished)."""

    cancel = "cancel"  # the user cancelled: stop at once, write nothing more
    pause = "pause"  # the user paused: checkpoint, then stop
    shutdown = "shutdown"  # the worker is going away (SIGTERM): checkpoint, then stop
    lease_lost = "lease_lost"  # another worker owns the job now: stop without writing
    # The GPU ran out of memory mid-run (the engine checkpointed the last full step itself):
    # retry with a smaller micro-batch.
    out_of_memory = "out_of_memory"

    @property
    def checkpoints(self) -> bool:
        """True when the run is to be resumed later, so it saves a checkpoint first."""
        return self in (StopReason.pause, StopReason.shutdown)


class TrainingCallbacks(Protocol):
    """What the engine calls while it trains; every method returns quickly."""

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        """After an optimizer step: step, epoch, train_loss, learning_rate, tokens_seen."""

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        """After an evaluation: epoch, valid_loss, valid_perplexity, valid_mean_token_accuracy."""

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        """After a checkpoint folder is complete on disk (renamed into place)."""

    def on_message(self, message: str, data: dict[str, Any] | None = None) -> None:
        """A human-readable progress line ("Epoch 1/2 done: valid_loss 5.12")."""

    def should_stop(self) -> StopReason | None:
        """Checked every step: None to go on, or why to stop."""


@dataclass
class RecordingCallbacks:
    """Keeps everything in lists: for tests and the command line."""

    logs: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    checkpoints: list[tuple[int, Path, dict[str, float]]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    stop_reason: StopReason | None = None
    verbose: bool = False

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.logs.append((step, metrics))

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.evals.append((step, metrics))

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        self.checkpoints.append((step, path, metrics))

    def on_message(self, message: str, data: dict[str, Any] | None = None) -> None:
        self.messages.append(message)
        if self.verbose:
            print(message, flush=True)

    def should_stop(self) -> StopReason | None:
        return self.stop_reason
