"""A run's state: device, model, optimizer, scheduler, scaler, data order, and its resume."""

import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.spec import TrainingSpec
from worker.training.attention import use_fast_attention
from worker.training.checkpoints import (
    capture_rng_state,
    load_training_state,
    restore_rng_state,
)
from worker.training.classify import load_for_task
from worker.training.device import enable_fast_matmul
from worker.training.examples import Examples
from worker.training.model_loading import load_tokenizer
from worker.training.plan import choose_precision
from worker.training.probe import accumulation_for, probe_micro_batch
from worker.training.results import BestState
from worker.training.schedules import lr_multiplier, warmup_steps_for


@dataclass
class Progress(BestState):
    """Where the loop is; saved in every checkpoint so a resume starts at the same batch."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    tokens_seen: int = 0
    epoch_loss_sum: float = 0.0
    epoch_loss_steps: int = 0
    last_train_loss: float = float("nan")
    last_train_accuracy: float = float("nan")
    # Data-order generator state before this epoch's permutation was drawn.
    order_state: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.uint8))
    # Token ids of the sample_prompts generations so far (shown as events).
    sampled: list[list[int]] = field(default_factory=list)
    # The base model's generations for the memorization figure, drawn before the first step.
    base_sampled: list[list[int]] = field(default_factory=list)


@dataclass
class Run:
    """The live objects of one training run."""

    model: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None
    order_generator: torch.Generator
    progress: Progress
    # Set when the micro-batch had to shrink (the CUDA probe, or a retry after running out
    # of memory): the accumulation steps that reach batch_size with it.
    accumulation: int | None = None
    # True when batch_size "auto" had the CUDA probe try the micro-batch.
    probed: bool = False
    # What the plan chose for precision and why (said in the job's events).
    precision: str = ""
    # Several ranks (torchrun): the DDP wrapper and this rank's place (distributed.py).
    ranks: Any = None


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(model: Any, spec: TrainingSpec) -> torch.optim.AdamW:
    """AdamW; matrices decay, biases and LayerNorm gains do not (nanoGPT's rule)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": spec.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused: one kernel (CUDA) or one vectorised loop (CPU) for every parameter's update
    # instead of a dozen tensor ops per parameter.
    fused = bool(params) and all(p.is_cuda or p.device.type == "cpu" for p in params)
    return torch.optim.AdamW(
        groups, lr=spec.learning_rate, betas=(0.9, 0.999), eps=1e-8, fused=fused or None
    )


def choose_micro_batch(
    run: Run, spec: TrainingSpec, examples: Examples, limit: int | None
) -> int | None:
    """The accumulation a smaller micro-batch needs (the probe's, or at most limit), else None.

    limit: the micro-batch a previous attempt ran out of memory with, halved.
    """
    micro = math.ceil(spec.batch_size / spec.gradient_accumulation_steps)
    ceiling = min(micro, limit) if limit else micro
    if spec.probe_micro_batch and run.device.type == "cuda":
        ceiling = probe_micro_batch(run.model, examples, run.device, run.amp_dtype, ceiling)
        run.probed = True
    if ceiling >= micro:
        return None
    return accumulation_for(spec.batch_size, ceiling)


def setup_run(
    spec: TrainingSpec,
    total_steps: int,
    device: torch.device,
    resume_from: Path | None,
    examples: Examples,
    micro_batch_limit: int | None = None,
) -> Run:
    """Load the model (base or checkpoint) and build optimizer, scheduler and scaler."""
    enable_fast_matmul(device)
    model = load_for_task(spec, device, resume_from)
    # Under a LoRA wrapper, the model it wraps holds the attention setting.
    use_fast_attention(model.get_base_model() if hasattr(model, "get_base_model") else model)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    tokenizer = load_tokenizer(spec.model_location)
    optimizer = build_optimizer(model, spec)
    warmup_steps = warmup_steps_for(spec.warmup_ratio, total_steps)
    schedule = lr_multiplier(spec.lr_scheduler, warmup_steps, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    amp_dtype, precision = choose_precision(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    order_generator = torch.Generator().manual_seed(spec.seed)
    progress = Progress(order_state=order_generator.get_state())
    run = Run(model, tokenizer, optimizer, scheduler, scaler, device, amp_dtype, order_generator,
              progress, precision=precision)  # fmt: skip
    run.accumulation = choose_micro_batch(run, spec, examples, micro_batch_limit)
    if resume_from is None:
        # Seed after loading and probing: data order and dropout depend on spec.seed only.
        seed_everything(spec.seed)
    else:
        restore_training_state(run, load_training_state(resume_from))
    return run


def training_state(run: Run) -> dict[str, Any]:
    """Everything a resume needs besides the weights."""
    state = {
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "progress": asdict(run.progress),
        "rng": capture_rng_state(run.device),
    }
    if run.scaler.is_enabled():
        state["scaler"] = run.scaler.state_dict()
    return state


def restore_training_state(run: Run, state: dict[str, Any]) -> None:
    """Put optimizer, scheduler, scaler, RNGs and data position back as they were saved."""
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler.is_enabled() and "scaler" in state:
        run.scaler.load_state_dict(state["scaler"])
    run.progress = Progress(**state["progress"])
    run.order_generator.set_state(run.progress.order_state)
    restore_rng_state(state["rng"], run.device)
