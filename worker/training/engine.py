"""The training loop: AdamW, LR schedules, accumulation, clipping, evals, best checkpoints."""

import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from shared.spec import TrainingSpec
from worker.training.callbacks import StopReason, TrainingCallbacks
from worker.training.checkpoints import (
    checkpoint_name,
    read_checkpoint_info,
    save_checkpoint,
)
from worker.training.classify import (
    count_targets,
    evaluate_classifier,
    prediction_counts,
)
from worker.training.device import peak_bytes, pick_device, release_memory, reset_peak
from worker.training.methods import Exportable, copy_model_files
from worker.training.results import (
    early_stop_message,
    memorization_fraction,
    sample_continuations,
    should_stop_early,
    update_best,
)
from worker.training.run_state import Progress, Run, setup_run, training_state
from worker.training.tasks import IGNORE, Examples, as_examples


@dataclass
class TrainResult:
    """How a run ended: stopped is None when it completed, else the stop reason."""

    stopped: StopReason | None
    step: int
    trained_tokens: int
    final_metrics: dict[str, float]
    model_dir: Path | None


def autocast(run: Run) -> torch.autocast:
    """Mixed precision on GPU; a no-op on CPU."""
    return torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None)


def micro_batch_size(spec: TrainingSpec) -> int:
    """Examples per forward pass: what fits in memory for training fits for evaluation too."""
    return math.ceil(spec.batch_size / spec.gradient_accumulation_steps)


def micro_batches(batch: Any, accumulation: int) -> list[dict[str, torch.Tensor]]:
    """The batch (a tensor of blocks or a dict of model inputs) cut into accumulation pieces."""
    inputs = batch if isinstance(batch, dict) else {"input_ids": batch, "labels": batch}
    rows = inputs["input_ids"].shape[0]
    size = math.ceil(rows / accumulation)
    return [
        {name: tensor[start : start + size] for name, tensor in inputs.items()}
        for start in range(0, rows, size)
    ]


def optimizer_step(run: Run, batch: Any, spec: TrainingSpec) -> tuple[torch.Tensor, float, Any]:
    """Accumulated forward/backward passes, one update; (unsynced) loss, LR, accuracy counts."""
    pieces = micro_batches(batch, spec.gradient_accumulation_steps)
    # Each piece's mean loss is weighted by its share of predicted tokens: the accumulated
    # gradient then equals the whole batch's, even when the pieces differ in size.
    counted = [count_targets(piece["labels"]) for piece in pieces]
    total = torch.stack(counted).sum().clamp(min=1)
    loss_sum = torch.zeros((), device=run.device)
    correct_sum = torch.zeros((), device=run.device, dtype=torch.long)
    for piece, count in zip(pieces, counted, strict=True):
        with autocast(run):
            # labels: the model shifts them by one internally.
            output = run.model(**piece)
        weighted = output.loss * (count / total)
        run.scaler.scale(weighted).backward()
        loss_sum += weighted.detach().float()
        correct_sum += prediction_counts(output.logits.detach(), piece["labels"])[0]
    loss = loss_sum
    run.scaler.unscale_(run.optimizer)
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(trainable, spec.max_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    learning_rate = float(run.scheduler.get_last_lr()[0])
    run.scheduler.step()
    return loss.detach(), learning_rate, (correct_sum, total)


@torch.no_grad()
def evaluate(run: Run, blocks: Any, batch_size: int) -> dict[str, float]:
    """Token-weighted loss, perplexity and next-token accuracy (classifiers: accuracy, F1)."""
    examples = as_examples(blocks)
    if examples.labels is not None and examples.labels.dim() == 1:
        return evaluate_classifier(run.model, examples, batch_size, run.device, autocast(run))
    run.model.eval()
    # Sums stay on the device: one GPU sync for the whole evaluation, not three per batch.
    sums = torch.zeros(3, device=run.device, dtype=torch.float64)
    for start in range(0, len(examples), batch_size):
        index = torch.arange(start, min(start + batch_size, len(examples)))
        batch = examples.batch(index, run.device)
        labels = batch.pop("labels")
        with autocast(run):
            logits = run.model(**batch).logits
        logits, targets = logits[:, :-1].float(), labels[:, 1:]
        loss = F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum"
        )
        counted = targets != IGNORE
        correct = ((logits.argmax(-1) == targets) & counted).sum()
        sums += torch.stack([loss.double(), correct.double(), counted.sum().double()])
    run.model.train()
    loss_sum, correct_sum, count_sum = sums.tolist()
    count = int(count_sum)
    valid_loss = loss_sum / max(1, count)
    return {
        "valid_loss": valid_loss,
        # Capped: exp() of a diverged loss would overflow a float.
        "valid_perplexity": math.exp(min(valid_loss, 50.0)),
        "valid_mean_token_accuracy": correct_sum / max(1, count),
    }


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
        staging.chmod(0o755)
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


def write_checkpoint(
    run: Run, checkpoints_dir: Path, callbacks: TrainingCallbacks, metrics: dict[str, float]
) -> Path:
    """Save a complete checkpoint, then tell the callbacks (the DB row comes last)."""
    step = run.progress.global_step
    path = save_checkpoint(
        checkpoints_dir, step, Exportable(run.model), run.tokenizer, training_state(run), metrics
    )
    callbacks.on_checkpoint(step, path, metrics)
    return path


def finish_epoch(
    run: Run,
    spec: TrainingSpec,
    valid_blocks: Any,
    callbacks: TrainingCallbacks,
    epoch: float | None = None,
) -> dict[str, float]:
    """Evaluate, report, and return the metrics the checkpoint records (mid-epoch: epoch set)."""
    progress = run.progress
    metrics = {
        "step": progress.global_step,
        "epoch": progress.epoch if epoch is None else epoch,
        "train_loss": epoch_train_loss(progress),
        "train_mean_token_accuracy": progress.last_train_accuracy,
    }
    done = (
        f"Epoch {progress.epoch}/{spec.n_epochs} done:"
        if epoch is None
        else f"Step {progress.global_step}:"
    )
    if len(valid_blocks):
        evaluation = evaluate(run, valid_blocks, micro_batch_size(spec))
        callbacks.on_eval(progress.global_step, {**metrics, **evaluation})
        callbacks.on_message(f"{done} valid_loss {evaluation['valid_loss']:.2f}", evaluation)
        metrics.update(evaluation)
    else:
        callbacks.on_message(f"{done} train_loss {metrics['train_loss']:.2f}", dict(metrics))
    return metrics


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


def conclude_evaluation(
    run: Run,
    spec: TrainingSpec,
    metrics: dict[str, float],
    callbacks: TrainingCallbacks,
    checkpoints_dir: Path,
) -> bool:
    """Mark a new best, sample, checkpoint; True when early stopping ends the run here."""
    progress = run.progress
    is_best = "valid_loss" in metrics and update_best(
        progress, metrics["valid_loss"], progress.global_step
    )
    sample_prompts(run, spec, callbacks)
    write_checkpoint(run, checkpoints_dir, callbacks, {**metrics, "is_best": is_best})
    patience = spec.early_stopping_patience
    if patience is not None and should_stop_early(progress, patience):
        callbacks.on_message(
            early_stop_message(progress, patience),
            {"best_valid_loss": progress.best_valid_loss, "best_step": progress.best_step},
        )
        return True
    return False


def after_step(
    run: Run,
    spec: TrainingSpec,
    valid_blocks: Any,
    callbacks: TrainingCallbacks,
    checkpoints_dir: Path,
    window: list[torch.Tensor],
    steps_per_epoch: int,
) -> bool:
    """Mid-epoch evaluation or resume checkpoint when due; True to stop early."""
    progress = run.progress
    if progress.step_in_epoch >= steps_per_epoch:
        return False  # the epoch's end evaluates and checkpoints anyway
    epoch = progress.epoch + progress.step_in_epoch / steps_per_epoch
    every_eval, every = spec.eval_every_steps, spec.checkpoint_every_steps
    if len(valid_blocks) and every_eval and progress.global_step % every_eval == 0:
        flush_losses(progress, window)
        metrics = finish_epoch(run, spec, valid_blocks, callbacks, epoch=epoch)
        return conclude_evaluation(run, spec, metrics, callbacks, checkpoints_dir)
    if every and progress.global_step % every == 0:
        metrics = {
            "step": progress.global_step,
            "epoch": epoch,
            "train_loss": flush_losses(progress, window),
        }
        write_checkpoint(run, checkpoints_dir, callbacks, metrics)
    return False


def final_results(
    run: Run, spec: TrainingSpec, train_blocks: Any, metrics: dict[str, float], early: bool
) -> dict[str, Any]:
    """The last evaluation plus best, kept model, early stop and memorization figures."""
    progress = run.progress
    sampled = list(progress.sampled)
    # A classifier generates nothing: no samples, no memorization figure.
    if not sampled and spec.task != "classification":
        # No sample prompts: a few unconditioned generations still measure memorization.
        unconditioned = [""] * 4
        samples = sample_continuations(
            run.model, run.tokenizer, unconditioned, run.device, spec.seed, run.amp_dtype
        )
        sampled = [ids for _, ids in samples]
    final: dict[str, Any] = dict(metrics)
    final.pop("is_best", None)
    if progress.best_step >= 0:
        final["best_valid_loss"] = progress.best_valid_loss
        final["best_step"] = progress.best_step
    final["kept"] = "best" if spec.keep == "best" and progress.best_step >= 0 else "last"
    final["early_stopped"] = early
    final["memorization_fraction"] = memorization_fraction(sampled, train_blocks)
    final["memorization_samples"] = len(sampled)
    return final


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


def step_or_out_of_memory(
    run: Run, batch: dict[str, torch.Tensor] | Any, spec: TrainingSpec
) -> tuple[torch.Tensor, float, Any] | None:
    """optimizer_step, or None when the device ran out of memory (its tensors then freed)."""
    try:
        return optimizer_step(run, batch, spec)
    except torch.OutOfMemoryError:
        # Leaving this frame drops the traceback, and with it every activation of the step.
        return None
    finally:
        del batch


def stop_for_memory(
    run: Run,
    spec: TrainingSpec,
    callbacks: TrainingCallbacks,
    checkpoints_dir: Path,
    window: list[torch.Tensor],
    steps_per_epoch: int,
) -> TrainResult:
    """Out of memory mid-run (another process grew on the GPU): checkpoint the last full step.

    The caller requeues the job with a smaller micro-batch; final_metrics carries the one that
    failed.
    """
    run.optimizer.zero_grad(set_to_none=True)
    release_memory(run.device)
    progress, micro = run.progress, micro_batch_size(spec)
    saved = "nothing to checkpoint yet"
    if progress.global_step > 0:
        metrics = {
            "step": progress.global_step,
            "epoch": progress.epoch + progress.step_in_epoch / steps_per_epoch,
            "train_loss": flush_losses(progress, window),
        }
        write_checkpoint(run, checkpoints_dir, callbacks, metrics)
        saved = f"checkpointed at step {progress.global_step}"
    callbacks.on_message(
        f"Out of memory on {run.device} in step {progress.global_step + 1} with micro-batch "
        f"{micro}: {saved}",
        {"micro_batch_size": micro, "step": progress.global_step},
    )
    return TrainResult(
        StopReason.out_of_memory,
        progress.global_step,
        progress.tokens_seen,
        {"micro_batch_size": micro},
        None,
    )


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
    """Fine-tune spec.model on train_blocks; checkpoint every epoch; stop when told to.

    log_every_steps None: every step on CPU, every 10 on a GPU. micro_batch_limit: the most
    examples per forward pass (a retry after running out of memory passes a smaller one).
    """
    if not train_blocks:
        raise ValueError("no training blocks: plan_training should have refused this corpus")
    batch_size = spec.batch_size
    steps_per_epoch = math.ceil(len(train_blocks) / batch_size)
    total_steps = steps_per_epoch * spec.n_epochs
    # Packed blocks (lists of ids) or per-record Examples: batched the same way by index.
    data, valid_blocks = as_examples(train_blocks), as_examples(valid_blocks)
    run_device = pick_device(device)
    reset_peak(run_device)
    run = setup_run(spec, total_steps, run_device, resume_from, data, micro_batch_limit)
    spec = announce_micro_batch(run, spec, callbacks)
    log_every_steps = log_every_steps or (10 if run.device.type == "cuda" else 1)
    progress = run.progress
    window: list[torch.Tensor] = []
    accuracy_window: list[Any] = []
    early = False
    # A resume of a finished last epoch goes straight to saving: report that epoch's metrics.
    metrics: dict[str, float] = read_checkpoint_info(resume_from) if resume_from else {}
    where = f"from step {progress.global_step}" if resume_from else "from the start"
    callbacks.on_message(f"Training {spec.model} on {run.device} {where}: {total_steps} steps")

    while progress.epoch < spec.n_epochs:
        progress.order_state = run.order_generator.get_state()
        order = torch.randperm(len(train_blocks), generator=run.order_generator)
        while progress.step_in_epoch < steps_per_epoch:
            reason = callbacks.should_stop()
            if reason is not None and reason.checkpoints:
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
            index = order[start : start + batch_size]
            stepped = step_or_out_of_memory(run, data.batch(index, run.device), spec)
            if stepped is None:
                return stop_for_memory(
                    run, spec, callbacks, checkpoints_dir, window, steps_per_epoch
                )
            loss, learning_rate, accuracy = stepped
            window.append(loss)
            accuracy_window.append(accuracy)
            progress.step_in_epoch += 1
            progress.global_step += 1
            progress.tokens_seen += data.tokens_in(index)
            if progress.global_step % log_every_steps == 0:
                # .item() syncs the GPU: only here, every log_every_steps steps.
                log = {
                    "step": progress.global_step,
                    "epoch": progress.global_step / steps_per_epoch,
                    "train_loss": flush_losses(progress, window),
                    "train_mean_token_accuracy": flush_accuracy(progress, accuracy_window),
                    "learning_rate": learning_rate,
                    "tokens_seen": progress.tokens_seen,
                }
                callbacks.on_log(progress.global_step, log)
            early = after_step(
                run, spec, valid_blocks, callbacks, checkpoints_dir, window, steps_per_epoch
            )
            if early:
                break
        if early:
            break

        flush_losses(progress, window)
        progress.epoch += 1
        metrics = finish_epoch(run, spec, valid_blocks, callbacks)
        progress.step_in_epoch = 0
        progress.epoch_loss_sum, progress.epoch_loss_steps = 0.0, 0
        progress.order_state = run.order_generator.get_state()
        if conclude_evaluation(run, spec, metrics, callbacks, checkpoints_dir):
            early = True
            break

    final = final_results(run, spec, train_blocks, metrics, early)
    peak = peak_bytes(run.device)
    if peak is not None:
        final["peak_memory_bytes"] = peak
    best = progress.best_step if final["kept"] == "best" else None
    source = checkpoints_dir / checkpoint_name(best) if best is not None else None
    model_dir = save_final_model(run, final_dir, source)
    kept = f"best (step {best})" if best is not None else "last"
    callbacks.on_message(
        f"Training done: {progress.global_step} steps, final model saved from the {kept} weights"
    )
    return TrainResult(None, progress.global_step, progress.tokens_seen, final, model_dir)
