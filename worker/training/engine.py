"""The training loop: AdamW, warmup + linear decay, clipping, per-epoch eval and checkpoints."""

import math
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shared.spec import TrainingSpec
from worker.training.callbacks import TrainingCallbacks
from worker.training.checkpoints import (
    capture_rng_state,
    load_training_state,
    read_checkpoint_info,
    restore_rng_state,
    save_checkpoint,
)
from worker.training.models import load_causal_lm, load_tokenizer


@dataclass
class TrainResult:
    """How a run ended: stopped is None when it completed, else the stop reason."""

    stopped: str | None
    step: int
    trained_tokens: int
    final_metrics: dict[str, float]
    model_dir: Path | None


@dataclass
class Progress:
    """Where the loop is; saved in every checkpoint so a resume starts at the same batch."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    tokens_seen: int = 0
    epoch_loss_sum: float = 0.0
    epoch_loss_steps: int = 0
    last_train_loss: float = float("nan")
    # Data-order generator state before this epoch's permutation was drawn.
    order_state: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.uint8))


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


def pick_device(device: str | None) -> torch.device:
    """The requested device, else cuda when present, else cpu."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU has it, fp16 (with a GradScaler) on older GPUs, fp32 on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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
    return torch.optim.AdamW(groups, lr=spec.learning_rate, betas=(0.9, 0.999), eps=1e-8)


def warmup_then_linear_decay(warmup_steps: int, total_steps: int):
    """LR multiplier: linear ramp over warmup_steps, then linear decay to 0 at total_steps."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            # (step + 1): the first step already learns, unlike a ramp from exactly 0.
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return multiplier


def setup_run(
    spec: TrainingSpec, total_steps: int, device: torch.device, resume_from: Path | None
) -> Run:
    """Load the model (base or checkpoint) and build optimizer, scheduler and scaler."""
    model = load_causal_lm(str(resume_from or spec.model_location), device)
    model.train()
    tokenizer = load_tokenizer(spec.model_location)
    optimizer = build_optimizer(model, spec)
    warmup_steps = math.ceil(spec.warmup_ratio * total_steps)
    schedule = warmup_then_linear_decay(warmup_steps, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    amp_dtype = pick_amp_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    order_generator = torch.Generator().manual_seed(spec.seed)
    progress = Progress(order_state=order_generator.get_state())
    run = Run(model, tokenizer, optimizer, scheduler, scaler, device, amp_dtype, order_generator,
              progress)  # fmt: skip
    if resume_from is None:
        # Seed after loading: the data order and dropout then depend on spec.seed only.
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
        "rng": capture_rng_state(),
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
    restore_rng_state(state["rng"])


def autocast(run: Run) -> torch.autocast:
    """Mixed precision on GPU; a no-op on CPU."""
    return torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None)


def optimizer_step(
    run: Run, batch: torch.Tensor, max_grad_norm: float
) -> tuple[torch.Tensor, float]:
    """One forward/backward/update; returns the (unsynced) loss and the LR it used."""
    with autocast(run):
        # labels = inputs: the model shifts them by one internally.
        loss = run.model(input_ids=batch, labels=batch).loss
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    learning_rate = float(run.scheduler.get_last_lr()[0])
    run.scheduler.step()
    return loss.detach(), learning_rate


@torch.no_grad()
def evaluate(run: Run, blocks: list[list[int]], batch_size: int) -> dict[str, float]:
    """Token-weighted loss, perplexity and next-token accuracy over blocks."""
    run.model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for start in range(0, len(blocks), batch_size):
        batch = torch.tensor(blocks[start : start + batch_size], device=run.device)
        with autocast(run):
            logits = run.model(input_ids=batch).logits
        logits, targets = logits[:, :-1].float(), batch[:, 1:]
        loss_sum += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        correct += int((logits.argmax(-1) == targets).sum().item())
        count += targets.numel()
    run.model.train()
    valid_loss = loss_sum / count
    return {
        "valid_loss": valid_loss,
        # Capped: exp() of a diverged loss would overflow a float.
        "valid_perplexity": math.exp(min(valid_loss, 50.0)),
        "valid_mean_token_accuracy": correct / count,
    }


def save_final_model(run: Run, final_dir: Path) -> Path:
    """Weights, config, generation config and tokenizer, renamed into final_dir when complete."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}-", dir=final_dir.parent))
    try:
        run.model.save_pretrained(staging)
        run.tokenizer.save_pretrained(staging)
        staging.chmod(0o755)
        if final_dir.exists():
            # A previous attempt finished saving but not reporting: replace its copy.
            shutil.rmtree(final_dir)
        staging.rename(final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final_dir


def flush_losses(progress: Progress, window: list[torch.Tensor]) -> float:
    """Mean of the window's losses (one GPU sync), folded into the epoch's running mean."""
    if not window:
        return progress.last_train_loss
    total = torch.stack(window).sum().item()
    progress.epoch_loss_sum += total
    progress.epoch_loss_steps += len(window)
    progress.last_train_loss = total / len(window)
    window.clear()
    return progress.last_train_loss


def epoch_train_loss(progress: Progress) -> float:
    """Mean train loss over the epoch so far, else the last logged one."""
    if progress.epoch_loss_steps:
        return progress.epoch_loss_sum / progress.epoch_loss_steps
    return progress.last_train_loss


def write_checkpoint(
    run: Run, checkpoints_dir: Path, callbacks: TrainingCallbacks, metrics: dict[str, float]
) -> Path:
    """Save a complete checkpoint, then tell the callbacks (the DB row comes last)."""
    step = run.progress.global_step
    path = save_checkpoint(
        checkpoints_dir, step, run.model, run.tokenizer, training_state(run), metrics
    )
    callbacks.on_checkpoint(step, path, metrics)
    return path


def finish_epoch(
    run: Run, spec: TrainingSpec, valid_blocks: list[list[int]], callbacks: TrainingCallbacks
) -> dict[str, float]:
    """Evaluate, report, and return the metrics the epoch checkpoint records."""
    progress = run.progress
    metrics = {
        "step": progress.global_step,
        "epoch": progress.epoch,
        "train_loss": epoch_train_loss(progress),
    }
    done = f"Epoch {progress.epoch}/{spec.n_epochs} done:"
    if valid_blocks:
        evaluation = evaluate(run, valid_blocks, spec.batch_size)
        callbacks.on_eval(progress.global_step, {"epoch": progress.epoch, **evaluation})
        callbacks.on_message(f"{done} valid_loss {evaluation['valid_loss']:.2f}", evaluation)
        metrics["valid_loss"] = evaluation["valid_loss"]
        metrics["valid_mean_token_accuracy"] = evaluation["valid_mean_token_accuracy"]
    else:
        callbacks.on_message(f"{done} train_loss {metrics['train_loss']:.2f}", dict(metrics))
    return metrics


def train(
    spec: TrainingSpec,
    train_blocks: list[list[int]],
    valid_blocks: list[list[int]],
    checkpoints_dir: Path,
    final_dir: Path,
    callbacks: TrainingCallbacks,
    resume_from: Path | None = None,
    device: str | None = None,
    log_every_steps: int = 1,
) -> TrainResult:
    """Fine-tune spec.model on train_blocks; checkpoint every epoch; stop when told to."""
    if not train_blocks:
        raise ValueError("no training blocks: plan_training should have refused this corpus")
    batch_size = spec.batch_size
    steps_per_epoch = math.ceil(len(train_blocks) / batch_size)
    total_steps = steps_per_epoch * spec.n_epochs
    run = setup_run(spec, total_steps, pick_device(device), resume_from)
    progress = run.progress
    data = torch.tensor(train_blocks, dtype=torch.long)
    window: list[torch.Tensor] = []
    # A resume of a finished last epoch goes straight to saving: report that epoch's metrics.
    metrics: dict[str, float] = read_checkpoint_info(resume_from) if resume_from else {}
    where = f"from step {progress.global_step}" if resume_from else "from the start"
    callbacks.on_message(f"Training {spec.model} on {run.device} {where}: {total_steps} steps")

    while progress.epoch < spec.n_epochs:
        progress.order_state = run.order_generator.get_state()
        order = torch.randperm(len(train_blocks), generator=run.order_generator)
        while progress.step_in_epoch < steps_per_epoch:
            reason = callbacks.should_stop()
            if reason == "pause":
                flush_losses(progress, window)
                metrics = {
                    "step": progress.global_step,
                    "epoch": progress.epoch + progress.step_in_epoch / steps_per_epoch,
                    "train_loss": epoch_train_loss(progress),
                }
                write_checkpoint(run, checkpoints_dir, callbacks, metrics)
            if reason:
                # cancel and lease_lost end here and write nothing more.
                step, tokens = progress.global_step, progress.tokens_seen
                return TrainResult(reason, step, tokens, metrics, None)

            start = progress.step_in_epoch * batch_size
            batch = data[order[start : start + batch_size]].to(run.device, non_blocking=True)
            loss, learning_rate = optimizer_step(run, batch, spec.max_grad_norm)
            window.append(loss)
            progress.step_in_epoch += 1
            progress.global_step += 1
            progress.tokens_seen += batch.numel()
            if progress.global_step % log_every_steps == 0:
                # .item() syncs the GPU: only here, every log_every_steps steps.
                log = {
                    "step": progress.global_step,
                    "epoch": progress.global_step / steps_per_epoch,
                    "train_loss": flush_losses(progress, window),
                    "learning_rate": learning_rate,
                    "tokens_seen": progress.tokens_seen,
                }
                callbacks.on_log(progress.global_step, log)
            every = spec.checkpoint_every_steps
            if (
                every
                and progress.global_step % every == 0
                and progress.step_in_epoch < steps_per_epoch
            ):
                # Mid-epoch resume point; epoch ends checkpoint below anyway.
                write_checkpoint(
                    run,
                    checkpoints_dir,
                    callbacks,
                    {
                        "step": progress.global_step,
                        "epoch": progress.epoch + progress.step_in_epoch / steps_per_epoch,
                        "train_loss": flush_losses(progress, window),
                    },
                )

        flush_losses(progress, window)
        progress.epoch += 1
        metrics = finish_epoch(run, spec, valid_blocks, callbacks)
        progress.step_in_epoch = 0
        progress.epoch_loss_sum, progress.epoch_loss_steps = 0.0, 0
        progress.order_state = run.order_generator.get_state()
        write_checkpoint(run, checkpoints_dir, callbacks, metrics)

    model_dir = save_final_model(run, final_dir)
    callbacks.on_message(f"Training done: {progress.global_step} steps, final model saved")
    return TrainResult(None, progress.global_step, progress.tokens_seen, metrics, model_dir)
