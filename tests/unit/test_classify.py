"""Each task through the engine on gpt2-tiny: it learns, checkpoints load, classify() answers."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from shared.catalog import find_base_model
from shared.spec import Hyperparameters, MethodOptions, TaskOptions
from worker.training.callbacks import RecordingCallbacks, StopReason
from worker.training.checkpoints import latest_checkpoint
from worker.training.classify import classify, is_classifier, load_for_task
from worker.training.engine import train
from worker.training.plan import Plan
from worker.training.task_plan import plan_task

POSITIVE = ["great movie, loved it", "wonderful and fun", "loved every minute", "great fun"]
NEGATIVE = ["awful film, hated it", "boring and bad", "hated every minute", "awful mess"]
LABELED = [{"text": t, "label": "pos"} for t in POSITIVE] + [
    {"text": t, "label": "neg"} for t in NEGATIVE
]
QA = [
    {"prompt": f"Q: what is {a} plus {b}? A:", "completion": f" {a + b}"}
    for a in range(1, 5)
    for b in range(1, 5)
]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def make_plan(models_dir: Path, task: str, records: list, valid: list | None, **hp) -> Plan:
    base = find_base_model("gpt2-tiny", models_dir)
    assert base is not None
    options = TaskOptions(packing=False, max_length=32)
    return plan_task(Hyperparameters(**hp), base, options, task, records, valid, seed=5)


def run(plan: Plan, out: Path) -> tuple[RecordingCallbacks, Path]:
    callbacks = RecordingCallbacks()
    result = train(
        plan.spec, plan.train_examples, plan.valid_examples,  # type: ignore[arg-type]
        out / "checkpoints", out / "model", callbacks,
    )  # fmt: skip
    assert result.stopped is None and result.model_dir is not None
    return callbacks, result.model_dir


def test_classification_learns_an_easy_two_label_set(models_dir: Path, tmp_path: Path) -> None:
    plan = make_plan(
        models_dir, "classification", LABELED * 3, LABELED,
        n_epochs=6, batch_size=8, learning_rate=3e-3, warmup_ratio=0.0,
    )  # fmt: skip
    assert plan.spec.labels == ["neg", "pos"] and plan.spec.task == "classification"
    assert "2 labels" in plan.message() and "0 records truncated" in plan.message()
    callbacks, model_dir = run(plan, tmp_path)

    first, last = callbacks.evals[0][1], callbacks.evals[-1][1]
    assert {"valid_loss", "valid_accuracy", "valid_macro_f1"} <= set(last)
    assert last["valid_loss"] < first["valid_loss"]
    assert last["valid_accuracy"] == 1.0 and last["valid_macro_f1"] == 1.0

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert model.config.id2label == {0: "neg", 1: "pos"} and model.config.pad_token_id is not None
    assert is_classifier(model_dir)
    checkpoint = sorted((tmp_path / "checkpoints").glob("step-*"))[-1]
    assert AutoModelForSequenceClassification.from_pretrained(checkpoint).config.num_labels == 2

    # Batched (left-padded, different lengths) like the API sends them; texts it was trained on.
    answers = classify(str(model_dir), [POSITIVE[0], NEGATIVE[3]])
    assert [a["label"] for a in answers] == ["pos", "neg"]
    assert set(answers[0]["probabilities"]) == {"neg", "pos"}
    assert sum(answers[0]["probabilities"].values()) == pytest.approx(1.0)
    # Alone, neither text is padded: the batch's left padding must not change an answer.
    for text, batched in zip([POSITIVE[0], NEGATIVE[3]], answers, strict=True):
        (alone,) = classify(str(model_dir), [text])
        assert alone["probabilities"] == pytest.approx(batched["probabilities"], abs=1e-5)


def test_completion_task_learns_and_saves_a_causal_lm(models_dir: Path, tmp_path: Path) -> None:
    plan = make_plan(
        models_dir, "completion", QA, QA[:4], n_epochs=4, batch_size=4, learning_rate=3e-3
    )
    assert plan.spec.task == "completion" and plan.spec.packing is False
    callbacks, model_dir = run(plan, tmp_path)
    losses = [metrics["valid_loss"] for _, metrics in callbacks.evals]
    assert losses[-1] < losses[0]
    assert not is_classifier(model_dir)
    assert AutoModelForCausalLM.from_pretrained(model_dir).config.n_positions > 0


def test_per_record_causal_lm_learns(models_dir: Path, tmp_path: Path) -> None:
    records = [{"text": r["text"]} for r in LABELED] * 2
    plan = make_plan(models_dir, "causal_lm", records, None, n_epochs=4, batch_size=4,
                     learning_rate=3e-3, validation_split=0.2)  # fmt: skip
    assert plan.spec.packing is False and plan.summary["padding_fraction"] > 0
    assert "per-record" in plan.message()
    callbacks, _ = run(plan, tmp_path)
    losses = [metrics["valid_loss"] for _, metrics in callbacks.evals]
    assert losses[-1] < losses[0]
    assert callbacks.logs[-1][1]["tokens_seen"] < 4 * plan.summary["train_examples"] * 32


def test_transfer_classifier_trains_top_block_and_head_only(models_dir: Path) -> None:
    plan = make_plan(models_dir, "classification", LABELED, None, n_epochs=1)
    plan.spec.method = MethodOptions(training_method="transfer", trainable_layers=1)
    model = load_for_task(plan.spec, torch.device("cpu"), None)
    assert (
        model.score.weight.requires_grad
        and model.transformer.h[-1].attn.c_attn.weight.requires_grad
    )
    assert not model.transformer.wte.weight.requires_grad
    assert not model.transformer.h[0].attn.c_attn.weight.requires_grad


def test_lora_classifier_learns_saves_adapter_and_merged_model_and_resumes(
    models_dir: Path, tmp_path: Path
) -> None:
    plan = make_plan(
        models_dir, "classification", LABELED * 3, LABELED,
        n_epochs=6, batch_size=8, learning_rate=1e-2, warmup_ratio=0.0,
    )  # fmt: skip
    plan.spec.method = MethodOptions(training_method="lora", lora={"r": 4, "alpha": 8})
    model = load_for_task(plan.spec, torch.device("cpu"), None)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    # The adapter and the (fully trained) score head; no base weight.
    assert any("lora_A" in name for name in trainable)
    assert any("score" in name and "lora" not in name for name in trainable)
    assert not any("wte" in name or name.endswith("c_attn.weight") for name in trainable)

    callbacks, model_dir = run(plan, tmp_path)
    first, last = callbacks.evals[0][1], callbacks.evals[-1][1]
    assert last["valid_loss"] < first["valid_loss"] and last["valid_accuracy"] == 1.0

    # The merged model is a plain classifier; the adapter (with its head) sits beside it.
    assert is_classifier(model_dir)
    merged = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert merged.config.id2label == {0: "neg", 1: "pos"}
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in (model_dir / "adapter").iterdir()
    }
    answers = classify(str(model_dir), [POSITIVE[0], NEGATIVE[3]])
    assert [a["label"] for a in answers] == ["pos", "neg"]

    # The adapter applied to the base gives the merged model's answers.
    from peft import PeftModel

    from worker.training.classify import load_classifier

    base = load_classifier(plan.spec.model_location, "cpu", ["neg", "pos"])
    adapted = PeftModel.from_pretrained(base, model_dir / "adapter").eval()
    ids = torch.tensor([[31373, 995]])
    with torch.no_grad():
        assert torch.allclose(
            adapted(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4
        )

    # Resume from a mid-run checkpoint: the head comes back from the adapter, not fresh.
    paused = PauseAfter(steps=2)
    args = (plan.spec, plan.train_examples, plan.valid_examples)
    result = train(*args, tmp_path / "p" / "c", tmp_path / "p" / "m", paused)  # type: ignore[arg-type]
    assert (result.stopped, result.step) == ("pause", 2)
    resumed = RecordingCallbacks()
    checkpoint = latest_checkpoint(tmp_path / "p" / "c")
    result = train(
        *args, tmp_path / "p" / "c", tmp_path / "p" / "m", resumed, resume_from=checkpoint
    )  # type: ignore[arg-type]
    assert result.stopped is None
    assert resumed.logs == callbacks.logs[2:]


@dataclass
class PauseAfter(RecordingCallbacks):
    """Answers "pause" from the (steps+1)-th should_stop call on."""

    steps: int = 0
    calls: int = 0

    def should_stop(self) -> StopReason | None:
        self.calls += 1
        return StopReason.pause if self.calls > self.steps else None


def test_classifier_pause_then_resume_matches(models_dir: Path, tmp_path: Path) -> None:
    plan = make_plan(models_dir, "classification", LABELED, LABELED[::2], n_epochs=2,
                     batch_size=4, learning_rate=3e-3)  # fmt: skip
    straight = RecordingCallbacks()
    args = (plan.spec, plan.train_examples, plan.valid_examples)
    train(*args, tmp_path / "a" / "c", tmp_path / "a" / "m", straight)  # type: ignore[arg-type]
    paused = PauseAfter(steps=3)
    result = train(*args, tmp_path / "b" / "c", tmp_path / "b" / "m", paused)  # type: ignore[arg-type]
    assert (result.stopped, result.step) == ("pause", 3)
    checkpoint = latest_checkpoint(tmp_path / "b" / "c")
    resumed = RecordingCallbacks()
    result = train(
        *args, tmp_path / "b" / "c", tmp_path / "b" / "m", resumed, resume_from=checkpoint
    )  # type: ignore[arg-type]
    assert (result.stopped, result.step) == (None, 4)
    assert resumed.logs == straight.logs[3:]
    assert resumed.evals[-1][1]["valid_accuracy"] == straight.evals[-1][1]["valid_accuracy"]
    assert resumed.evals[-1][1]["valid_loss"] == straight.evals[-1][1]["valid_loss"]


def test_command_line_trains_a_classifier_from_csv(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.training.__main__ import main

    csv = tmp_path / "reviews.csv"
    csv.write_text("text,label\n" + "".join(f'"{r["text"]}",{r["label"]}\n' for r in LABELED))
    common = ["--model", str(models_dir / "gpt2-tiny"), "--train-file", str(csv)]
    code = main([*common, "--output", str(tmp_path / "out"), "--n-epochs", "1",
                 "--batch-size", "4", "--max-length", "32"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "Planned classification (one example per record, 2 labels)" in printed
    assert is_classifier(tmp_path / "out" / "model")

    code = main([*common, "--output", str(tmp_path / "bad"), "--task", "completion"])
    assert code == 2
    assert 'needs "prompt", "completion" records' in capsys.readouterr().out
