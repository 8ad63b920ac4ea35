"""batch_size auto's micro-batch probe: every task's real model and rows, OOM back-off, errors."""

import gc
import weakref
from pathlib import Path

import pytest
import torch

from shared.catalog import find_base_model
from shared.spec import Hyperparameters, TaskOptions
from worker.training.classify import load_for_task
from worker.training.examples import Examples
from worker.training.plan import Plan
from worker.training.probe import (
    ProbeFailed,
    accumulation_for,
    longest_rows,
    probe_micro_batch,
    reserve_for_step,
)
from worker.training.task_plan import plan_task

CPU = torch.device("cpu")
TEXTS = [f"record {i}: " + "words " * (i % 7 + 1) for i in range(24)]
RECORDS = {
    "causal_lm": [{"text": t} for t in TEXTS],
    "completion": [{"prompt": t, "completion": " done"} for t in TEXTS],
    "classification": [{"text": t, "label": "ab"[i % 2]} for i, t in enumerate(TEXTS)],
}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def task_plan(models_dir: Path, task: str, packing: bool) -> Plan:
    base = find_base_model("gpt2-tiny", models_dir)
    assert base is not None
    hp = Hyperparameters(batch_size="auto", block_size=16 if packing else None)
    options = TaskOptions(task=task, packing=packing, max_length=None if packing else 48)
    return plan_task(hp, base, options, task, RECORDS[task] * 4, None, seed=3)


@pytest.mark.parametrize(
    ("task", "packing"),
    [("causal_lm", True), ("causal_lm", False), ("completion", False), ("classification", False)],
)
def test_probe_runs_a_real_step_for_every_task(models_dir: Path, task: str, packing: bool) -> None:
    plan = task_plan(models_dir, task, packing)
    assert plan.spec.probe_micro_batch and plan.train_examples is not None
    model = load_for_task(plan.spec, CPU, None)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    micro = probe_micro_batch(model, plan.train_examples, CPU, None, 8)
    assert micro == 8
    # The probe leaves no gradients behind and changes no weight.
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


class OomAbove(torch.nn.Module):
    """A model whose forward runs out of memory above `limit` rows (a fake CUDA OOM)."""

    def __init__(self, limit: int, error: Exception | None = None) -> None:
        super().__init__()
        self.limit, self.error = limit, error
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.tried: list[int] = []

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, **_: torch.Tensor):
        self.tried.append(input_ids.shape[0])
        if self.error is not None:
            raise self.error
        if input_ids.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return type("Out", (), {"loss": (self.weight * input_ids.float().sum()).sum()})()


def blocks(rows: int, length: int = 16) -> Examples:
    return Examples(torch.zeros((rows, length), dtype=torch.long))


def test_probe_backs_off_to_what_fits() -> None:
    model = OomAbove(limit=3)
    micro = probe_micro_batch(model, blocks(5), CPU, None, 16)
    assert (micro, model.tried) == (2, [16, 8, 4, 2])
    assert model.weight.grad is None
    assert accumulation_for(16, micro) == 8 and accumulation_for(6, 4) == 2
    with pytest.raises(RuntimeError, match="one sequence of 16 tokens does not fit"):
        probe_micro_batch(OomAbove(limit=0), blocks(5), CPU, None, 4)


def test_a_non_memory_error_is_reported_not_halved() -> None:
    model = OomAbove(limit=99, error=ValueError("labels have the wrong shape"))
    with pytest.raises(ProbeFailed) as caught:
        probe_micro_batch(model, blocks(5), CPU, None, 8)
    assert model.tried == [8]
    message = str(caught.value)
    assert "micro-batch of 8 x 16 tokens" in message
    assert "ValueError: labels have the wrong shape" in message


class OomInBackward(torch.nn.Module):
    """Runs out of memory in backward above `limit` rows; records whether the last try's
    activations were still alive when the next forward began."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.previous: weakref.ref | None = None
        self.alive_at_next_forward: list[bool] = []

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, **_: torch.Tensor):
        gc.collect()
        self.alive_at_next_forward.append(self.previous is not None and self.previous() is not None)
        activations = self.weight * torch.ones(input_ids.shape[0], 1000)
        self.previous = weakref.ref(activations)
        rows = input_ids.shape[0]
        limit = self.limit

        class Explode(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):  # type: ignore[override]
                return x.clone()

            @staticmethod
            def backward(ctx, grad):  # type: ignore[override]
                if rows > limit:
                    raise torch.OutOfMemoryError("CUDA out of memory in backward (simulated)")
                return grad

        return type("Out", (), {"loss": Explode.apply(activations).sum()})()


def test_activations_of_a_failed_backward_are_freed_before_the_retry() -> None:
    model = OomInBackward(limit=2)
    assert probe_micro_batch(model, blocks(4), CPU, None, 8) == 2
    assert model.alive_at_next_forward == [False, False, False]


def test_the_probe_holds_room_for_the_optimizer_state(models_dir: Path) -> None:
    plan = task_plan(models_dir, "causal_lm", True)
    model = load_for_task(plan.spec, CPU, None)
    held = reserve_for_step(model, CPU)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(t.numel() * t.element_size() for t in held) == 8 * trainable  # AdamW's moments


def test_longest_rows_pick_the_widest_example() -> None:
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    examples = Examples(torch.zeros((3, 4), dtype=torch.long), mask, torch.zeros(3))
    assert longest_rows(examples, 3).tolist() == [1, 1, 1]
    assert longest_rows(blocks(2), 2).tolist() == [0, 0]
