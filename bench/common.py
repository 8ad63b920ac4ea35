"""Shared bench helpers: a gpt2-tiny to train, a real-text corpus, token-weighted eval."""

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def tiny_models_dir(root: Path) -> Path:
    """A models folder holding gpt2-tiny (built from the GPT-2 BPE files under var/)."""
    from shared.tokenizer_files import fetch_tokenizer_files
    from worker.training.tiny import build_tiny_gpt2

    tokenizer_dir = fetch_tokenizer_files(REPO / "var" / "tokenizer" / "gpt2")
    build_tiny_gpt2(root / "gpt2-tiny", tokenizer_dir)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return root


def corpus(max_chars: int = 120_000) -> list[str]:
    """Real text: this repo's docs and Python sources, one record per paragraph."""
    files = sorted(REPO.glob("*.md")) + sorted((REPO / "worker").rglob("*.py"))
    files += sorted((REPO / "shared").rglob("*.py"))
    records: list[str] = []
    total = 0
    for path in files:
        for chunk in path.read_text(errors="replace").split("\n\n"):
            chunk = chunk.strip()
            if len(chunk) < 40:
                continue
            records.append(chunk)
            total += len(chunk)
            if total >= max_chars:
                return records
    return records


@torch.no_grad()
def valid_loss(model: Any, blocks: list[list[int]], batch_size: int = 16) -> float:
    """Token-weighted next-token loss over equal-length blocks (the engine's definition)."""
    model.eval()
    loss_sum, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = torch.tensor(blocks[start : start + batch_size])
        logits = model(input_ids=batch).logits[:, :-1].float()
        targets = batch[:, 1:]
        loss_sum += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    return loss_sum / count if count else math.nan
