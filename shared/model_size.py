"""GPT-2 model sizes without torch: parameter counts and what a job's outputs take in storage."""

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from shared.catalog import BaseModelEntry

# (n_layer, n_embd) of the catalog models; all have GPT-2's 50257 tokens and 1024 positions.
CATALOG_SHAPES: dict[str, tuple[int, int]] = {
    "gpt2": (12, 768),
    "gpt2-medium": (24, 1024),
    "gpt2-large": (36, 1280),
    "gpt2-xl": (48, 1600),
    "distilgpt2": (6, 768),
}
GPT2_VOCAB, GPT2_POSITIONS = 50257, 1024
# fp32 weights; AdamW keeps two fp32 moments per trained parameter in the resume state.
WEIGHT_BYTES, OPTIMIZER_BYTES = 4, 8
# Beside the weights every set holds the tokenizer (vocab, merges, tokenizer.json: ~5 MB),
# the config and the resume state's RNG and data order.
SET_OVERHEAD_BYTES = 8 * 1024**2


@dataclass(frozen=True)
class ModelShape:
    """The few GPT-2 config numbers that parameter counts and memory estimates need."""

    vocab: int
    positions: int
    width: int
    layers: int
    inner: int

    @classmethod
    def from_config(cls, config: Any) -> "ModelShape":
        """From a GPT2Config (or anything with its attribute names)."""
        width = int(config.n_embd)
        inner = getattr(config, "n_inner", None) or 4 * width
        return cls(int(config.vocab_size), int(config.n_positions), width, int(config.n_layer),
                   int(inner))  # fmt: skip


def block_parameters(shape: ModelShape) -> int:
    """One transformer block: attention, MLP and two layer norms."""
    d, f = shape.width, shape.inner
    attention = d * 3 * d + 3 * d + d * d + d
    mlp = d * f + f + f * d + d
    return attention + mlp + 4 * d


def total_parameters(shape: ModelShape) -> int:
    """Embeddings, blocks and the final layer norm (the head is tied to the embeddings)."""
    embeddings = shape.vocab * shape.width + shape.positions * shape.width
    return embeddings + shape.layers * block_parameters(shape) + 2 * shape.width


def model_shape(entry: BaseModelEntry) -> ModelShape | None:
    """The base model's shape from its config.json (local) or the table above (catalog)."""
    if entry.source == "catalog":
        layers, width = CATALOG_SHAPES[entry.name]
        return ModelShape(GPT2_VOCAB, GPT2_POSITIONS, width, layers, 4 * width)
    try:
        config = json.loads((Path(entry.location) / "config.json").read_text())
        return ModelShape.from_config(SimpleNamespace(**config))
    except (OSError, ValueError, AttributeError, TypeError):
        return None  # not a GPT-2 config: the worker's validation says what is wrong


def output_bytes_estimate(
    shape: ModelShape, keep_checkpoints: int, training_method: str, trainable_layers: int
) -> int:
    """Bytes a job stores at most: keep_checkpoints + the best checkpoint, and the final model.

    A checkpoint holds the weights and AdamW's moments of the trained parameters (all of
    them for full fine-tuning, the top blocks for transfer, next to nothing for LoRA).
    """
    parameters = total_parameters(shape)
    trained = {
        "full": parameters,
        "transfer": min(trainable_layers, shape.layers) * block_parameters(shape),
    }.get(training_method, 0)
    weights = WEIGHT_BYTES * parameters + SET_OVERHEAD_BYTES
    checkpoint = weights + OPTIMIZER_BYTES * trained
    return (keep_checkpoints + 1) * checkpoint + weights
