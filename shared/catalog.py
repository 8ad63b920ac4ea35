"""Base models: the Hugging Face catalog names plus every folder of the models directory."""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# Catalog name -> hub repository; these load through from_pretrained (cache or hub).
CATALOG: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
# Model names are folder names; nothing else may reach the filesystem.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# HF's run_clm default; a model folder's gpt2ft.json may set its own.
DEFAULT_BASE_LEARNING_RATE = 5e-5
METADATA_FILE = "gpt2ft.json"


@dataclass(frozen=True)
class BaseModelEntry:
    """A base model: where it loads from and what it says about itself."""

    name: str
    source: str  # "local" or "catalog"
    location: str  # folder path for local, hub repository for catalog
    created: int
    metadata: dict[str, Any]

    @property
    def base_learning_rate(self) -> float:
        """The learning rate that learning_rate_multiplier=1 means for this model."""
        return float(self.metadata.get("base_learning_rate", DEFAULT_BASE_LEARNING_RATE))


def _local_model(folder: Path) -> BaseModelEntry:
    meta_path = folder / METADATA_FILE
    metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return BaseModelEntry(
        name=folder.name,
        source="local",
        location=str(folder.resolve()),
        created=int((folder / "config.json").stat().st_mtime),
        metadata=metadata,
    )


def list_base_models(models_dir: Path) -> list[BaseModelEntry]:
    """Local folders with a config.json, then catalog names no local folder shadows."""
    local: dict[str, BaseModelEntry] = {}
    if models_dir.is_dir():
        for folder in sorted(models_dir.iterdir()):
            if MODEL_NAME.match(folder.name) and (folder / "config.json").is_file():
                local[folder.name] = _local_model(folder)
    catalog = [
        BaseModelEntry(name=name, source="catalog", location=repo, created=0, metadata={})
        for name, repo in CATALOG.items()
        if name not in local
    ]
    return list(local.values()) + catalog


def find_base_model(name: str, models_dir: Path) -> BaseModelEntry | None:
    """The base model called name, or None."""
    if not MODEL_NAME.match(name):
        return None
    folder = models_dir / name
    if (folder / "config.json").is_file():
        return _local_model(folder)
    if name in CATALOG:
        return BaseModelEntry(
            name=name, source="catalog", location=CATALOG[name], created=0, metadata={}
        )
    return None


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
    weights = WEIGHT_BYTES * parameters
    checkpoint = weights + OPTIMIZER_BYTES * trained
    return (keep_checkpoints + 1) * checkpoint + weights
