"""Train from the command line, with no database or queue: python -m worker.training --help."""

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from shared.catalog import find_base_model
from shared.datasets import (
    DatasetError,
    check_task,
    detect_format,
    read_records,
    task_for_format,
    validate_dataset,
)
from shared.settings import get_settings
from shared.spec import Hyperparameters, TaskOptions
from worker.training.callbacks import RecordingCallbacks, StopReason
from worker.training.checkpoints import latest_checkpoint, remove_partial_checkpoints
from worker.training.engine import train
from worker.training.launch import train_on_ranks
from worker.training.model_loading import ModelUnavailable, ensure_available
from worker.training.plan import PlanError
from worker.training.task_plan import plan_task


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
        description="Fine-tune a GPT-2 model on a .txt, .jsonl or .csv file, without the service.",
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
    parser.add_argument(
        "--task", choices=["causal_lm", "completion", "classification", "chat"],
        help="default: inferred from the training file's records",
    )  # fmt: skip
    parser.add_argument(
        "--packing", action=argparse.BooleanOptionalAction, default=True,
        help="causal_lm: pack records into blocks (default) or one record per row",
    )  # fmt: skip
    parser.add_argument("--max-length", type=int, help="tokens per record when not packing")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    parser.add_argument(
        "--n-gpus", type=int, help="ranks (torchrun/DDP; gloo without CUDA); ignores --device"
    )
    parser.add_argument("--log-every", type=int, default=10, help="steps between log lines")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    return parser.parse_args(argv)


def hyperparameters(args: argparse.Namespace) -> Hyperparameters:
    """The requested hyperparameters from the options named like them; omitted ones stay "auto"."""
    fields = Hyperparameters.model_fields
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return Hyperparameters.model_validate(given)


def resolve_model(name: str):
    """A folder path (its parent is the models dir) or a name in the configured models dir."""
    folder = Path(name)
    if (folder / "config.json").is_file():
        return find_base_model(folder.resolve().name, folder.resolve().parent)
    return find_base_model(name, get_settings().resolved_models_dir)


def read_file(path: Path) -> tuple[list[dict[str, str]], str]:
    """Records of a .txt, .jsonl or .csv file (checked as an upload is) and its format."""
    stored = validate_dataset(path, detect_format(path.name)).format
    return read_records(path, stored), stored


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
        options = TaskOptions(task=args.task, packing=args.packing, max_length=args.max_length)
        train_records, train_format = read_file(args.train_file)
        task = options.task or task_for_format(train_format)
        check_task(task, train_format)
        valid_records = None
        if args.valid_file:
            valid_records, valid_format = read_file(args.valid_file)
            check_task(task, valid_format)
        plan = plan_task(hp, base, options, task, train_records, valid_records, args.seed)
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
    engine_options: dict[str, Any] = {"resume_from": resume_from, "log_every_steps": args.log_every}
    if plan.spec.n_gpus == 1:
        engine_options["device"] = args.device
    run_engine = train if plan.spec.n_gpus == 1 else train_on_ranks
    try:
        result = run_engine(
            plan.spec, plan.train_examples, plan.valid_examples, checkpoints_dir,  # type: ignore[arg-type]
            args.output / "model", callbacks, **engine_options,
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
    callbacks.stop_reason = StopReason.pause
    signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    sys.exit(main())
