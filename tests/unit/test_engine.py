"""The training loop on gpt2-tiny: learning, checkpoints, stop reasons, exact resume."""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from shared.catalog import find_base_model
from shared.spec import Hyperparameters
from worker.training import engine
from worker.training.callbacks import RecordingCallbacks, StopReason
from worker.training.checkpoints import (
    STATE_FILE,
    latest_checkpoint,
    load_training_state,
    remove_partial_checkpoints,
)
from worker.training.engine import train
from worker.training.plan import Plan, plan_training

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Pack my box with five dozen liquor jugs. " * 3,
    "How vexingly quick daft zebras jump! " * 3,
] * 6


@dataclass
class StopAt(RecordingCallbacks):
    """Answers reason from the stop_after-th should_stop call on (0-based step count)."""

    stop_after: int = 0
    reason: StopReason = StopReason.cancel
    calls: int = 0

    def should_stop(self) -> StopReason | None:
        self.calls += 1
        return self.reason if self.calls > self.stop_after else None


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def plan(models_dir: Path) -> Plan:
    base = find_base_model("gpt2-tiny", models_dir)
    assert base is not None
    hp = Hyperparameters(n_epochs=3, batch_size=4, block_size=32, learning_rate=5e-3)
    return plan_training(hp, base, CORPUS, None, seed=11)


def run(plan: Plan, out: Path, callbacks: RecordingCallbacks, **kwargs):
    return train(
        plan.spec,
        plan.train_blocks,
        plan.valid_blocks,
        out / "checkpoints",
        out / "model",
        callbacks,
        **kwargs,
    )


def test_plan_fixture_shape(plan: Plan) -> None:
    assert (len(plan.train_blocks), len(plan.valid_blocks)) == (16, 2)
    assert plan.summary["steps_per_epoch"] == 4


def test_training_learns_and_saves_loadable_models(plan: Plan, tmp_path: Path) -> None:
    callbacks = RecordingCallbacks()
    result = run(plan, tmp_path, callbacks)

    assert result.stopped is None and result.step == 12
    assert result.trained_tokens == 3 * plan.train_tokens == 3 * 16 * 32
    assert result.model_dir == tmp_path / "model"
    valid_losses = [metrics["valid_loss"] for _, metrics in callbacks.evals]
    assert len(valid_losses) == 3
    assert valid_losses[2] < valid_losses[0] - 1.0, valid_losses
    assert callbacks.evals[0][1]["valid_perplexity"] == pytest.approx(
        2.718281828 ** valid_losses[0]
    )
    assert result.final_metrics["valid_loss"] == valid_losses[2]
    assert 0.0 <= result.final_metrics["valid_mean_token_accuracy"] <= 1.0

    assert [step for step, _ in callbacks.logs] == list(range(1, 13))
    first, last = callbacks.logs[0][1], callbacks.logs[-1][1]
    assert set(first) == {
        "step",
        "epoch",
        "train_loss",
        "train_mean_token_accuracy",
        "learning_rate",
        "grad_norm",
        "tokens_seen",
    }
    assert 0.0 <= first["train_mean_token_accuracy"] <= 1.0
    assert first["epoch"] == 0.25 and first["tokens_seen"] == 4 * 32
    assert last["train_loss"] < first["train_loss"] - 1.0
    learning_rates = [metrics["learning_rate"] for _, metrics in callbacks.logs]
    assert max(learning_rates) <= 5e-3 and learning_rates[-1] < learning_rates[2]
    assert "Epoch 1/3 done: valid_loss" in "\n".join(callbacks.messages)

    steps = [step for step, _, _ in callbacks.checkpoints]
    assert steps == [4, 8, 12]
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000004", "step-00000008", "step-00000012"]
    assert callbacks.checkpoints[1][2]["epoch"] == 2 and "valid_loss" in callbacks.checkpoints[1][2]
    checkpoint_model = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoints" / names[0])
    assert checkpoint_model.config.n_layer == 2

    final = tmp_path / "model"
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert (final / name).is_file(), name
    assert not (final / STATE_FILE).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    final_model = AutoModelForCausalLM.from_pretrained(final)
    saved = load_file(final / "model.safetensors")
    assert torch.equal(final_model.transformer.wte.weight, saved["transformer.wte.weight"])


def test_logged_steps_carry_the_gradient_norm_before_clipping(plan: Plan, tmp_path: Path) -> None:
    spec = plan.spec.model_copy(update={"n_epochs": 1, "max_grad_norm": 1e-3})
    callbacks = RecordingCallbacks()
    train(spec, plan.train_blocks, plan.valid_blocks, tmp_path / "c", tmp_path / "m", callbacks)
    norms = [metrics["grad_norm"] for _, metrics in callbacks.logs]
    assert len(norms) == 4 and len(set(norms)) == 4
    # Far above the clipping threshold: the norm as computed, not as clipped.
    assert all(1e-3 * 10 < norm < 1e3 for norm in norms), norms


def test_cancel_stops_within_a_step_and_writes_nothing(plan: Plan, tmp_path: Path) -> None:
    callbacks = StopAt(stop_after=2, reason=StopReason.cancel)
    result = run(plan, tmp_path, callbacks)
    assert (result.stopped, result.step, result.model_dir) == ("cancel", 2, None)
    assert result.trained_tokens == 2 * 4 * 32
    assert len(callbacks.logs) == 2 and callbacks.checkpoints == []
    assert not (tmp_path / "model").exists()


def test_lease_lost_writes_nothing_more(plan: Plan, tmp_path: Path) -> None:
    callbacks = StopAt(stop_after=6, reason=StopReason.lease_lost)
    result = run(plan, tmp_path, callbacks)
    assert (result.stopped, result.step) == ("lease_lost", 6)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000004"]
    assert not (tmp_path / "model").exists()


def test_shutdown_checkpoints_then_stops_like_a_pause(plan: Plan, tmp_path: Path) -> None:
    callbacks = StopAt(stop_after=6, reason=StopReason.shutdown)
    result = run(plan, tmp_path, callbacks)
    assert (result.stopped, result.step, result.model_dir) == (StopReason.shutdown, 6, None)
    assert [step for step, _, _ in callbacks.checkpoints] == [4, 6]


def test_pause_then_resume_matches_an_uninterrupted_run(plan: Plan, tmp_path: Path) -> None:
    spec = plan.spec.model_copy(update={"n_epochs": 2})
    two_epochs = Plan(spec, plan.train_blocks, plan.valid_blocks, plan.train_tokens)
    straight = RecordingCallbacks()
    run(two_epochs, tmp_path / "straight", straight)

    paused = StopAt(stop_after=6, reason=StopReason.pause)
    result = run(two_epochs, tmp_path / "paused", paused)
    assert (result.stopped, result.step, result.model_dir) == ("pause", 6, None)
    assert [step for step, _, _ in paused.checkpoints] == [4, 6]
    assert paused.checkpoints[1][2]["epoch"] == 1.5
    checkpoint = latest_checkpoint(tmp_path / "paused" / "checkpoints")
    assert checkpoint is not None and checkpoint.name == "step-00000006"
    assert load_training_state(checkpoint)["progress"]["step_in_epoch"] == 2

    resumed = RecordingCallbacks()
    result = run(two_epochs, tmp_path / "paused", resumed, resume_from=checkpoint)
    assert (result.stopped, result.step) == (None, 8)
    assert [step for step, _ in resumed.logs] == [7, 8]
    assert resumed.logs == straight.logs[6:]
    assert resumed.evals[-1][1]["valid_loss"] == straight.evals[-1][1]["valid_loss"]
    straight_weights = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    resumed_weights = load_file(tmp_path / "paused" / "model" / "model.safetensors")
    assert all(torch.equal(straight_weights[k], resumed_weights[k]) for k in straight_weights)


def test_without_validation_blocks_reports_train_loss(plan: Plan, tmp_path: Path) -> None:
    spec = plan.spec.model_copy(update={"n_epochs": 1})
    callbacks = RecordingCallbacks()
    result = train(spec, plan.train_blocks, [], tmp_path / "c", tmp_path / "m", callbacks)
    assert result.stopped is None and callbacks.evals == []
    assert any(m.startswith("Epoch 1/1 done: train_loss ") for m in callbacks.messages)
    assert "valid_loss" not in result.final_metrics and result.final_metrics["train_loss"] > 0


def test_latest_and_partial_checkpoints(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "missing") is None
    for name in ("step-00000002", "step-00000010", "step-00000009"):
        (tmp_path / name).mkdir()
        (tmp_path / name / STATE_FILE).write_bytes(b"x")
    (tmp_path / "step-00000011").mkdir()  # no state file: not a checkpoint
    (tmp_path / ".step-00000012-abc").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000010"
    assert remove_partial_checkpoints(tmp_path) == [tmp_path / ".step-00000012-abc"]
    assert not (tmp_path / ".step-00000012-abc").exists()


def test_command_line_trains_and_reports(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.training.__main__ import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(f'{{"text": "{line}"}}\n' for line in CORPUS))
    common = ["--model", str(models_dir / "gpt2-tiny"), "--train-file", str(corpus)]
    code = main([*common, "--output", str(tmp_path / "out"), "--n-epochs", "1",
                 "--batch-size", "4", "--block-size", "32", "--log-every", "2"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "Planned 1 epoch of 4 steps" in printed and "Epoch 1/1 done: valid_loss" in printed
    assert '"stopped": null' in printed and '"steps": 4' in printed
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()

    code = main([*common, "--output", str(tmp_path / "bad"), "--block-size", "4096"])
    assert code == 2
    assert "error: hyperparameters.block_size:" in capsys.readouterr().out


def test_checkpoint_every_steps_adds_mid_epoch_resume_points(plan: Plan, tmp_path: Path) -> None:
    spec = plan.spec.model_copy(update={"checkpoint_every_steps": 3})
    callbacks = RecordingCallbacks()
    train(spec, plan.train_blocks, plan.valid_blocks, tmp_path / "c", tmp_path / "m", callbacks)
    # 4 steps per epoch, 3 epochs: every 3rd step mid-epoch, plus each epoch end.
    assert [step for step, _, _ in callbacks.checkpoints] == [3, 4, 6, 8, 9, 12]
    assert latest_checkpoint(tmp_path / "c") == tmp_path / "c" / "step-00000012"


def test_gradient_checkpointing_trains_the_same(plan: Plan, tmp_path: Path) -> None:
    plain, recomputed = RecordingCallbacks(), RecordingCallbacks()
    spec = plan.spec.model_copy(update={"n_epochs": 1})
    train(spec, plan.train_blocks, plan.valid_blocks, tmp_path / "a", tmp_path / "am", plain)
    spec = spec.model_copy(update={"gradient_checkpointing": True})
    train(spec, plan.train_blocks, plan.valid_blocks, tmp_path / "b", tmp_path / "bm", recomputed)
    losses = [m["train_loss"] for _, m in plain.logs]
    assert [m["train_loss"] for _, m in recomputed.logs] == pytest.approx(losses, rel=1e-4)


def test_out_of_memory_checkpoints_and_resumes_with_smaller_micro_batches(
    plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = Plan(plan.spec.model_copy(update={"n_epochs": 2}), plan.train_blocks, [], 0)
    straight = RecordingCallbacks()
    run(plan, tmp_path / "straight", straight)

    real_step = engine.optimizer_step
    micro_batches: list[int] = []

    def step_that_runs_out(run_: Any, batch: Any, spec: Any) -> Any:
        # A fake CUDA OOM: another process took memory after step 5, and 4 rows no longer fit.
        micro = math.ceil(batch["input_ids"].shape[0] / spec.gradient_accumulation_steps)
        micro_batches.append(micro)
        if run_.progress.global_step >= 5 and micro > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(run_, batch, spec)

    monkeypatch.setattr(engine, "optimizer_step", step_that_runs_out)
    stopped = RecordingCallbacks()
    result = run(plan, tmp_path / "oom", stopped)
    assert (result.stopped, result.step, result.model_dir) == ("out_of_memory", 5, None)
    assert result.final_metrics == {"micro_batch_size": 4}
    assert [step for step, _, _ in stopped.checkpoints] == [4, 5]
    assert "Out of memory on cpu in step 6 with micro-batch 4: checkpointed at step 5" in (
        stopped.messages
    )

    checkpoint = latest_checkpoint(tmp_path / "oom" / "checkpoints")
    resumed = RecordingCallbacks()
    result = run(plan, tmp_path / "oom", resumed, resume_from=checkpoint, micro_batch_limit=2)
    assert (result.stopped, result.step) == (None, 8)
    assert set(micro_batches[6:]) == {2}  # every step after the resume: two halves of 4
    assert "2 accumulated micro-batches of 2 per step" in "\n".join(resumed.messages)
    # Two halves accumulate to the update of one batch of four: only dropout's masks differ
    # (drawn per micro-batch), so the run tracks the uninterrupted one closely.
    for (step, ours), (_, theirs) in zip(resumed.logs, straight.logs[5:], strict=True):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=0.01), step


def test_fused_loss_matches_the_models_own_loss_and_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from worker.training import fused_loss
    from worker.training.fused_loss import next_token_loss

    monkeypatch.setattr(fused_loss, "CHUNK_ELEMENTS", {"cpu": 16 * 1000})  # 8 chunks of 16 rows

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=1000, n_layer=1, n_head=2, n_embd=32, n_positions=64)
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 1000, (3, 40))
    labels = ids.clone()
    labels[0, :7] = -100  # a prompt the loss skips
    reference = model(input_ids=ids, labels=labels)
    reference.loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    predicted = reference.logits[:, :-1].argmax(-1)
    expected_correct = ((predicted == labels[:, 1:]) & (labels[:, 1:] != -100)).sum()
    model.zero_grad()

    hidden = model.transformer(input_ids=ids, use_cache=False).last_hidden_state
    summed, correct = next_token_loss(hidden, model.lm_head.weight, labels, torch.float32)
    counted = (labels[:, 1:] != -100).sum()
    (summed / counted).backward()

    assert float(summed / counted) == pytest.approx(float(reference.loss), rel=1e-5)
    assert int(correct) == int(expected_correct)
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, expected[name], rtol=1e-4, atol=1e-6), name


def test_bf16_final_validation_loss_within_2_percent_of_fp32(
    plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.training import plan as plan_module

    losses = {}
    for name, has_bf16 in (("bf16", True), ("fp32", False)):
        monkeypatch.setattr(plan_module, "cpu_has_bf16", lambda has=has_bf16: has)
        callbacks = RecordingCallbacks()
        result = run(plan, tmp_path / name, callbacks, device="cpu")
        said = [text for text in callbacks.messages if text.startswith("Precision:")]
        assert said and (name in said[0]), said
        losses[name] = result.final_metrics["valid_loss"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)
