"""Results: best checkpoint, early stopping, keep best/last, memorization fraction."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from shared.catalog import find_base_model
from shared.spec import Hyperparameters, MethodOptions
from worker.training.callbacks import RecordingCallbacks
from worker.training.checkpoints import checkpoint_name
from worker.training.engine import train
from worker.training.plan import plan_training, with_method
from worker.training.results import (
    BestState,
    memorization_figures,
    memorization_fraction,
    memorization_samples,
    should_stop_early,
    token_accuracy_counts,
    update_best,
)

CORPUS = ["The quick brown fox jumps over the lazy dog. " * 3,
          "Pack my box with five dozen liquor jugs. " * 3] * 4  # fmt: skip


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_best_tracking_and_patience() -> None:
    state = BestState()
    marks = [update_best(state, loss, step) for step, loss in enumerate([3.0, 2.0, 2.5, 2.0, 1.9])]
    assert marks == [True, True, False, False, True]
    assert (state.best_valid_loss, state.best_step, state.evals_since_best) == (1.9, 4, 0)
    update_best(state, 2.0, 5)
    assert not should_stop_early(state, 2) and not should_stop_early(state, None)
    update_best(state, 2.0, 6)
    assert should_stop_early(state, 2)


def test_memorization_fraction_on_a_constructed_case() -> None:
    train_blocks = [list(range(100, 140)), list(range(500, 520))]
    copied = [1, 2] + list(range(110, 118)) + [3]  # 8 training tokens in a row
    near = [1] + list(range(110, 117)) + [4, 5]  # only 7 in a row
    other = list(range(900, 930))
    spanning = list(range(516, 520)) + list(range(100, 104))  # crosses two blocks: not in data
    assert memorization_fraction([copied, near, other, spanning], train_blocks) == 0.25
    assert memorization_fraction([copied, copied], torch.tensor([list(range(100, 140))])) == 1.0
    assert memorization_fraction([], train_blocks) is None


def test_whitespace_and_punctuation_runs_are_not_memorization(tokenizer_dir: Path) -> None:
    from worker.training.tiny import load_bpe_tokenizer

    tokenizer = load_bpe_tokenizer(tokenizer_dir)
    # Licence text and indented code: runs of spaces, newlines and rules like "-----".
    source = "def f():\n" + "        \n" * 20 + "    return 1\n" + "-" * 40 + "\n" + " . , ;" * 20
    train_blocks = [tokenizer(source).input_ids]
    blank = tokenizer("        \n" * 6 + "-" * 30).input_ids
    dots = tokenizer(" . , ;" * 10).input_ids
    assert len(blank) >= 8 and len(dots) >= 8
    # Token ids alone: these match the training data (the figure was 1.0 for an untrained model).
    assert memorization_fraction([blank, dots], train_blocks) == 1.0
    # Their text is only whitespace and punctuation: nothing memorized.
    assert memorization_fraction([blank, dots], train_blocks, tokenizer=tokenizer) == 0.0
    # Words copied verbatim (with the indentation around them) still count.
    copied = tokenizer("        \n    return 1\n" + "-" * 10).input_ids
    assert memorization_fraction([copied], train_blocks, tokenizer=tokenizer) == 1.0


def test_token_accuracy_ignores_masked_labels() -> None:
    logits = torch.zeros(1, 4, 5)
    logits[0, 0, 2] = logits[0, 1, 3] = logits[0, 2, 0] = 1.0
    labels = torch.tensor([[9, 2, 3, -100]])
    correct, counted = token_accuracy_counts(logits, labels)
    assert (int(correct), int(counted)) == (2, 2)


def run(models_dir: Path, out: Path, prompts: tuple[str, ...] = (), **hp: object):
    base = find_base_model("gpt2-tiny", models_dir)
    assert base is not None
    values = {"n_epochs": 4, "batch_size": 4, "block_size": 32, **hp}
    plan = plan_training(Hyperparameters.model_validate(values), base, CORPUS, None, seed=2)
    plan = with_method(plan, MethodOptions(sample_prompts=list(prompts)))
    callbacks = RecordingCallbacks()
    result = train(plan.spec, plan.train_blocks, plan.valid_blocks, out / "ckpt", out / "model",
                   callbacks, device="cpu")  # fmt: skip
    return plan, result, callbacks


def test_diverging_run_stops_early_and_keeps_the_best(models_dir: Path, tmp_path: Path) -> None:
    # A huge constant learning rate makes validation loss worse after the first evaluation.
    plan, result, callbacks = run(models_dir, tmp_path, learning_rate=0.5, lr_scheduler="constant",
                                  warmup_ratio=0.0, early_stopping_patience=1, eval_every_steps=1,
                                  max_grad_norm=100)  # fmt: skip
    assert result.stopped is None
    losses = [m["valid_loss"] for _, m in callbacks.evals]
    assert len(losses) < plan.summary["total_steps"], losses
    early = [m for m in callbacks.messages if m.startswith("Early stopping:")]
    assert early and "has not improved for 1 evaluation" in early[0]
    final = result.final_metrics
    assert final["early_stopped"] is True and final["kept"] == "best"
    assert final["best_valid_loss"] == min(losses)
    # The final metrics are the last evaluation's, even when it fell mid-epoch.
    assert final["valid_loss"] == losses[-1] and final["step"] == callbacks.evals[-1][0]
    best = [(step, m) for step, _, m in callbacks.checkpoints if m.get("is_best")]
    assert best[-1][0] == final["best_step"]
    assert 0.0 <= final["memorization_fraction"] <= 1.0 and final["memorization_samples"] == 4
    assert 0.0 <= final["memorization_fraction_base"] <= 1.0
    assert final["memorization_increase"] == pytest.approx(
        final["memorization_fraction"] - final["memorization_fraction_base"]
    )
    kept = AutoModelForCausalLM.from_pretrained(result.model_dir).state_dict()
    ckpt = tmp_path / "ckpt" / checkpoint_name(final["best_step"])
    saved = AutoModelForCausalLM.from_pretrained(ckpt).state_dict()
    assert all(torch.equal(kept[name], saved[name]) for name in kept)
    assert "Training done" in callbacks.messages[-1] and "best (step" in callbacks.messages[-1]


def test_keep_last_and_sample_prompts(models_dir: Path, tmp_path: Path) -> None:
    _, result, callbacks = run(models_dir, tmp_path, ("The quick",), n_epochs=2, keep="last",
                               learning_rate=1e-3)  # fmt: skip
    assert result.final_metrics["kept"] == "last"
    samples = [m for m in callbacks.messages if m.startswith("Sample at step ")]
    assert len(samples) == 2 and "'The quick' -> " in samples[0]
    # The fine-tuned and the base model each answer the sample prompt once, with one seed.
    assert result.final_metrics["memorization_samples"] == 1
    assert result.final_metrics["train_mean_token_accuracy"] >= 0.0
    assert "from the last weights" in callbacks.messages[-1]


def test_a_model_trained_to_memorize_beats_its_base(models_dir: Path) -> None:
    from worker.training.model_loading import load_causal_lm, load_tokenizer

    location = str(models_dir / "gpt2-tiny")
    tokenizer = load_tokenizer(location)
    model = load_causal_lm(location, "cpu")
    ids = tokenizer("The quick brown fox jumps over the lazy dog and runs far away.").input_ids
    spec = SimpleNamespace(
        task="causal_lm",
        seed=1,
        method=SimpleNamespace(sample_prompts=["The quick brown", "The quick"]),
    )
    run = SimpleNamespace(model=model, tokenizer=tokenizer, device=torch.device("cpu"),
                          amp_dtype=None)  # fmt: skip
    base = memorization_samples(run, spec)
    # One sentence learnt by heart: its continuations repeat it; the random base's do not.
    batch = torch.tensor([ids])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    figures = memorization_figures(base, memorization_samples(run, spec), [ids], tokenizer)
    assert figures["memorization_fraction_base"] == 0.0
    assert figures["memorization_fraction"] >= 0.5
    assert figures["memorization_increase"] == figures["memorization_fraction"]
    assert figures["memorization_samples"] == 2
