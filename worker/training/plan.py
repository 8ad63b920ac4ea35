"""Resolve requested hyperparameters against the model and corpus into a runnable plan."""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.catalog import BaseModelEntry
from shared.spec import (
    Hyperparameters,
    MethodOptions,
    TrainingOptions,
    TrainingSpec,
    auto_batch_size,
    auto_block_size,
    auto_epochs,
    part_of,
    resolve_learning_rate,
)
from worker.training.data import (
    count_tokens,
    group_texts,
    split_blocks,
)
from worker.training.examples import Examples, blocks_to_examples, task_plan_message
from worker.training.memory import ModelShape, estimate, total_parameters, trainable_parameters
from worker.training.model_loading import load_tokenizer, model_context_length
from worker.training.token_cache import token_stream_cached

# Shorter blocks teach the model almost nothing about context; refuse rather than pretend.
MIN_BLOCK_SIZE = 16


class PlanError(Exception):
    """A job that cannot run as asked; .param names the field, the message says what to do."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(message)


@dataclass
class Plan:
    """What the engine will run: the resolved spec and the blocks it trains on."""

    spec: TrainingSpec
    # (blocks, block_size) int32 arrays when packed; empty when the task is per record.
    train_blocks: "Sequence[Sequence[int]] | np.ndarray"
    valid_blocks: "Sequence[Sequence[int]] | np.ndarray"
    train_tokens: int
    summary: dict[str, Any] = field(default_factory=dict)
    # What the engine batches; packed blocks become Examples when not given.
    train_examples: Examples | None = None
    valid_examples: Examples | None = None

    def __post_init__(self) -> None:
        if self.train_examples is None:
            self.train_examples = blocks_to_examples(self.train_blocks)
        if self.valid_examples is None:
            self.valid_examples = blocks_to_examples(self.valid_blocks)

    def message(self) -> str:
        """One line for the job's event log."""
        s = self.summary
        if "task" in s:
            return task_plan_message(s)
        return (
            f"Planned {s['n_epochs']} epoch{'s' if s['n_epochs'] != 1 else ''} "
            f"of {s['steps_per_epoch']} steps "
            f"(batch {s['batch_size']}, block {s['block_size']} tokens): "
            f"{s['train_blocks']} training blocks ({s['train_tokens']} tokens), "
            f"{s['valid_blocks']} validation blocks; packed: {s.get('truncated', 0)} records "
            f"truncated, 0% of token slots are padding, "
            f"{s.get('dropped_tokens', 0)} tokens of the last partial block dropped"
        )


def _stream(texts: Iterable[str], tokenizer: Any) -> np.ndarray:
    return token_stream_cached(texts, tokenizer, tokenizer.eos_token_id)


def resolve_block_size(
    requested: int | None, n_positions: int, n_train: int, n_valid: int | None
) -> int:
    """The block size: explicit if it fits, else the model's default shrunk to the corpus."""
    if requested is not None:
        if requested > n_positions:
            raise PlanError(
                "hyperparameters.block_size",
                f"block_size {requested} is longer than the model's context of {n_positions} "
                f"tokens; use {n_positions} or less",
            )
        if requested > n_train:
            raise PlanError(
                "hyperparameters.block_size",
                f"block_size {requested} is longer than the training file's {n_train} tokens; "
                f"use a smaller block_size or add more text",
            )
        return requested
    if n_train < MIN_BLOCK_SIZE:
        raise PlanError(
            "training_file",
            f"the training file has only {n_train} tokens; it needs at least "
            f"{MIN_BLOCK_SIZE}: add more text",
        )
    # Two blocks at least, so one can be held out for validation.
    block_size = min(auto_block_size(n_positions), max(MIN_BLOCK_SIZE, n_train // 2))
    if n_valid is not None:
        if n_valid < MIN_BLOCK_SIZE:
            raise PlanError(
                "validation_file",
                f"the validation file has only {n_valid} tokens; it needs at least "
                f"{MIN_BLOCK_SIZE}: add more text",
            )
        block_size = min(block_size, n_valid)
    return block_size


def plan_training(
    hp: Hyperparameters,
    base: BaseModelEntry,
    train_texts: Iterable[str],
    valid_texts: Iterable[str] | None,
    seed: int,
) -> Plan:
    """Tokenize, cut into blocks, split, and resolve every "auto" into a TrainingSpec.

    The texts are read once, in batches, into one int32 array of token ids: memory follows
    the token count, whatever the number of records (3 million {"text": "a"} lines included).
    """
    tokenizer = load_tokenizer(base.location)
    n_positions = model_context_length(base.location)
    train_ids = _stream(train_texts, tokenizer)
    valid_ids = _stream(valid_texts, tokenizer) if valid_texts is not None else None
    n_valid_ids = len(valid_ids) if valid_ids is not None else None
    block_size = resolve_block_size(hp.block_size, n_positions, len(train_ids), n_valid_ids)

    if valid_ids is not None:
        validation_split = 0.0
        train_blocks = group_texts(train_ids, block_size)
        valid_blocks = group_texts(valid_ids, block_size)
        if len(valid_blocks) == 0:
            raise PlanError(
                "validation_file",
                f"the validation file has {len(valid_ids)} tokens, fewer than block_size "
                f"{block_size}; add more text or use a smaller block_size",
            )
    else:
        validation_split = hp.validation_split
        train_blocks, valid_blocks = split_blocks(
            group_texts(train_ids, block_size), validation_split, seed
        )

    # int64 (what torch embeds and takes as labels): the examples share these arrays.
    train_blocks = np.ascontiguousarray(train_blocks, dtype=np.int64)
    valid_blocks = np.ascontiguousarray(valid_blocks, dtype=np.int64)
    n_train = len(train_blocks)
    spec = resolve_spec(hp, base, n_train, block_size, validation_split, seed)
    batch_size, n_epochs = spec.batch_size, spec.n_epochs
    train_tokens = count_tokens(train_blocks)
    steps_per_epoch = math.ceil(n_train / batch_size)
    summary = {
        "corpus_tokens": len(train_ids),
        "train_tokens": train_tokens,
        "valid_tokens": count_tokens(valid_blocks),
        "train_blocks": n_train,
        "valid_blocks": len(valid_blocks),
        "block_size": block_size,
        "batch_size": batch_size,
        "n_epochs": n_epochs,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": steps_per_epoch * n_epochs,
        "trained_tokens": train_tokens * n_epochs,
        "gradient_accumulation_steps": spec.gradient_accumulation_steps,
        # Packing pads nothing and cuts no record short; only the last partial block goes.
        "truncated": 0,
        "padding_fraction": 0.0,
        "dropped_tokens": len(train_ids) % block_size,
    }
    return Plan(spec, train_blocks, valid_blocks, train_tokens, summary)


def resolve_spec(
    hp: Hyperparameters,
    base: BaseModelEntry,
    n_train: int,
    block_size: int,
    validation_split: float,
    seed: int,
) -> TrainingSpec:
    """Every "auto" resolved against the number of training examples."""
    batch_size = auto_batch_size(n_train) if hp.batch_size == "auto" else hp.batch_size
    n_epochs = auto_epochs(n_train) if hp.n_epochs == "auto" else hp.n_epochs
    learning_rate, multiplier = resolve_learning_rate(hp, base.base_learning_rate)
    resolved = {
        "model": base.name,
        "model_location": base.location,
        "n_epochs": n_epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "learning_rate_multiplier": multiplier,
        "block_size": block_size,
        "validation_split": validation_split,
        "seed": seed,
        "gradient_accumulation_steps": resolve_accumulation(hp, batch_size),
        "probe_micro_batch": hp.batch_size == "auto" and hp.gradient_accumulation_steps == "auto",
    }
    # TrainingOptions are the requested values the engine takes unchanged.
    return TrainingSpec.model_validate({**part_of(TrainingOptions, hp).model_dump(), **resolved})


def resolve_accumulation(hp: Hyperparameters, batch_size: int) -> int:
    """Explicit steps (at most batch_size: a micro-batch holds one example at least), else 1.

    On CUDA an "auto" value is raised by the engine's probe when the batch does not fit.
    """
    if hp.gradient_accumulation_steps == "auto":
        return 1
    if hp.gradient_accumulation_steps > batch_size:
        raise PlanError(
            "hyperparameters.gradient_accumulation_steps",
            f"gradient_accumulation_steps {hp.gradient_accumulation_steps} is larger than "
            f"batch_size {batch_size}; use at most {batch_size}",
        )
    return hp.gradient_accumulation_steps


def with_method(plan: Plan, method: MethodOptions) -> Plan:
    """The plan with its training method set and summarised (counts, memory estimate)."""
    plan.spec.method = method
    plan.summary.update(method_summary(plan.spec))
    return plan


def method_summary(spec: TrainingSpec) -> dict[str, Any]:
    """Method, parameter counts and the memory estimate, from the model config alone."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(spec.model_location)
    shape = ModelShape.from_config(config)
    method = spec.method
    if method.training_method == "transfer" and method.trainable_layers > shape.layers:
        raise PlanError(
            "trainable_layers",
            f"trainable_layers {method.trainable_layers} is more than the model's "
            f"{shape.layers} blocks; use {shape.layers} or less",
        )
    lora = method.resolved_lora()
    trainable = trainable_parameters(shape, method.training_method, method.trainable_layers, lora)
    total = total_parameters(shape) + (
        shape.vocab * shape.width if method.training_method == "transfer" else trainable
        if method.training_method == "lora" else 0
    )  # fmt: skip
    # With the probe on (CUDA), the batch may run as accumulated micro-batches down to 1
    # example: a job fits when one example does, and the probe finds the largest that fits.
    gpu = trains_on_gpu()
    accumulation = spec.gradient_accumulation_steps
    micro = 1 if spec.probe_micro_batch and gpu else math.ceil(spec.batch_size / accumulation)
    length = spec.max_length or spec.block_size
    outputs = len(spec.labels) if spec.task == "classification" and spec.labels else None
    memory = estimate(shape, method.training_method, trainable, micro, length, gpu, outputs)
    return {
        "training_method": method.training_method,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "memory_estimate": memory,
    }


def trains_on_gpu() -> bool:
    """Whether this worker trains on CUDA (and so autocasts to 16-bit activations)."""
    from worker.training.device import pick_device

    return pick_device().type == "cuda"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX; Linux's cpuinfo flags).

    Elsewhere bf16 is emulated and slower than fp32, so the answer there is no.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def choose_precision(device: Any) -> tuple[Any, str]:
    """(autocast dtype or None, why) for training on device; the engine says it in the events.

    bf16 autocast wherever the hardware has bf16 units (CUDA from Ampere, CPUs with
    AVX512-BF16/AMX): its matmuls run at twice fp32's rate and the loss stays within 2% of
    an fp32 run's (tests/unit/test_engine.py); fp16 with a loss scaler on older GPUs.
    """
    import torch

    from worker.training.device import pick_amp_dtype

    if device.type == "cuda":
        dtype = pick_amp_dtype(device)
        name = "bf16" if dtype == torch.bfloat16 else "fp16 (no native bf16 on this GPU)"
        return dtype, f"{name} autocast on {device}"
    from shared.settings import get_settings

    if device.type == "cpu" and cpu_has_bf16() and get_settings().cpu_bf16:
        return torch.bfloat16, "bf16 autocast on the CPU (it has bf16 units), fp32 weights"
    return None, f"fp32 on {device} (no native bf16, or GPT2FT_CPU_BF16=false)"
