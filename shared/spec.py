"""The job's fields, declared once per group: the request, Job.options and the engine's spec.

Each group is one pydantic model; the create body (api.schemas.JobCreate), the stored
options (JobOptions) and the resolved TrainingSpec inherit the groups instead of
repeating names, bounds or defaults. A new option goes into the one group it belongs to.
"""

import json
import math
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Auto = Literal["auto"]
Task = Literal["causal_lm", "completion", "classification", "chat"]
# GPT-2's Conv1D projections that LoRA may adapt.
LoraTarget = Literal["c_attn", "c_proj", "c_fc"]

# Bounds shared by a requested value ("auto" allowed) and its resolved form.
Epochs = Annotated[int, Field(ge=1, le=100)]
BatchSize = Annotated[int, Field(ge=1, le=512)]
LearningRate = Annotated[float, Field(gt=0, le=1)]
# Tokens per block or per record: GPT-2's contexts are 1024; 8192 leaves room for others.
Tokens = Annotated[int, Field(ge=8, le=8192)]
AccumulationSteps = Annotated[int, Field(ge=1, le=256)]
Steps = Annotated[int, Field(ge=1, le=1_000_000)]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
# A checkpoint writes the weights and AdamW's two moments (12 bytes a parameter: 1.5 GB for
# gpt2): more often than every 5 steps the job spends more time saving than training.
CheckpointInterval = Annotated[int, Field(ge=5, le=1_000_000)]


def defaults_described(schema: dict[str, Any]) -> None:
    """JSON-schema hook for request bodies: each server default moves into the description.

    A generated client always sends a property's declared default, so a declared default
    would pin every option the caller left out (and conflict across the two places an
    extension may be given); described instead, clients send only what their caller set.
    """
    for prop in schema.get("properties", {}).values():
        default = prop.pop("default", None)
        if default is not None:
            note = f"Default: {json.dumps(default)}."
            prop["description"] = f"{prop['description']} {note}" if "description" in prop else note


class TrainingOptions(BaseModel):
    """Extension hyperparameters with no "auto": the engine's spec keeps them as requested.

    validation_split is the one exception: it becomes 0 when a validation file is given.
    """

    model_config = ConfigDict(extra="forbid")

    # 10% held out is the usual compromise for corpora of a few MB.
    validation_split: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1
    # A short warmup keeps the first AdamW steps from wrecking pretrained weights.
    warmup_ratio: Annotated[float, Field(ge=0.0, le=0.5)] = 0.05
    # GPT-2's own training used 0.01; 0 would let embeddings drift on small corpora.
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    # Resume checkpoints between epochs; None checkpoints at epoch ends only.
    checkpoint_every_steps: CheckpointInterval | None = None
    # The newest 2 checkpoints (a fallback if the newest is bad) plus the best; older ones
    # are deleted as new ones publish, so a job's disk use does not grow with its length.
    keep_checkpoints: Annotated[int, Field(ge=1, le=100)] = 2
    # Linear decay is what GPT-2 fine-tunes (and HF Trainer) default to.
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    # Clip at 1.0 as HF Trainer does: GPT-2 fine-tunes diverge rarely with it.
    max_grad_norm: Annotated[float, Field(gt=0, le=100)] = 1.0
    # Evaluate between epochs too; None evaluates at epoch ends only (cheap for small sets).
    eval_every_steps: Steps | None = None
    # Evaluations without a new best validation loss before stopping; None never stops early.
    early_stopping_patience: Annotated[int, Field(ge=1, le=1000)] | None = None
    # "best": the lowest validation loss generalises better than the last step on small corpora.
    keep: Literal["best", "last"] = "best"
    # Recompute activations in the backward pass: ~30% slower, far less memory for long blocks.
    gradient_checkpointing: bool = False
    # Ranks (GPUs) one job trains on with torchrun/DDP; 1 trains in the worker process itself.
    # Bounded by one host's usual 8 GPUs; on a CPU-only host the ranks use gloo.
    n_gpus: Annotated[int, Field(ge=1, le=8)] = 1


class ExtensionHyperparameters(TrainingOptions):
    """gpt2ft's hyperparameters: given in hyperparameters or at the top level of the body."""

    # Absolute learning rate; overrides the multiplier when given.
    learning_rate: LearningRate | None = None
    # Tokens per training block; None means min(1024, the model's context).
    block_size: Tokens | None = None
    # "auto": 1, or on CUDA what reaches batch_size with the largest micro-batch that fits.
    gradient_accumulation_steps: AccumulationSteps | Auto = "auto"


class Hyperparameters(ExtensionHyperparameters):
    """Requested hyperparameters: OpenAI's three plus gpt2ft's extensions ("auto" kept)."""

    model_config = ConfigDict(json_schema_extra=defaults_described)

    # "auto": OpenAI's heuristic on the number of examples (auto_epochs).
    n_epochs: Epochs | Auto = "auto"
    # "auto": about 0.2% of the examples, 1 to 8 (auto_batch_size).
    batch_size: BatchSize | Auto = "auto"
    # "auto": 1, i.e. the base model's base_learning_rate.
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Auto = "auto"


class TaskOptions(BaseModel):
    """What the model learns from the records and how records become examples."""

    model_config = ConfigDict(extra="forbid")

    # None: inferred from the training file (text -> causal_lm, prompt/completion, text/label,
    # messages -> chat).
    task: Task | None = None
    # Packing wastes no slots on padding; per-record keeps each example whole and separate.
    packing: bool = True
    # Tokens per record when not packing; None means min(1024, the model's context).
    max_length: Tokens | None = None


def _attention_only() -> list[LoraTarget]:
    return ["c_attn"]


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
    # A few prompts at most: each is generated at every evaluation.
    sample_prompts: list[Annotated[str, Field(min_length=1, max_length=1000)]] = Field(
        default_factory=list, max_length=8
    )

    def resolved_lora(self) -> LoraOptions | None:
        """The LoRA options when the method is lora (defaults filled), else None."""
        if self.training_method != "lora":
            return None
        return self.lora or LoraOptions()


class JobOptions(TaskOptions, MethodOptions):
    """Job.options: the task (always resolved at create) and method extensions, flat."""


Group = TypeVar("Group", bound=BaseModel)


def part_of(group: type[Group], source: BaseModel) -> Group:
    """The fields of source that group declares, as a group (fields unset in source stay unset)."""
    given = source.model_dump(include=set(group.model_fields), exclude_unset=True)
    return group.model_validate(given)


class TrainingSpec(TrainingOptions, TaskOptions):
    """Fully resolved training configuration: what the engine runs, what the job shows.

    The task fields hold resolved values: packing is False unless the task is causal_lm,
    max_length is the row length of non-packed examples (None when packing).
    """

    model: str
    model_location: str
    task: Task = "causal_lm"
    # Class names in id order (classification only); saved as the model's id2label.
    labels: list[str] | None = None
    n_epochs: Epochs
    batch_size: BatchSize
    learning_rate: LearningRate
    # Unbounded above: an explicit learning_rate may be many times the base rate.
    learning_rate_multiplier: Annotated[float, Field(gt=0)]
    block_size: Tokens
    seed: Seed
    # Micro-batch = batch_size / gradient_accumulation_steps examples per forward pass.
    gradient_accumulation_steps: AccumulationSteps = 1
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
