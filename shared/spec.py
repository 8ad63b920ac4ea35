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
    "lr_scheduler",
    "max_grad_norm",
    "gradient_accumulation_steps",
    "eval_every_steps",
    "early_stopping_patience",
    "keep",
    "gradient_checkpointing",
)

# Extension fields about the training method; they ride at the top level and live in Job.options.
METHOD_FIELDS = ("training_method", "trainable_layers", "lora", "sample_prompts")
# Extension fields about the task and its data; top level too, also kept in Job.options.
TASK_FIELDS = ("task", "packing", "max_length")
Task = Literal["causal_lm", "completion", "classification"]
# GPT-2's Conv1D projections that LoRA may adapt.
LORA_TARGETS = ("c_attn", "c_proj", "c_fc")
LoraTarget = Literal["c_attn", "c_proj", "c_fc"]


def _attention_only() -> list[LoraTarget]:
    return ["c_attn"]


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
    # Linear decay is what GPT-2 fine-tunes (and HF Trainer) default to.
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    # Clip at 1.0 as HF Trainer does: GPT-2 fine-tunes diverge rarely with it.
    max_grad_norm: Annotated[float, Field(gt=0, le=100)] = 1.0
    # "auto": 1, or on CUDA what reaches batch_size with the largest micro-batch that fits.
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=256)] | Auto = "auto"
    # Evaluate between epochs too; None evaluates at epoch ends only (cheap for small sets).
    eval_every_steps: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    # Evaluations without a new best validation loss before stopping; None never stops early.
    early_stopping_patience: Annotated[int, Field(ge=1, le=1000)] | None = None
    # "best": the lowest validation loss generalises better than the last step on small corpora.
    keep: Literal["best", "last"] = "best"
    # Recompute activations in the backward pass: ~30% slower, far less memory for long blocks.
    gradient_checkpointing: bool = False


class LoraOptions(BaseModel):
    """LoRA adapter shape for GPT-2's Conv1D layers."""

    model_config = ConfigDict(extra="forbid")

    # r=8, alpha=16: the LoRA paper's small-rank setting; enough for style/domain adaptation.
    r: int = Field(default=8, ge=1, le=256)
    alpha: int = Field(default=16, ge=1, le=1024)
    # A little dropout regularises the adapter on corpora of a few MB.
    dropout: float = Field(default=0.05, ge=0.0, le=0.5)
    # Attention only (c_attn = q,k,v) as in the LoRA paper; add c_proj/c_fc for more capacity.
    target_modules: list[LoraTarget] = Field(default_factory=_attention_only, min_length=1)


class MethodOptions(BaseModel):
    """How the weights are trained, plus generations to sample at each evaluation."""

    model_config = ConfigDict(extra="forbid")

    training_method: Literal["full", "transfer", "lora"] = "full"
    # transfer: the top 2 blocks adapt to the new data while the rest keeps GPT-2's features.
    trainable_layers: int = Field(default=2, ge=0, le=128)
    lora: LoraOptions | None = None
    sample_prompts: list[Annotated[str, Field(min_length=1, max_length=1000)]] = Field(
        default_factory=list, max_length=8
    )

    def resolved_lora(self) -> LoraOptions | None:
        """The LoRA options when the method is lora (defaults filled), else None."""
        if self.training_method != "lora":
            return None
        return self.lora or LoraOptions()


class TaskOptions(BaseModel):
    """What the model learns from the records and how records become examples."""

    model_config = ConfigDict(extra="forbid")

    # None: inferred from the training file (text -> causal_lm, prompt/completion, text/label).
    task: Task | None = None
    # Packing wastes no slots on padding; per-record keeps each example whole and separate.
    packing: bool = True
    # Tokens per record when not packing; None means min(1024, the model's context).
    max_length: Annotated[int, Field(ge=8, le=8192)] | None = None


class TrainingSpec(BaseModel):
    """Fully resolved training configuration: what the engine runs, what the job shows."""

    model_config = ConfigDict(extra="forbid")

    model: str
    model_location: str
    task: Task = "causal_lm"
    # causal_lm only; completion and classification always keep records separate.
    packing: bool = True
    # Row length of non-packed examples; None when packing (block_size applies).
    max_length: int | None = Field(default=None, ge=8, le=8192)
    # Class names in id order (classification only); saved as the model's id2label.
    labels: list[str] | None = None
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
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    # Micro-batch = batch_size / gradient_accumulation_steps examples per forward pass.
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=256)
    eval_every_steps: int | None = Field(default=None, ge=1)
    early_stopping_patience: int | None = Field(default=None, ge=1)
    keep: Literal["best", "last"] = "best"
    gradient_checkpointing: bool = False
    method: MethodOptions = Field(default_factory=MethodOptions)
    # batch_size and accumulation were "auto": on CUDA the engine probes the micro-batch.
    probe_micro_batch: bool = False

    def shown(self) -> dict[str, Any]:
        """Resolved values as the job object's hyperparameters show them."""
        return self.model_dump(exclude={"model", "model_location", "method", "probe_micro_batch"})


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
