"""What runs the model on a batch: one optimizer step (forward/backward, update), evaluation."""

import math
from typing import Any

import torch
import torch.nn.functional as F

from shared.spec import TrainingSpec
from worker.training import distributed
from worker.training.classify import count_targets, evaluate_classifier, prediction_counts
from worker.training.examples import IGNORE, as_examples
from worker.training.run_state import Run


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


def optimizer_step(
    run: Run, batch: Any, spec: TrainingSpec
) -> tuple[torch.Tensor, float, Any, torch.Tensor]:
    """Accumulated passes, one update; (unsynced) loss, LR, accuracy counts, gradient norm."""
    pieces = micro_batches(batch, spec.gradient_accumulation_steps)
    # Each piece's mean loss is weighted by its share of predicted tokens: the accumulated
    # gradient then equals the whole batch's, even when the pieces differ in size.
    counted = [count_targets(piece["labels"]) for piece in pieces]
    # On several ranks the total is the global one: each rank's loss is its token share.
    counted, total = distributed.count_tokens(run.ranks, counted)
    total = total.clamp(min=1)
    model, scale = distributed.forward_model(run), distributed.gradient_scale(run.ranks)
    last = len(pieces) - 1
    loss_sum = torch.zeros((), device=run.device)
    correct_sum = torch.zeros((), device=run.device, dtype=torch.long)
    for i, (piece, count) in enumerate(zip(pieces, counted, strict=True)):
        with autocast(run), distributed.accumulating(run.ranks, i < last):
            # labels: the model shifts them by one internally.
            output = model(**piece)
        weighted = output.loss * (count / total)
        run.scaler.scale(weighted * scale).backward()
        loss_sum += weighted.detach().float()
        correct_sum += prediction_counts(output.logits.detach(), piece["labels"])[0]
    loss, correct_sum = distributed.sum_over_ranks(run.ranks, loss_sum, correct_sum)
    run.scaler.unscale_(run.optimizer)
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    # The norm before clipping (unscaled); inf or nan on an fp16 step the scaler skips.
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, spec.max_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    learning_rate = float(run.scheduler.get_last_lr()[0])
    run.scheduler.step()
    return loss.detach(), learning_rate, (correct_sum, total), grad_norm.detach()


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
    valid_loss = loss_sum / max(1, count_sum)
    return {
        "valid_loss": valid_loss,
        # Capped: exp() of a diverged loss would overflow a float.
        "valid_perplexity": math.exp(min(valid_loss, 50.0)),
        "valid_mean_token_accuracy": correct_sum / max(1, count_sum),
    }
