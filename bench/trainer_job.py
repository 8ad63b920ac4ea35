"""The other side of `make bench`: a stock Hugging Face Trainer script, run as its own process.

python -m bench.trainer_job DATA.pt MODEL_DIR OUT_DIR CONFIG
DATA.pt holds {"train": rows, "valid": rows, "pad_to": int | None, "hp": {...}}: packed blocks
(pad_to None) or per-record token lists padded to pad_to (the seed's setup for short records).
CONFIG: stock (fp32, adamw_torch), bf16 (bf16 autocast + adamw_torch_fused), compile (the same
plus torch_compile); on a CPU without bf16 units (where bf16 is emulated, ~9x slower) their fp32
counterparts fused (adamw_torch_fused) and fused_compile (the same plus torch_compile).
One epoch, one evaluation and one save at its end, then save_model, as a 30-line fine-tuning
script does. Prints `trainer: {json}` with the tokens trained.
"""

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

CONFIGS: dict[str, dict[str, Any]] = {
    "stock": {},
    "bf16": {"bf16": True, "optim": "adamw_torch_fused"},
    "compile": {"bf16": True, "optim": "adamw_torch_fused", "torch_compile": True},
    "fused": {"optim": "adamw_torch_fused"},
    "fused_compile": {"optim": "adamw_torch_fused", "torch_compile": True},
}


class Rows(torch.utils.data.Dataset):
    """Token rows as Trainer examples; padded rows mask their padding out of the loss."""

    def __init__(self, rows: list[list[int]], pad_to: int | None, pad_id: int) -> None:
        self.rows, self.pad_to, self.pad_id = rows, pad_to, pad_id

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.rows[i][: self.pad_to] if self.pad_to else self.rows[i]
        ids = torch.tensor(row)
        if not self.pad_to:
            return {"input_ids": ids, "labels": ids}
        pad = self.pad_to - len(row)
        mask = torch.cat(
            [torch.ones(len(row), dtype=torch.long), torch.zeros(pad, dtype=torch.long)]
        )
        return {
            "input_ids": torch.cat([ids, torch.full((pad,), self.pad_id)]),
            "attention_mask": mask,
            "labels": torch.cat([ids, torch.full((pad,), -100)]),
        }


def main(data_file: str, model_dir: str, out_dir: str, config: str) -> None:
    started = time.perf_counter()
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, set_seed

    data = torch.load(data_file, weights_only=False)
    hp, pad_to = data["hp"], data["pad_to"]
    set_seed(hp["seed"])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    pad_id = model.config.eos_token_id
    args = TrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=hp["batch_size"],
        per_device_eval_batch_size=hp["batch_size"], num_train_epochs=1,
        learning_rate=hp["learning_rate"], lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, seed=hp["seed"], eval_strategy="epoch",
        save_strategy="epoch", logging_steps=10, report_to=[], use_cpu=True, disable_tqdm=True,
        **CONFIGS[config],
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=Rows(data["train"], pad_to, pad_id),
        eval_dataset=Rows(data["valid"], pad_to, pad_id),
    )  # fmt: skip
    trainer.train()
    trainer.save_model(str(Path(out_dir) / "model"))
    wall = time.perf_counter() - started
    rows = data["train"]
    real = sum(min(len(r), pad_to) if pad_to else len(r) for r in rows)
    print("trainer: " + json.dumps({"config": config, "tokens": real, "seconds": wall}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
