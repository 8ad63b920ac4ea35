"""What runs the model on a batch: one optimizer step (forward/backward, update), evaluation."""

import math
from typing import Any

import torch
import torch.nn.functional as F

from shared.spec import TrainingSpec
from worker.training import distributed
from worker.training.classify import count_targets, evaluate_classifier, prediction_counts
from worker.training.examples import IGNORE, as_examples
from worker.training.fused_loss import next_token_loss
from worker.training.run_state import Run


def autocast(run: Run) -> torch.autocast:
    """Mixed precision where the plan chose it (CUDA; a CPU with bf16 units), else a no-op."""
    return torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None)


def language_model(model: Any) -> Any:
    """The GPT2LMHeadModel under a PEFT wrapper (LoRA layers sit inside it), or None.

    None for anything else (a classifier, another architecture): those take the model's own
    loss. With it, the loss runs from the last hidden states (worker/training/fused_loss.py).
    """
    from transformers import GPT2LMHeadModel

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if isinstance(inner, GPT2LMHeadModel) and type(inner.lm_head) is torch.nn.Linear:
        return inner
    return None


def forward_loss(run: Run, model: Any, piece: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
    """(summed loss, correct predictions) of one micro-batch through model.

    Causal LMs never build full-vocabulary logits: the body runs under autocast, the loss
    and its gradients chunk by chunk in the autocast dtype (no KV cache either). A DDP
    wrapper (several ranks) must see the forward itself: it takes the model's own loss.
    """
    lm = language_model(model)
    labels = piece["labels"]
    if lm is None or labels.dim() != 2:
        with autocast(run):
            # labels: the model shifts them by one internally.
            output = model(**piece)
        counted = count_targets(labels)
        correct = prediction_counts(output.logits.detach(), labels)[0]
        return output.loss * counted, correct
    inputs = {name: tensor for name, tensor in piece.items() if name != "labels"}
    with autocast(run):
        hidden = lm.transformer(**inputs, use_cache=False).last_hidden_state
    dtype = run.amp_dtype or torch.float32
    return next_token_loss(hidden, lm.lm_head.weight, labels, dtype)


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
        with distributed.accumulating(run.ranks, i < last):
            summed, correct = forward_loss(run, model, piece)
        # An idle rank's stand-in row (distributed.shard) counts 0 tokens: its loss adds nothing.
        weighted = summed * (count > 0) / total
        run.scaler.scale(weighted * scale).backward()
        loss_sum += weighted.detach().float()
        correct_sum += correct
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


def evaluation_sums(
    run: Run, batch: dict[str, torch.Tensor], labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, correct next-token predictions) of one evaluation batch."""
    lm = language_model(run.model)
    if lm is not None:
        with autocast(run):
            hidden = lm.transformer(**batch, use_cache=False).last_hidden_state
        return next_token_loss(hidden, lm.lm_head.weight, labels, run.amp_dtype or torch.float32)
    with autocast(run):
        logits = run.model(**batch).logits
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    loss = F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum"
    )
    return loss, ((logits.argmax(-1) == targets) & (targets != IGNORE)).sum()


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
        loss, correct = evaluation_sums(run, batch, labels)
        counted = (labels[:, 1:] != IGNORE).sum()
        sums += torch.stack([loss.double(), correct.double(), counted.double()])
    run.model.train()
    loss_sum, correct_sum, count_sum = sums.tolist()
    valid_loss = loss_sum / max(1, count_sum)
    return {
        "valid_loss": valid_loss,
        # Capped: exp() of a diverged loss would overflow a float.
        "valid_perplexity": math.exp(min(valid_loss, 50.0)),
        "valid_mean_token_accuracy": correct_sum / max(1, count_sum),
    }
