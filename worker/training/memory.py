"""Training memory estimate from a GPT-2 config: weights, grads, AdamW states, activations."""

import os
from dataclasses import asdict
from typing import Any

# The shape and parameter counts are torch-free and shared with the API's storage estimate.
from shared.model_size import ModelShape, block_parameters, total_parameters

__all__ = ["ModelShape", "block_parameters", "total_parameters"]

GIB = 1024**3
# AdamW keeps two fp32 moments per trainable parameter.
ADAM_BYTES = 8
# Bytes autograd keeps per token, per hidden unit, per block of Hugging Face's GPT-2 on CUDA
# (SDPA attention, which stores no attention scores; gelu_new written in Python; dropout).
# Counted op by op, as Korthikanti et al. (2022) do for their 34 (all 16-bit, fused GeLU):
#   fp32:     layer-norm inputs 4+4, matmul inputs 4+4+4+16, q/k/v 12, attention output 4,
#             gelu_new's pow input, tanh output, 0.5*x and 1+tanh 16 each, dropout masks 1+1.
#   autocast: layer norms run (and keep their inputs) in fp32 4+4; 16-bit copies of matmul
#             inputs 2+2+2+8, q/k/v 6, attention output 2; autocast runs pow in fp32, so
#             gelu_new keeps 16+16+8+16 (its fp32 output is cast again for c_proj); masks 1+1.
ACTIVATION_BYTES = {"fp32": 118, "autocast": 88}
# Outside the blocks: the embedding dropout mask, ln_f's input and the head's input.
EDGE_BYTES = 9
# Per token per output logit at the loss's peak (backward of log_softmax): the logits the
# caller holds (bf16 under autocast), log_softmax's fp32 output, its gradient and the result.
LOGIT_BYTES = {"fp32": 16, "autocast": 14}
# CUDA context, allocator fragmentation, temporary buffers.
OVERHEAD = 1.2
PART_NAMES = ("weights", "weight_copies", "gradients", "optimizer", "activations")


def lora_parameters(shape: ModelShape, r: int, targets: list[str]) -> int:
    """A and B matrices: r x (fan_in + fan_out) per adapted Conv1D, per block."""
    d, f = shape.width, shape.inner
    sizes = {"c_attn": [(d, 3 * d)], "c_proj": [(d, d), (f, d)], "c_fc": [(d, f)]}
    per_block = sum(r * (i + o) for t in targets for i, o in sizes[t])
    return shape.layers * per_block


def trainable_parameters(shape: ModelShape, method: str, layers: int, lora: Any) -> int:
    """Parameters that get gradients and optimizer state under the method."""
    if method == "lora":
        return lora_parameters(shape, lora.r, list(lora.target_modules))
    if method == "transfer":
        # Top blocks, ln_f and the untied head.
        kept = min(layers, shape.layers)
        return kept * block_parameters(shape) + 2 * shape.width + shape.vocab * shape.width
    return total_parameters(shape)


def activation_bytes(
    shape: ModelShape, tokens: int, amp: bool, outputs: int | None = None
) -> tuple[int, int]:
    """(blocks, logits): what one forward keeps for backward, and the loss's peak on top.

    outputs: logits per token; the vocabulary for a language model, the labels for a classifier.
    """
    precision = "autocast" if amp else "fp32"
    per_token = shape.width * (shape.layers * ACTIVATION_BYTES[precision] + EDGE_BYTES)
    logits = (shape.vocab if outputs is None else outputs) * LOGIT_BYTES[precision]
    return tokens * per_token, tokens * logits


def estimate(
    shape: ModelShape,
    method: str,
    trainable: int,
    micro_batch: int,
    length: int,
    amp: bool,
    outputs: int | None = None,
) -> dict[str, Any]:
    """Bytes for weights, grads, optimizer and activations, and their total with overhead.

    peak_bytes is what torch.cuda.max_memory_allocated() should show after the first steps.
    """
    weights = 4 * total_parameters(shape)
    if method == "transfer":
        weights += 4 * shape.vocab * shape.width  # the untied head copy
    elif method == "lora":
        weights += 4 * trainable
    blocks, logits = activation_bytes(shape, micro_batch * length, amp, outputs)
    sizes = (
        weights,
        # Autocast casts each weight to 16 bits once per forward and keeps it for backward.
        2 * total_parameters(shape) if amp else 0,
        4 * trainable,
        ADAM_BYTES * trainable,
        blocks + logits,
    )
    parts = {f"{name}_bytes": size for name, size in zip(PART_NAMES, sizes, strict=True)}
    peak = sum(parts.values())
    total = int(peak * OVERHEAD)
    return {**parts, "peak_bytes": peak, "total_bytes": total, "total_gib": round(total / GIB, 3),
            "micro_batch_size": micro_batch, "sequence_length": length,
            "precision": "bf16/fp16 autocast" if amp else "fp32"}  # fmt: skip


def available_bytes(device: str) -> int | None:
    """Memory a job can use on device ("cuda:1", "cpu"): the GPU's, else the host's RAM."""
    if device.startswith("cuda"):
        import torch

        from worker.training.device import free_bytes

        return free_bytes(torch.device(device))
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def fit_message(estimate_: dict[str, Any], available: int, device: str) -> str:
    """Why a job cannot fit, with the numbers and what to change."""
    gib = {name: estimate_[f"{name}_bytes"] / GIB for name in PART_NAMES}
    return (
        f"training needs about {estimate_['total_gib']:.2f} GiB on {device} "
        f"(weights {gib['weights']:.2f} + 16-bit copies {gib['weight_copies']:.2f}, gradients "
        f"{gib['gradients']:.2f}, optimizer {gib['optimizer']:.2f}, activations "
        f"{gib['activations']:.2f} GiB for micro-batch "
        f"{estimate_['micro_batch_size']} x {estimate_['sequence_length']} tokens) but only "
        f"{available / GIB:.2f} GiB is free; use a smaller batch_size or block_size, more "
        f"gradient_accumulation_steps, or training_method lora"
    )


def as_dict(shape: ModelShape) -> dict[str, int]:
    """The shape as plain JSON."""
    return asdict(shape)


def memory_problem(estimate_: dict[str, Any], device: str) -> str | None:
    """Why the estimate cannot fit the device now, or None when it fits (or is unknown)."""
    available = available_bytes(device)
    if available is None or estimate_["total_bytes"] <= available:
        return None
    return fit_message(estimate_, available, device)
