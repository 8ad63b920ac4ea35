"""The training loop: one pass over optimizer steps, with evaluations, checkpoints and stops.

train() reads top to bottom (nanoGPT's train.py is the model): stop requested, batch,
forward/backward and step, log, evaluation due, checkpoint due; each block is a call below.
"""

import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from shared.spec import TrainingSpec
from worker.training import distributed
from worker.training.callbacks import StopReason, TrainingCallbacks
from worker.training.checkpoints import (
    checkpoint_name,
    read_checkpoint_info,
    save_checkpoint,
)
from worker.training.device import peak_bytes, pick_device, release_memory, reset_peak
from worker.training.examples import Examples, as_examples
from worker.training.methods import Exportable, copy_model_files
from worker.training.results import (
    early_stop_message,
    memorization_figures,
    memorization_samples,
    sample_continuations,
    should_stop_early,
    update_best,
)
from worker.training.run_state import Progress, Run, setup_run, training_state
from worker.training.step import evaluate, micro_batch_size, optimizer_step


@dataclass
class TrainResult:
    """How a run ended: stopped is None when it completed, else the stop reason."""

    stopped: StopReason | None
    step: int
    trained_tokens: int
    final_metrics: dict[str, float]
    model_dir: Path | None


def save_final_model(run: Run, final_dir: Path, source: Path | None = None) -> Path:
    """The live model, or the source checkpoint's, renamed into final_dir when complete."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}-", dir=final_dir.parent))
    try:
        if source is not None:
            copy_model_files(source, staging)
        else:
            Exportable(run.model).save_pretrained(staging)
            run.tokenizer.save_pretrained(staging)
        staging.chmod(0o700)  # users' weights: the owner only
        if final_dir.exists():
            # A previous attempt finished saving but not reporting: replace its copy.
            shutil.rmtree(final_dir)
        staging.rename(final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final_dir


def flush_accuracy(progress: Progress, window: list[Any]) -> float:
    """Token accuracy over the window's steps (one GPU sync), else the last logged one."""
    if window:
        correct, counted = torch.stack([torch.stack([c, n]) for c, n in window]).sum(0).tolist()
        progress.last_train_accuracy = correct / max(1, counted)
        window.clear()
    return progress.last_train_accuracy


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


@dataclass
class Loop:
    """What the blocks of one training loop share."""

    run: Run
    spec: TrainingSpec
    data: Examples
    valid: Examples
    callbacks: TrainingCallbacks
    checkpoints_dir: Path
    steps_per_epoch: int
    log_every_steps: int
    # This epoch's permutation of the training rows; None until the epoch's first batch.
    order: torch.Tensor | None = None
    # Per-step losses and accuracy counts, still on the device until the next log flushes them.
    losses: list[torch.Tensor] = field(default_factory=list)
    accuracies: list[Any] = field(default_factory=list)
    # The latest evaluation's (or resume checkpoint's) metrics: the run's final metrics.
    metrics: dict[str, float] = field(default_factory=dict)
    early_stopped: bool = False

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.spec.n_epochs

    @property
    def epoch(self) -> float:
        """Epochs done, fractional mid-epoch."""
        return self.run.progress.global_step / self.steps_per_epoch


def start_loop(
    spec: TrainingSpec,
    train_blocks: Examples | Sequence[Sequence[int]],
    valid_blocks: Examples | Sequence[Sequence[int]],
    checkpoints_dir: Path,
    callbacks: TrainingCallbacks,
    resume_from: Path | None,
    device: str | None,
    log_every_steps: int | None,
    micro_batch_limit: int | None,
) -> Loop:
    """Set the run up (fresh or resumed) and announce where training starts."""
    if len(train_blocks) == 0:  # a list of blocks, an array of them, or Examples
        raise ValueError("no training blocks: plan_training should have refused this corpus")
    steps_per_epoch = math.ceil(len(train_blocks) / spec.batch_size)
    # Packed blocks (lists of ids) or per-record Examples: batched the same way by index.
    data, valid = as_examples(train_blocks), as_examples(valid_blocks)
    run_device = pick_device(device)
    reset_peak(run_device)
    total_steps = steps_per_epoch * spec.n_epochs
    run = setup_run(spec, total_steps, run_device, resume_from, data, micro_batch_limit)
    run.ranks = distributed.wrap(run.model, run.device)  # None in a single process
    spec = announce_micro_batch(run, spec, callbacks)
    if resume_from is None:  # the base model's generations, for memorization_fraction_base
        run.progress.base_sampled = memorization_samples(run, spec)
    # A logged loss waits for the GPU to finish: on one, log every 10 steps unless told.
    every = log_every_steps or (10 if run.device.type == "cuda" else 1)
    loop = Loop(run, spec, data, valid, callbacks, checkpoints_dir, steps_per_epoch, every)
    # A resume of a finished last epoch goes straight to saving: report that epoch's metrics.
    loop.metrics = read_checkpoint_info(resume_from) if resume_from else {}
    where = f"from step {run.progress.global_step}" if resume_from else "from the start"
    callbacks.on_message(f"Training {spec.model} on {run.device} {where}: {loop.total_steps} steps")
    callbacks.on_message(f"Precision: {run.precision}", {"amp_dtype": str(run.amp_dtype)})
    return loop


def announce_micro_batch(
    run: Run, spec: TrainingSpec, callbacks: TrainingCallbacks
) -> TrainingSpec:
    """The spec with the accumulation the micro-batch needs, told to the event log."""
    if run.accumulation and run.accumulation != spec.gradient_accumulation_steps:
        spec = spec.model_copy(update={"gradient_accumulation_steps": run.accumulation})
        text = (
            f"batch_size {spec.batch_size} does not fit in one pass on {run.device}: "
            f"{run.accumulation} accumulated micro-batches of {micro_batch_size(spec)} per step"
        )
    elif run.probed:
        text = f"batch_size {spec.batch_size} fits in one pass on {run.device}"
    else:
        return spec
    accumulation = spec.gradient_accumulation_steps
    data = {"micro_batch_size": micro_batch_size(spec), "gradient_accumulation_steps": accumulation}
    callbacks.on_message(text, {**data, "probed": run.probed})
    return spec


def stop_requested(loop: Loop, reason: StopReason) -> TrainResult:
    """Pause and shutdown checkpoint first; cancel and lease_lost end here writing nothing."""
    progress = loop.run.progress
    if reason.checkpoints:
        flush_losses(progress, loop.losses)
        loop.metrics = {
            "step": progress.global_step,
            "epoch": loop.epoch,
            "train_loss": epoch_train_loss(progress),
        }
        write_checkpoint(loop.run, loop.checkpoints_dir, loop.callbacks, loop.metrics)
    return TrainResult(reason, progress.global_step, progress.tokens_seen, loop.metrics, None)


def step_or_out_of_memory(
    run: Run, batch: dict[str, torch.Tensor] | Any, spec: TrainingSpec
) -> tuple[torch.Tensor, float, Any, torch.Tensor] | None:
    """optimizer_step, or None when the device ran out of memory (its tensors then freed)."""
    try:
        return optimizer_step(run, batch, spec)
    except torch.OutOfMemoryError:
        if run.ranks is not None:
            raise  # the other ranks wait in the all-reduce: this rank fails the job instead
        # Leaving this frame drops the traceback, and with it every activation of the step.
        return None
    finally:
        del batch


def stop_for_memory(loop: Loop) -> TrainResult:
    """Out of memory mid-run (another process grew on the GPU): checkpoint the last full step.

    The caller requeues the job with a smaller micro-batch; final_metrics carries the one that
    failed. The failed step changed nothing: its gradients are dropped, the optimizer and the
    position are where the last full step left them.
    """
    run, progress, micro = loop.run, loop.run.progress, micro_batch_size(loop.spec)
    run.optimizer.zero_grad(set_to_none=True)
    release_memory(run.device)
    saved = "nothing to checkpoint yet"
    if progress.global_step > 0:
        write_resume_checkpoint(loop)
        saved = f"checkpointed at step {progress.global_step}"
    loop.callbacks.on_message(
        f"Out of memory on {run.device} in step {progress.global_step + 1} with micro-batch "
        f"{micro}: {saved}",
        {"micro_batch_size": micro, "step": progress.global_step},
    )
    memory: dict[str, float] = {"micro_batch_size": micro}
    return TrainResult(
        StopReason.out_of_memory, progress.global_step, progress.tokens_seen, memory, None
    )


def next_batch_index(loop: Loop) -> torch.Tensor:
    """The rows of the next batch; an epoch's first batch draws that epoch's order."""
    progress = loop.run.progress
    if loop.order is None:
        # Saved in checkpoints: a resume redraws the same order and skips the steps done.
        progress.order_state = loop.run.order_generator.get_state()
        loop.order = torch.randperm(len(loop.data), generator=loop.run.order_generator)
    start = progress.step_in_epoch * loop.spec.batch_size
    return loop.order[start : start + loop.spec.batch_size]


def count_step(loop: Loop, index: torch.Tensor, loss: torch.Tensor, accuracy: Any) -> None:
    """Advance the position by one optimizer step; loss and accuracy wait for the next log."""
    progress = loop.run.progress
    loop.losses.append(loss)
    loop.accuracies.append(accuracy)
    progress.step_in_epoch += 1
    progress.global_step += 1
    progress.tokens_seen += loop.data.tokens_in(index)


def log_progress(loop: Loop, learning_rate: float, grad_norm: torch.Tensor) -> None:
    """Report the mean loss and accuracy since the last log (.item() syncs the GPU: here only)."""
    progress = loop.run.progress
    log = {
        "step": progress.global_step,
        "epoch": loop.epoch,
        "train_loss": flush_losses(progress, loop.losses),
        "train_mean_token_accuracy": flush_accuracy(progress, loop.accuracies),
        "learning_rate": learning_rate,
        "tokens_seen": progress.tokens_seen,
    }
    norm = float(grad_norm)  # the logged step's own norm, as Trainer logs it
    if math.isfinite(norm):  # JSON columns refuse inf and nan
        log["grad_norm"] = norm
    loop.callbacks.on_log(progress.global_step, log)


def epoch_ended(loop: Loop) -> bool:
    """True right after an epoch's last step."""
    return loop.run.progress.step_in_epoch >= loop.steps_per_epoch


def evaluation_due(loop: Loop) -> bool:
    """At each epoch's end, and every eval_every_steps within an epoch (with validation data)."""
    every = loop.spec.eval_every_steps
    mid_epoch = bool(len(loop.valid) and every and loop.run.progress.global_step % every == 0)
    return epoch_ended(loop) or mid_epoch


def checkpoint_due(loop: Loop) -> bool:
    """Every checkpoint_every_steps (evaluations checkpoint anyway)."""
    every = loop.spec.checkpoint_every_steps
    return bool(every and loop.run.progress.global_step % every == 0)


def start_next_epoch(loop: Loop) -> None:
    """Roll the position over to the next epoch's start; its order is drawn at its first batch."""
    progress = loop.run.progress
    progress.epoch += 1
    progress.step_in_epoch = 0
    progress.epoch_loss_sum, progress.epoch_loss_steps = 0.0, 0
    progress.order_state = loop.run.order_generator.get_state()
    loop.order = None


def evaluate_and_checkpoint(loop: Loop) -> None:
    """Evaluate and report, mark a new best, sample, checkpoint; stop early when due."""
    progress = loop.run.progress
    metrics = evaluate_and_report(loop)
    loop.metrics = metrics
    is_best = "valid_loss" in metrics and update_best(
        progress, metrics["valid_loss"], progress.global_step
    )
    sample_prompts(loop.run, loop.spec, loop.callbacks)
    recorded = {**metrics, "is_best": is_best}
    write_checkpoint(loop.run, loop.checkpoints_dir, loop.callbacks, recorded)
    loop.early_stopped = stop_early(loop)


def evaluate_and_report(loop: Loop) -> dict[str, float]:
    """Train loss so far plus the validation metrics, reported; an epoch's end rolls over."""
    progress = loop.run.progress
    flush_losses(progress, loop.losses)
    metrics = {
        "step": progress.global_step,
        "epoch": loop.epoch,
        "train_loss": epoch_train_loss(progress),
        "train_mean_token_accuracy": progress.last_train_accuracy,
    }
    done = f"Step {progress.global_step}:"
    if epoch_ended(loop):
        start_next_epoch(loop)
        done = f"Epoch {progress.epoch}/{loop.spec.n_epochs} done:"
    if not len(loop.valid):
        loop.callbacks.on_message(f"{done} train_loss {metrics['train_loss']:.2f}", dict(metrics))
        return metrics
    evaluation = evaluate(loop.run, loop.valid, micro_batch_size(loop.spec))
    loop.callbacks.on_eval(progress.global_step, {**metrics, **evaluation})
    loop.callbacks.on_message(f"{done} valid_loss {evaluation['valid_loss']:.2f}", evaluation)
    return {**metrics, **evaluation}


def stop_early(loop: Loop) -> bool:
    """True (and say why) when patience evaluations in a row brought no new best."""
    patience, progress = loop.spec.early_stopping_patience, loop.run.progress
    if patience is None or not should_stop_early(progress, patience):
        return False
    loop.callbacks.on_message(
        early_stop_message(progress, patience),
        {"best_valid_loss": progress.best_valid_loss, "best_step": progress.best_step},
    )
    return True


def write_resume_checkpoint(loop: Loop) -> None:
    """A checkpoint between evaluations, so a crash loses at most checkpoint_every_steps."""
    metrics = {
        "step": loop.run.progress.global_step,
        "epoch": loop.epoch,
        "train_loss": flush_losses(loop.run.progress, loop.losses),
    }
    write_checkpoint(loop.run, loop.checkpoints_dir, loop.callbacks, metrics)


def write_checkpoint(
    run: Run, checkpoints_dir: Path, callbacks: TrainingCallbacks, metrics: dict[str, float]
) -> Path:
    """Save a complete checkpoint, then tell the callbacks (the DB row comes last)."""
    step = run.progress.global_step
    # Several ranks: rank 0 saves while the others wait for it at a barrier.
    with distributed.main_rank_writes(run.ranks) as writes:
        if not writes:
            return checkpoints_dir / checkpoint_name(step)
        state = training_state(run)
        path = save_checkpoint(
            checkpoints_dir, step, Exportable(run.model), run.tokenizer, state, metrics
        )
    callbacks.on_checkpoint(step, path, metrics)
    return path


def sample_prompts(run: Run, spec: TrainingSpec, callbacks: TrainingCallbacks) -> None:
    """Generate for each sample prompt; one message event each, ids kept for memorization."""
    prompts = spec.method.sample_prompts
    if not prompts or spec.task == "classification":
        return  # a classifier has no text to generate
    step = run.progress.global_step
    samples = sample_continuations(
        run.model, run.tokenizer, prompts, run.device, spec.seed + step, run.amp_dtype
    )
    for prompt, (text, ids) in zip(prompts, samples, strict=True):
        callbacks.on_message(
            f"Sample at step {step}: {prompt!r} -> {text!r}",
            {"prompt": prompt, "text": text, "step": step},
        )
        run.progress.sampled.append(ids)


def final_results(
    run: Run, spec: TrainingSpec, train_blocks: Any, metrics: dict[str, float], early: bool
) -> dict[str, Any]:
    """The last evaluation plus best, kept model, early stop and memorization figures."""
    progress = run.progress
    final: dict[str, Any] = dict(metrics)
    final.pop("is_best", None)
    if progress.best_step >= 0:
        final["best_valid_loss"] = progress.best_valid_loss
        final["best_step"] = progress.best_step
    final["kept"] = "best" if spec.keep == "best" and progress.best_step >= 0 else "last"
    final["early_stopped"] = early
    tuned = memorization_samples(run, spec)
    final.update(memorization_figures(progress.base_sampled, tuned, train_blocks, run.tokenizer))
    return final


def finish_training(loop: Loop, final_dir: Path) -> TrainResult:
    """Final figures, then the kept weights (best or last) saved as the fine-tuned model."""
    run, spec, progress = loop.run, loop.spec, loop.run.progress
    if not distributed.is_main(run.ranks):  # rank 0 alone samples and saves the final model
        return TrainResult(None, progress.global_step, progress.tokens_seen, {}, None)
    final = final_results(run, spec, loop.data, loop.metrics, loop.early_stopped)
    peak = peak_bytes(run.device)
    if peak is not None:
        final["peak_memory_bytes"] = peak
    best = progress.best_step if final["kept"] == "best" else None
    source = loop.checkpoints_dir / checkpoint_name(best) if best is not None else None
    model_dir = save_final_model(run, final_dir, source)
    kept = f"best (step {best})" if best is not None else "last"
    loop.callbacks.on_message(
        f"Training done: {progress.global_step} steps, final model saved from the {kept} weights"
    )
    return TrainResult(None, progress.global_step, progress.tokens_seen, final, model_dir)


def train(
    spec: TrainingSpec,
    train_blocks: Examples | Sequence[Sequence[int]],
    valid_blocks: Examples | Sequence[Sequence[int]],
    checkpoints_dir: Path,
    final_dir: Path,
    callbacks: TrainingCallbacks,
    resume_from: Path | None = None,
    device: str | None = None,
    log_every_steps: int | None = None,
    micro_batch_limit: int | None = None,
) -> TrainResult:
    """Fine-tune spec.model on train_blocks; evaluate and checkpoint every epoch; stop when told.

    log_every_steps None: every step on CPU, every 10 on a GPU. micro_batch_limit: the most
    examples per forward pass (a retry after running out of memory passes a smaller one).
    """
    loop = start_loop(spec, train_blocks, valid_blocks, checkpoints_dir, callbacks, resume_from,
                      device, log_every_steps, micro_batch_limit)  # fmt: skip
    run, progress = loop.run, loop.run.progress
    while progress.global_step < loop.total_steps and not loop.early_stopped:
        # stop requested: checked before every step, so a cancel waits for one step at most
        reason = distributed.agree(run.ranks, callbacks.should_stop())
        if reason is not None:
            return stop_requested(loop, reason)

        # batch
        index = next_batch_index(loop)
        batch = loop.data.batch(distributed.shard(run.ranks, index), run.device)

        # forward/backward over the micro-batches, then one optimizer step (or out of memory)
        stepped = step_or_out_of_memory(run, batch, loop.spec)
        del batch
        if stepped is None:
            return stop_for_memory(loop)
        loss, learning_rate, accuracy, grad_norm = stepped
        count_step(loop, index, loss, accuracy)

        # log
        if progress.global_step % loop.log_every_steps == 0:
            log_progress(loop, learning_rate, grad_norm)

        # evaluation due (each epoch's end, every eval_every_steps), else a checkpoint due
        if evaluation_due(loop):
            evaluate_and_checkpoint(loop)
        elif checkpoint_due(loop):
            write_resume_checkpoint(loop)

    return finish_training(loop, final_dir)
