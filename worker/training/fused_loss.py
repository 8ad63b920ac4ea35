"""Next-token loss straight from the last hidden states, chunk by chunk (no full-vocab logits).

Hugging Face's causal-LM loss materialises logits for every token and every vocabulary entry,
casts them to fp32, keeps log-softmax for backward, and the accuracy figure reads them once
more: for GPT-2's 50,257 entries that is the bulk of a small model's step on a CPU. Here each
chunk of tokens gets its logits, loss, correct-prediction count and both gradients (hidden
states and output weights) in one pass while the chunk is hot, and nothing vocabulary-sized is
kept for backward (Liger-Kernel's fused linear cross-entropy, in plain torch).
"""

from typing import Any

import torch

from worker.training.examples import IGNORE

# Logit elements per chunk: each chunk also adds a vocabulary x width weight gradient, so few
# large chunks. CPU: 2^23 fp32 (32 MiB) for every 48 of width, at most 2^27 (512 MiB): a narrow
# model's matmuls are bound by the logits' memory traffic and like chunks that stay in cache
# (gpt2-tiny, width 64: 485 ms a step at 2^23, 572 at 2^27), a wide one's by arithmetic and
# like large ones (gpt2-small shape at 8 x 512: 14.1 s at 2^23, 10.7 s at 2^27;
# bench/NOTES.md). GPU: 2^28.
CHUNK_ELEMENTS = {"cpu": 2**23}
CPU_MAX_CHUNK_ELEMENTS = 2**27
GPU_CHUNK_ELEMENTS = 2**28


def chunk_rows(vocab: int, width: int, device: torch.device) -> int:
    """Tokens per chunk for a vocabulary and model width on this device."""
    if device.type in CHUNK_ELEMENTS:
        elements = min(CPU_MAX_CHUNK_ELEMENTS, CHUNK_ELEMENTS[device.type] * max(1, width // 48))
    else:
        elements = GPU_CHUNK_ELEMENTS
    return max(16, elements // max(1, vocab))


class LinearCrossEntropy(torch.autograd.Function):
    """(summed loss, correct predictions) of hidden @ weight.T against targets.

    The gradients are computed in forward (while each chunk's logits exist) and kept; backward
    scales them by the incoming gradient. Targets equal to IGNORE count for nothing.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = hidden.shape[0]
        compute_w = weight.detach().to(dtype)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if ctx.needs_input_grad[1]
            else None
        )
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        step = chunk_rows(weight.shape[0], weight.shape[1], hidden.device)
        for start in range(0, rows, step):
            h = hidden[start : start + step].detach().to(dtype)
            t = targets[start : start + step]
            logits = (h @ compute_w.T).float()
            counted = (t != IGNORE).float()
            safe = t.clamp(min=0)
            target_logit = logits.gather(1, safe[:, None]).squeeze(1)
            top = logits.amax(-1)
            # The target is the prediction when its logit is the row's largest (ties count).
            correct += ((target_logit >= top) & (t != IGNORE)).sum()
            # In place, one exp per logit: exp(logit - max), its row sums, then the softmax
            # scaled by "counted" is d(sum of losses)/d(logits) once the target's 1 is off.
            grad = logits.sub_(top[:, None]).exp_()
            total = grad.sum(-1)
            loss_sum += ((top + total.log() - target_logit) * counted).sum()
            if grad_hidden is None and grad_weight is None:
                continue  # evaluation: the loss is all
            grad.mul_((counted / total)[:, None])
            grad[torch.arange(grad.shape[0], device=grad.device), safe] -= counted
            grad_c = grad.to(dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + step] = grad_c @ compute_w
            if grad_weight is not None:
                grad_weight += (grad_c.T @ h).float()
        ctx.save_for_backward(
            grad_hidden if grad_hidden is not None else torch.empty(0),
            grad_weight if grad_weight is not None else torch.empty(0),
        )
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(correct)
        return loss_sum, correct

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_correct: Any) -> Any:  # type: ignore[override]
        grad_hidden, grad_weight = ctx.saved_tensors
        d_hidden = grad_hidden * grad_loss if ctx.needs_input_grad[0] else None
        d_weight = (
            (grad_weight * grad_loss).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        )
        return d_hidden, d_weight, None, None


def next_token_loss(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, correct predictions) of each position predicting the next label."""
    if not torch.is_grad_enabled():  # evaluation: no gradients computed at all
        hidden, weight = hidden.detach(), weight.detach()
    width = hidden.shape[-1]
    shifted = hidden[:, :-1].reshape(-1, width)
    targets = labels[:, 1:].reshape(-1)
    result: tuple[torch.Tensor, torch.Tensor] = LinearCrossEntropy.apply(
        shifted, weight, targets, dtype
    )
    return result
