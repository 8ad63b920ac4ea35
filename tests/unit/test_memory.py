"""Memory estimate arithmetic against measured activations, the fit check, free GPU memory."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from shared.spec import LoraOptions
from tests.fake_cuda import FakeCuda
from worker.training import device as device_module
from worker.training.device import free_bytes
from worker.training.memory import (
    ACTIVATION_BYTES,
    GIB,
    ModelShape,
    available_bytes,
    estimate,
    memory_problem,
    total_parameters,
    trainable_parameters,
)

GPT2 = ModelShape.from_config(GPT2Config())


def test_parameter_counts_match_gpt2() -> None:
    assert total_parameters(GPT2) == 124_439_808  # GPT-2 small, as published
    assert trainable_parameters(GPT2, "full", 0, None) == 124_439_808
    lora = LoraOptions(r=8, target_modules=["c_attn"])
    assert trainable_parameters(GPT2, "lora", 0, lora) == 12 * 8 * (768 + 3 * 768)
    top_two = trainable_parameters(GPT2, "transfer", 2, None)
    assert top_two == 2 * 7_087_872 + 2 * 768 + 50257 * 768


def test_estimate_scales_with_method_and_batch() -> None:
    full = estimate(GPT2, "full", total_parameters(GPT2), 8, 1024, amp=True)
    assert full["optimizer_bytes"] == 8 * 124_439_808
    assert full["weight_copies_bytes"] == 2 * 124_439_808  # autocast's bf16 copies
    # gpt2 at 8 x 1024 under autocast: 88 bytes per token, hidden unit and block (gelu_new
    # alone keeps 56 of them) and 14 per logit: 6.2 GiB + 5.4 GiB of activations.
    assert full["activations_bytes"] == 8192 * (768 * (12 * 88 + 9) + 50257 * 14)
    assert 16 < full["total_gib"] < 17  # needs a 24 GB card, or the probe's accumulation
    assert full["total_bytes"] == int(full["peak_bytes"] * 1.2)
    lora = estimate(GPT2, "lora", 294_912, 8, 1024, amp=True)
    assert lora["optimizer_bytes"] < full["optimizer_bytes"] / 100
    half = estimate(GPT2, "full", total_parameters(GPT2), 4, 1024, amp=True)
    assert half["activations_bytes"] * 2 == full["activations_bytes"]


def test_memory_problem_names_the_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.training.memory.available_bytes", lambda _device: 2 * 1024**3)
    full = estimate(GPT2, "full", total_parameters(GPT2), 8, 1024, amp=False)
    problem = memory_problem(full, "cpu")
    assert problem is not None and "only 2.00 GiB is free" in problem
    assert "training_method lora" in problem
    small = estimate(GPT2, "lora", 294_912, 1, 64, amp=False)
    assert memory_problem(small, "cpu") is None


def measured_block_bytes(width: int, layers: int, tokens_per_row: int = 64) -> float:
    """Bytes autograd saves per token and hidden unit, for the blocks only, in fp32 on CPU."""
    config = GPT2Config(n_layer=layers, n_embd=width, n_head=4, n_positions=tokens_per_row,
                        attn_pdrop=0.0, attn_implementation="sdpa")  # fmt: skip
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        # Per-token tensors only (first dimension the batch): weights' copies are not activations.
        if storage.data_ptr() not in weights and tensor.dim() >= 2 and tensor.shape[0] == 2:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.zeros((2, tokens_per_row), dtype=torch.long)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(input_ids=ids, labels=ids)
    return sum(saved.values()) / (2 * tokens_per_row * width)


def test_block_activations_match_what_autograd_saves() -> None:
    # Two models differing by two blocks: the difference is two blocks' activations.
    per_block = (measured_block_bytes(256, 3) - measured_block_bytes(256, 1)) / 2
    # CPU kernels save a little less than CUDA's (no dropout in attention, its own SDPA): the
    # fp32 count must be near, and must not be the 2 x 34 of a 16-bit, fused-GeLU model.
    assert 0.8 * ACTIVATION_BYTES["fp32"] <= per_block <= 1.05 * ACTIVATION_BYTES["fp32"], per_block
    assert per_block > 1.3 * 2 * 34


def test_the_check_with_the_probe_on_is_for_one_example() -> None:
    one = estimate(GPT2, "full", total_parameters(GPT2), 1, 1024, amp=True)
    eight = estimate(GPT2, "full", total_parameters(GPT2), 8, 1024, amp=True)
    assert one["activations_bytes"] * 8 == eight["activations_bytes"]
    assert one["total_gib"] < 5 < eight["total_gib"]


def test_memory_this_process_holds_unused_counts_as_free(monkeypatch: pytest.MonkeyPatch) -> None:
    # A previous job left 30 GiB reserved in the caching allocator, 2 GiB of it in use.
    fake = FakeCuda(free=10 * GIB, total=80 * GIB, reserved=30 * GIB, allocated=2 * GIB)
    monkeypatch.setattr(device_module, "cuda", fake)
    assert free_bytes(torch.device("cuda")) == 38 * GIB
    assert available_bytes("cuda:0") == 38 * GIB
    job = estimate(GPT2, "full", total_parameters(GPT2), 8, 1024, amp=True)  # 16.4 GiB
    assert memory_problem(job, "cuda:0") is None
    # Nothing cached: only what mem_get_info calls free (all that counted before the fix).
    fake.memory["reserved"] = fake.memory["allocated"]
    assert "only 10.00 GiB is free" in (memory_problem(job, "cuda:0") or "")
