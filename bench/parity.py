"""Parity: our engine vs the Hugging Face Trainer on the same data, seed and hyperparameters.

Prints wall time and tokens/s for both, and as the last line
`parity: ours=<valid loss> trainer=<valid loss> ratio=<ours/trainer>` (target 0.98-1.02), the
means over the seeds (--seeds, two by default). Both final models are scored by the same
token-weighted evaluation on the same blocks, and both sides see the blocks in the same order
(the Trainer's sampler draws our engine's per-epoch permutations).
"""

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import corpus, tiny_models_dir, valid_loss

HP = {"n_epochs": 3, "batch_size": 8, "block_size": 64, "learning_rate": 2e-3,
      "warmup_ratio": 0.0, "weight_decay": 0.01, "lr_scheduler": "linear", "keep": "last",
      "max_grad_norm": 1.0}  # fmt: skip


def run_ours(plan: Any, out: Path) -> tuple[float, float]:
    """Our engine on the plan; (valid loss of the final model, wall seconds)."""
    from transformers import AutoModelForCausalLM

    from worker.training.callbacks import RecordingCallbacks
    from worker.training.engine import train

    started = time.perf_counter()
    result = train(plan.spec, plan.train_examples, plan.valid_examples, out / "ckpt", out / "model",
                   RecordingCallbacks(), device="cpu", log_every_steps=50)  # fmt: skip
    wall = time.perf_counter() - started
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    return valid_loss(model, plan.valid_blocks), wall


class EngineOrder(torch.utils.data.Sampler[int]):
    """The engine's data order: one torch.randperm per epoch from a generator seeded once."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Any:
        return iter(torch.randperm(self.size, generator=self.generator).tolist())


class Blocks(torch.utils.data.Dataset):
    """Packed blocks as Trainer examples: labels are the inputs (the model shifts them)."""

    def __init__(self, blocks: list[list[int]]) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.tensor(self.blocks[i])
        return {"input_ids": ids, "labels": ids}


def run_trainer(plan: Any, out: Path) -> tuple[float, float]:
    """transformers.Trainer with the same hyperparameters; (valid loss, wall seconds)."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, set_seed

    spec = plan.spec
    set_seed(spec.seed)
    model = AutoModelForCausalLM.from_pretrained(spec.model_location, dtype=torch.float32)
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=spec.batch_size,
        num_train_epochs=spec.n_epochs,
        learning_rate=spec.learning_rate,
        weight_decay=spec.weight_decay,
        warmup_steps=0,
        lr_scheduler_type=spec.lr_scheduler,
        max_grad_norm=spec.max_grad_norm,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        seed=spec.seed,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    order = EngineOrder(len(plan.train_blocks), spec.seed)

    class SameOrderTrainer(Trainer):
        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            return order

    trainer = SameOrderTrainer(model=model, args=args, train_dataset=Blocks(plan.train_blocks))
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    return valid_loss(trainer.model, plan.valid_blocks), wall


def main() -> None:
    """Plan once per seed, train both ways, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--chars", type=int, default=60_000, help="corpus size in characters")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from shared.catalog import find_base_model
    from shared.spec import Hyperparameters
    from worker.training.plan import plan_training

    pairs = []
    with tempfile.TemporaryDirectory(prefix="gpt2ft-parity-") as tmp:
        root = Path(tmp)
        base = find_base_model("gpt2-tiny", tiny_models_dir(root / "models"))
        assert base is not None
        for seed in args.seeds:
            plan = plan_training(Hyperparameters.model_validate(HP), base, corpus(args.chars),
                                 None, seed)  # fmt: skip
            tokens = plan.train_tokens * plan.spec.n_epochs
            s = plan.summary
            print(
                f"seed {seed}: {s['train_blocks']} train blocks, {s['valid_blocks']} valid "
                f"blocks of {s['block_size']} tokens; {s['total_steps']} steps; {HP}"
            )
            ours, ours_wall = run_ours(plan, root / f"ours-{seed}")
            print(f"  ours:    valid_loss {ours:.4f}  wall {ours_wall:.1f}s  "
                  f"{tokens / ours_wall:,.0f} tokens/s")  # fmt: skip
            theirs, their_wall = run_trainer(plan, root / f"trainer-{seed}")
            print(f"  trainer: valid_loss {theirs:.4f}  wall {their_wall:.1f}s  "
                  f"{tokens / their_wall:,.0f} tokens/s  ratio {ours / theirs:.4f}")  # fmt: skip
            pairs.append((ours, theirs))
    ours = sum(o for o, _ in pairs) / len(pairs)
    theirs = sum(t for _, t in pairs) / len(pairs)
    print(f"parity: ours={ours:.4f} trainer={theirs:.4f} ratio={ours / theirs:.4f}")


if __name__ == "__main__":
    main()
