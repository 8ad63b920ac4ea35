"""Packing vs per-record padding on per-record data: validation loss per wall-second.

Both runs train gpt2-tiny on the same records, seed and hyperparameters; both final models are
scored on the same held-out text (packed blocks, token-weighted), so the losses compare.
"""

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import corpus, tiny_models_dir, valid_loss

HP = {"n_epochs": 2, "batch_size": 8, "block_size": 128, "learning_rate": 2e-3,
      "warmup_ratio": 0.0, "keep": "last"}  # fmt: skip


def run(mode: str, base: Any, train: list[str], valid: list[str], seed: int, out: Path):
    """Train one way; (result, wall seconds, CPU seconds, steps, padding fraction).

    CPU seconds are reported too: on a shared machine wall time swings with other load.
    """
    from shared.spec import Hyperparameters, TaskOptions
    from worker.training.callbacks import RecordingCallbacks
    from worker.training.engine import train as train_model
    from worker.training.task_plan import plan_task

    options = TaskOptions(packing=mode == "packing", max_length=None if mode == "packing" else 128)
    records = [{"text": t} for t in train]
    held_out = [{"text": t} for t in valid]
    hp = Hyperparameters.model_validate(HP)
    plan = plan_task(hp, base, options, "causal_lm", records, held_out, seed)
    started, cpu = time.perf_counter(), time.process_time()
    result = train_model(plan.spec, plan.train_examples, plan.valid_examples, out / "ckpt",
                         out / "model", RecordingCallbacks(), device="cpu",
                         log_every_steps=50)  # fmt: skip
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    padding = plan.summary.get("padding_fraction", 0.0)
    return result, wall, cpu, plan.summary["total_steps"], padding


def main() -> None:
    """Train both ways and print loss, wall time and loss drop per second."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--chars", type=int, default=40_000)
    parser.add_argument("--first", choices=["packing", "per-record"], default="packing",
                        help="which mode runs first (the first pays process warm-up)")  # fmt: skip
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    from shared.catalog import find_base_model
    from worker.training.data import group_texts, join_with_eos, tokenize_records
    from worker.training.model_loading import load_tokenizer

    records = corpus(args.chars)
    cut = len(records) * 9 // 10
    train, valid = records[:cut], records[cut:]
    with tempfile.TemporaryDirectory(prefix="gpt2ft-packing-") as tmp:
        root = Path(tmp)
        base = find_base_model("gpt2-tiny", tiny_models_dir(root / "models"))
        assert base is not None
        tokenizer = load_tokenizer(base.location)
        ids = join_with_eos(tokenize_records(valid, tokenizer), tokenizer.eos_token_id)
        yardstick = group_texts(ids, 128)
        start_loss = valid_loss(AutoModelForCausalLM.from_pretrained(base.location), yardstick)
        print(f"data: {len(train)} train records, {len(valid)} held out; start loss "
              f"{start_loss:.4f}; hyperparameters {HP}")  # fmt: skip
        modes = ["packing", "per-record"]
        for mode in modes if args.first == "packing" else modes[::-1]:
            result, wall, cpu, steps, padding = run(
                mode, base, train, valid, args.seed, root / mode
            )
            final = valid_loss(AutoModelForCausalLM.from_pretrained(result.model_dir), yardstick)
            print(f"{mode:>10}: {steps} steps, {result.trained_tokens} tokens, padding "
                  f"{padding:.0%}, wall {wall:.1f}s (cpu {cpu:.1f}s), "
                  f"valid_loss {final:.4f}, loss drop per wall-second "
                  f"{(start_loss - final) / wall:.4f}, per CPU-second "
                  f"{(start_loss - final) / cpu:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
