"""Memory estimate arithmetic, the fit check, and the CUDA micro-batch probe's back-off."""

import pytest
import torch
from transformers import GPT2Config

from shared.spec import LoraOptions
from worker.training.memory import (
    ModelShape,
    estimate,
    memory_problem,
    total_parameters,
    trainable_parameters,
)
from worker.training.probe import accumulation_for, probe_micro_batch

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
    assert 8 < full["total_gib"] < 16  # gpt2 at batch 8 x 1024 fits a 24 GB card, not 8 GB
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


class OomAbove(torch.nn.Module):
    """A model whose forward runs out of memory above `limit` rows."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.weight, self.tried = limit, torch.nn.Parameter(torch.ones(1)), []

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor):
        self.tried.append(input_ids.shape[0])
        if input_ids.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return type("Out", (), {"loss": (self.weight * input_ids.float().sum()).sum()})()


def test_probe_backs_off_to_what_fits() -> None:
    model = OomAbove(limit=3)
    micro = probe_micro_batch(model, torch.device("cpu"), None, 16, 16)
    assert (micro, model.tried) == (2, [16, 8, 4, 2])
    assert model.weight.grad is None
    assert accumulation_for(16, micro) == 8 and accumulation_for(6, 4) == 2
    with pytest.raises(RuntimeError, match="does not fit"):
        probe_micro_batch(OomAbove(limit=0), torch.device("cpu"), None, 16, 4)
