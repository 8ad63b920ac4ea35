"""batch_size "auto" on CUDA: the largest micro-batch that fits, found by trying one step."""

import math
from typing import Any

import torch

from worker.training.device import release_memory, total_bytes
from worker.training.examples import Examples

# Held back during the probe for what one step does not show: allocator fragmentation over a
# long run, evaluation and checkpoint buffers, the inference process's growth within its cap.
PROBE_MARGIN_FRACTION = 0.05


class ProbeFailed(RuntimeError):
    """The probe's step failed for a reason other than memory: a bug to report, not to halve."""


def longest_rows(examples: Examples, count: int) -> torch.Tensor:
    """count copies of the longest example's index: the widest micro-batch training can meet."""
    if examples.attention_mask is None:
        lengths = torch.full((len(examples),), examples.input_ids.shape[1])
    else:
        lengths = examples.attention_mask.sum(1)
    return torch.full((count,), int(lengths.argmax()), dtype=torch.long)


def reserve_for_step(model: Any, device: torch.device) -> list[torch.Tensor]:
    """Buffers the size of AdamW's two moments plus the margin: memory the probe must not use.

    The probe runs before the optimizer has state (and before a resume loads it).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    held = [torch.empty_like(p) for p in trainable for _moment in range(2)]
    if device.type == "cuda":
        margin = int(total_bytes(device) * PROBE_MARGIN_FRACTION)
        held.append(torch.empty(margin, dtype=torch.uint8, device=device))
    return held


def step_fits(model: Any, batch: dict[str, torch.Tensor], amp_dtype: torch.dtype | None) -> bool:
    """True when forward and backward of batch fit in memory; False on out-of-memory."""
    device = batch["input_ids"].device
    loss = None
    try:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = model(**batch).loss
        loss.backward()
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        # After an OOM in backward, loss still holds every activation: drop it before retrying.
        del loss
        model.zero_grad(set_to_none=True)
        release_memory(device)


def probe_micro_batch(
    model: Any,
    examples: Examples,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    batch_size: int,
) -> int:
    """Largest micro-batch <= batch_size whose step fits beside the optimizer state; halves on OOM.

    Real rows (the longest) as input, so every task's model gets the labels it expects.
    Dropout draws random numbers: the caller seeds (or restores the RNGs) after the probe.
    """
    micro = batch_size
    held = reserve_for_step(model, device)
    try:
        while micro >= 1:
            batch = examples.batch(longest_rows(examples, micro), device)
            try:
                if step_fits(model, batch, amp_dtype):
                    return micro
            except Exception as exc:
                width = batch["input_ids"].shape[1]
                raise ProbeFailed(
                    f"batch_size auto: trying a micro-batch of {micro} x {width} tokens failed "
                    f"with {type(exc).__name__}: {exc}"
                ) from exc
            finally:
                del batch
            micro //= 2
    finally:
        del held
        release_memory(device)
    width = examples.input_ids.shape[1]
    raise RuntimeError(
        f"one sequence of {width} tokens does not fit on {device}; use a smaller block_size "
        "or max_length, or training_method lora"
    )


def accumulation_for(batch_size: int, micro: int) -> int:
    """Accumulation steps that reach batch_size with micro-batches of at most micro."""
    return math.ceil(batch_size / micro)
