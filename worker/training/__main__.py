"""Train from the command line, with no database or queue: python -m worker.training --help."""

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from shared.catalog import find_base_model
from shared.datasets import DatasetError, detect_format, read_texts
from shared.settings import get_settings
from shared.spec import Hyperparameters
from worker.training.callbacks import RecordingCallbacks
from worker.training.checkpoints import latest_checkpoint, remove_partial_checkpoints
from worker.training.engine import train
from worker.training.models import ModelUnavailable, ensure_available
from worker.training.plan import PlanError, plan_training


class PrintingCallbacks(RecordingCallbacks):
    """RecordingCallbacks that also prints logs; Ctrl-C asks for a pause."""

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        super().on_log(step, metrics)
        print(
            f"step {step} epoch {metrics['epoch']:.2f} train_loss {metrics['train_loss']:.4f} "
            f"lr {metrics['learning_rate']:.2e}",
            flush=True,
        )

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        super().on_checkpoint(step, path, metrics)
        print(f"checkpoint {path}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; unset hyperparameters resolve as "auto" does in the API."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.training",
        description="Fine-tune a GPT-2 model on a .txt or .jsonl file, without the service.",
    )
    parser.add_argument("--model", required=True, help="a local model folder or a catalog name")
    parser.add_argument("--train-file", required=True, type=Path, help=".txt or .jsonl")
    parser.add_argument("--valid-file", type=Path, help="optional .txt or .jsonl held out")
    parser.add_argument("--output", required=True, type=Path, help="checkpoints/ and model/ here")
    parser.add_argument("--n-epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--block-size", type=int)
    parser.add_argument("--validation-split", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    parser.add_argument("--log-every", type=int, default=10, help="steps between log lines")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    return parser.parse_args(argv)


def hyperparameters(args: argparse.Namespace) -> Hyperparameters:
    """The requested hyperparameters; omitted ones stay "auto"."""
    requested: dict[str, Any] = {"validation_split": args.validation_split}
    for name in ("n_epochs", "batch_size", "learning_rate", "block_size"):
        if getattr(args, name) is not None:
            requested[name] = getattr(args, name)
    return Hyperparameters(**requested)


def resolve_model(name: str):
    """A folder path (its parent is the models dir) or a name in the configured models dir."""
    folder = Path(name)
    if (folder / "config.json").is_file():
        return find_base_model(folder.resolve().name, folder.resolve().parent)
    return find_base_model(name, get_settings().resolved_models_dir)


def read_file(path: Path) -> list[str]:
    """Records of a .txt or .jsonl file."""
    return read_texts(path, detect_format(path.name))


def main(argv: list[str] | None = None) -> int:
    """Plan, train and report; exit 0 when done, 2 on bad input, 3 when paused."""
    args = parse_args(argv)
    base = resolve_model(args.model)
    if base is None:
        print(f"error: no model {args.model!r} (not a model folder, not a catalog name)")
        return 2
    try:
        hp = hyperparameters(args)
        ensure_available(base)
        train_texts = read_file(args.train_file)
        valid_texts = read_file(args.valid_file) if args.valid_file else None
        plan = plan_training(hp, base, train_texts, valid_texts, args.seed)
    except PlanError as exc:
        print(f"error: {exc.param}: {exc}")
        return 2
    except (ModelUnavailable, DatasetError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    print(plan.message())
    print("hyperparameters:", json.dumps(plan.spec.shown()))

    checkpoints_dir = args.output / "checkpoints"
    remove_partial_checkpoints(checkpoints_dir)
    resume_from = latest_checkpoint(checkpoints_dir) if args.resume else None
    callbacks = PrintingCallbacks(verbose=True)
    # First Ctrl-C: pause at the next step with a checkpoint; a second one kills as usual.
    previous_handler = signal.signal(signal.SIGINT, lambda *_: pause(callbacks))
    started = time.monotonic()
    try:
        result = train(
            plan.spec, plan.train_blocks, plan.valid_blocks, checkpoints_dir,
            args.output / "model", callbacks, resume_from=resume_from, device=args.device,
            log_every_steps=args.log_every,
        )  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    elapsed = time.monotonic() - started
    summary = {
        "stopped": result.stopped,
        "steps": result.step,
        "trained_tokens": result.trained_tokens,
        "seconds": round(elapsed, 1),
        "model_dir": str(result.model_dir) if result.model_dir else None,
        **result.final_metrics,
    }
    print("summary:", json.dumps(summary))
    return 0 if result.stopped is None else 3


def pause(callbacks: PrintingCallbacks) -> None:
    """Ask the loop to pause; restore the default handler so a second Ctrl-C kills."""
    print("pausing at the next step (Ctrl-C again to kill); resume with --resume", flush=True)
    callbacks.stop_reason = "pause"
    signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    sys.exit(main())
