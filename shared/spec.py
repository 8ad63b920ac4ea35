"""The job spec: what a client may ask for, with bounds, and how "auto" resolves."""

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Auto = Literal["auto"]

# Extension hyperparameters that may also ride at the top level of the create body.
EXTENSION_FIELDS = (
    "learning_rate",
    "block_size",
    "validation_split",
    "warmup_ratio",
    "weight_decay",
    "checkpoint_every_steps",
)


class Hyperparameters(BaseModel):
    """Requested hyperparameters: OpenAI's three plus gpt2ft extensions."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: Annotated[int, Field(ge=1, le=100)] | Auto = "auto"
    batch_size: Annotated[int, Field(ge=1, le=512)] | Auto = "auto"
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Auto = "auto"
    # Absolute learning rate; overrides the multiplier when given.
    learning_rate: Annotated[float, Field(gt=0, le=1)] | None = None
    # Tokens per training block; None means min(1024, the model's context).
    block_size: Annotated[int, Field(ge=8, le=8192)] | None = None
    # 10% held out is the usual compromise for corpora of a few MB.
    validation_split: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1
    # A short warmup keeps the first AdamW steps from wrecking pretrained weights.
    warmup_ratio: Annotated[float, Field(ge=0.0, le=0.5)] = 0.05
    # GPT-2's own training used 0.01; 0 would let embeddings drift on small corpora.
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    # Resume checkpoints between epochs; None checkpoints at epoch ends only.
    checkpoint_every_steps: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


class TrainingSpec(BaseModel):
    """Fully resolved training configuration: what the engine runs, what the job shows."""

    model_config = ConfigDict(extra="forbid")

    model: str
    model_location: str
    task: Literal["causal_lm"] = "causal_lm"
    n_epochs: int = Field(ge=1, le=100)
    batch_size: int = Field(ge=1, le=512)
    learning_rate: float = Field(gt=0, le=1)
    learning_rate_multiplier: float = Field(gt=0)
    block_size: int = Field(ge=8, le=8192)
    validation_split: float = Field(ge=0.0, le=0.5)
    warmup_ratio: float = Field(ge=0.0, le=0.5)
    weight_decay: float = Field(ge=0.0, le=1.0)
    # Clip at 1.0 as HF Trainer does: GPT-2 fine-tunes diverge rarely with it.
    max_grad_norm: float = Field(default=1.0, gt=0)
    seed: int = Field(ge=0, le=2**31 - 1)
    checkpoint_every_steps: int | None = Field(default=None, ge=1)

    def shown(self) -> dict[str, Any]:
        """Resolved values as the job object's hyperparameters show them."""
        return self.model_dump(exclude={"model", "model_location", "task"})


def auto_epochs(n_examples: int) -> int:
    """OpenAI's published heuristic: 3 epochs, more for tiny sets, fewer for huge ones."""
    min_target, max_target = 100, 25_000
    epochs = 3
    if n_examples * epochs < min_target:
        epochs = min(25, math.ceil(min_target / max(n_examples, 1)))
    elif n_examples * epochs > max_target:
        epochs = max(1, max_target // n_examples)
    return epochs


def auto_batch_size(n_examples: int) -> int:
    """About 0.2% of the examples, between 1 and 8 (fits gpt2 at 1024 tokens on 24 GB)."""
    return max(1, min(8, math.ceil(n_examples * 0.002)))


def auto_block_size(n_positions: int) -> int:
    """min(1024, the model's context length)."""
    return min(1024, n_positions)


def resolve_learning_rate(hp: Hyperparameters, base_learning_rate: float) -> tuple[float, float]:
    """(learning_rate, multiplier): an explicit learning_rate wins over the multiplier."""
    if hp.learning_rate is not None:
        return hp.learning_rate, hp.learning_rate / base_learning_rate
    multiplier = (
        1.0 if hp.learning_rate_multiplier == "auto" else float(hp.learning_rate_multiplier)
    )
    return min(1.0, base_learning_rate * multiplier), multiplier
