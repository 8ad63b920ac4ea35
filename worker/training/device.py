"""The training device: which one, its precision, and its memory (CUDA calls behind one seam)."""

import gc
from typing import Any

import torch

# Every CUDA call of this module goes through this name, so a test can stand a fake GPU in.
cuda: Any = torch.cuda


def pick_device(requested: str | None = None) -> torch.device:
    """requested, else the GPT2FT_DEVICE setting, else cuda when present, else cpu."""
    if not requested:
        from shared.settings import get_settings

        requested = get_settings().device
    if requested and requested != "auto":
        return torch.device(requested)
    return torch.device("cuda" if cuda.is_available() else "cpu")


def gpu_count() -> int:
    """CUDA devices this process sees (0 without CUDA)."""
    return int(cuda.device_count()) if cuda.is_available() else 0


def pick_amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU computes it natively, fp16 (with a GradScaler) on older GPUs, else None.

    including_emulation=False: a T4 "supports" bf16 only by emulation, several times slower.
    """
    if device.type != "cuda":
        return None
    native = cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native else torch.float16


def inference_dtype(device: torch.device) -> torch.dtype:
    """Weights for serving: 16-bit on a GPU (half the memory of fp32), fp32 on CPU."""
    return pick_amp_dtype(device) or torch.float32


def free_bytes(device: torch.device) -> int:
    """Memory a new job can use on a CUDA device: free, plus what this process holds unused.

    mem_get_info counts the caching allocator's reserved-but-unused blocks as taken; this
    process can reuse them, so they count as free here.
    """
    free, _total = cuda.mem_get_info(device)
    unused = cuda.memory_reserved(device) - cuda.memory_allocated(device)
    return int(free + max(0, unused))


def total_bytes(device: torch.device) -> int:
    """The device's whole memory."""
    return int(cuda.mem_get_info(device)[1])


def release_memory(device: torch.device | None = None) -> None:
    """Drop unreachable tensors and hand the allocator's cached blocks back to the driver.

    After a job, so the next one (or the inference process) sees the memory as free.
    """
    gc.collect()
    if (device is None or device.type == "cuda") and cuda.is_available():
        cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    """Start counting max_memory_allocated afresh (CUDA only)."""
    if device.type == "cuda":
        cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    """The most memory tensors held on device since reset_peak; None off CUDA."""
    if device.type != "cuda":
        return None
    return int(cuda.max_memory_allocated(device))


def enable_fast_matmul(device: torch.device) -> None:
    """TF32 for the fp32 matmuls autocast leaves (Ampere and newer; ignored before)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
