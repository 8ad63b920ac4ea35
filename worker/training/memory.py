"""Training memory estimate from a GPT-2 config: weights, grads, AdamW states, activations."""

import os
from dataclasses import asdict, dataclass
from typing import Any

GIB = 1024**3
# AdamW keeps two fp32 moments per trainable parameter.
ADAM_BYTES = 8
# Korthikanti et al. (2022): ~34 bytes per token per hidden unit per layer at 16-bit, without
# the attention-score term that SDPA's fused kernels avoid storing.
ACTIVATION_FACTOR = 34
# Logits are float32 and kept three times over (logits, softmax, their gradient).
LOGIT_COPIES = 3
# CUDA context, allocator fragmentation, temporary buffers.
OVERHEAD = 1.2


@dataclass(frozen=True)
class ModelShape:
    """The few config numbers the estimate needs."""

    vocab: int
    positions: int
    width: int
    layers: int
    inner: int

    @classmethod
    def from_config(cls, config: Any) -> "ModelShape":
        """From a GPT2Config (or anything with its attribute names)."""
        width = int(config.n_embd)
        inner = getattr(config, "n_inner", None) or 4 * width
        return cls(int(config.vocab_size), int(config.n_positions), width, int(config.n_layer),
                   int(inner))  # fmt: skip


def block_parameters(shape: ModelShape) -> int:
    """One transformer block: attention, MLP and two layer norms."""
    d, f = shape.width, shape.inner
    attention = d * 3 * d + 3 * d + d * d + d
    mlp = d * f + f + f * d + d
    return attention + mlp + 4 * d


def total_parameters(shape: ModelShape) -> int:
    """Embeddings, blocks and the final layer norm (the head is tied to the embeddings)."""
    embeddings = shape.vocab * shape.width + shape.positions * shape.width
    return embeddings + shape.layers * block_parameters(shape) + 2 * shape.width


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


def estimate(
    shape: ModelShape, method: str, trainable: int, micro_batch: int, length: int, amp: bool
) -> dict[str, Any]:
    """Bytes for weights, grads, optimizer and activations, and their total with overhead."""
    weights = 4 * total_parameters(shape)
    if method == "transfer":
        weights += 4 * shape.vocab * shape.width  # the untied head copy
    elif method == "lora":
        weights += 4 * trainable
    act_bytes = 2 if amp else 4
    tokens = micro_batch * length
    activations = shape.layers * tokens * shape.width * ACTIVATION_FACTOR * act_bytes // 2
    logits = tokens * shape.vocab * 4 * LOGIT_COPIES
    parts = {
        "weights_bytes": weights,
        "gradients_bytes": 4 * trainable,
        "optimizer_bytes": ADAM_BYTES * trainable,
        "activations_bytes": activations + logits,
    }
    total = int(sum(parts.values()) * OVERHEAD)
    return {**parts, "total_bytes": total, "total_gib": round(total / GIB, 3),
            "micro_batch_size": micro_batch, "sequence_length": length,
            "precision": "bf16/fp16 autocast" if amp else "fp32"}  # fmt: skip


def available_bytes(device_type: str) -> int | None:
    """Free memory on the device: CUDA's free bytes, else the host's available RAM."""
    if device_type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
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
    return (
        f"training needs about {estimate_['total_gib']:.2f} GiB on {device} "
        f"(weights {estimate_['weights_bytes'] / GIB:.2f}, gradients "
        f"{estimate_['gradients_bytes'] / GIB:.2f}, optimizer "
        f"{estimate_['optimizer_bytes'] / GIB:.2f}, activations "
        f"{estimate_['activations_bytes'] / GIB:.2f} GiB for micro-batch "
        f"{estimate_['micro_batch_size']} x {estimate_['sequence_length']} tokens) but only "
        f"{available / GIB:.2f} GiB is free; use a smaller batch_size or block_size, more "
        f"gradient_accumulation_steps, or training_method lora"
    )


def as_dict(shape: ModelShape) -> dict[str, int]:
    """The shape as plain JSON."""
    return asdict(shape)


def memory_problem(estimate_: dict[str, Any], device_type: str) -> str | None:
    """Why the estimate cannot fit the device now, or None when it fits (or is unknown)."""
    available = available_bytes(device_type)
    if available is None or estimate_["total_bytes"] <= available:
        return None
    return fit_message(estimate_, available, device_type)
