"""gpt2-tiny: the real GPT-2 architecture, small and randomly initialised, for smoke tests."""

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

from shared.catalog import METADATA_FILE

# transformers 5 has one (Rust-backed) GPT-2 tokenizer class; the old name is an alias.
GPT2TokenizerFast = GPT2Tokenizer
TINY_CONFIG: dict[str, Any] = {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 256}


def load_bpe_tokenizer(tokenizer_dir: Path) -> GPT2TokenizerFast:
    """The GPT-2 tokenizer from OpenAI's vocab.json/merges.txt (vocab=, not vocab_file=)."""
    tokenizer = GPT2TokenizerFast(
        vocab=str(tokenizer_dir / "vocab.json"), merges=str(tokenizer_dir / "merges.txt")
    )
    if tokenizer("hello world").input_ids != [31373, 995]:
        raise RuntimeError(f"{tokenizer_dir} does not hold the GPT-2 BPE vocabulary")
    return tokenizer


def build_tiny_gpt2(dest: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Save gpt2-tiny (weights, config, tokenizer) to dest unless it is already there."""
    description = (
        "Smoke-test model: GPT-2 architecture, 2 layers, random weights. "
        "Not pretrained; its text is noise until fine-tuned."
    )
    return build_random_gpt2(dest, tokenizer_dir, TINY_CONFIG, description, seed)


def build_random_gpt2(
    dest: Path, tokenizer_dir: Path, shape: dict[str, Any], description: str, seed: int = 0
) -> Path:
    """A randomly initialised GPT-2 of shape (n_layer, n_embd, ...) saved to dest, once."""
    if (dest / "config.json").is_file():
        return dest
    tokenizer = load_bpe_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **shape,
    )
    model = GPT2LMHeadModel(config)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    staging.chmod(0o755)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        metadata = {
            "description": description,
            # Random weights need a far larger step than a pretrained GPT-2 to move in a few epochs.
            "base_learning_rate": 1e-3,
        }
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        staging.replace(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest
