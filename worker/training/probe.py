"""batch_size "auto" on CUDA: the largest micro-batch that fits, found by trying one step."""

import math
from typing import Any

import torch


def probe_micro_batch(
    model: Any, device: torch.device, amp_dtype: torch.dtype | None, length: int, batch_size: int
) -> int:
    """Largest micro-batch <= batch_size whose forward and backward fit; halves on OOM.

    Zeros as input: no random draw, so the run's RNG streams are untouched.
    """
    micro = batch_size
    while micro >= 1:
        try:
            ids = torch.zeros((micro, length), dtype=torch.long, device=device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            return micro
        except torch.cuda.OutOfMemoryError:
            micro //= 2
        finally:
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    raise RuntimeError(
        f"one sequence of {length} tokens does not fit on {device}; use a smaller block_size "
        "or max_length, or training_method lora"
    )


def accumulation_for(batch_size: int, micro: int) -> int:
    """Accumulation steps that reach batch_size with micro-batches of at most micro."""
    return math.ceil(batch_size / micro)
