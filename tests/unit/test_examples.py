"""Per-record, completion and classification examples: padding, masks, labels, losses."""

from pathlib import Path
from typing import Any

import pytest
import torch

from worker.training.classify import load_classifier, macro_f1
from worker.training.examples import (
    IGNORE,
    Examples,
    build_examples,
    classification_examples,
    completion_examples,
    pad_left,
    per_record_examples,
    sorted_labels,
    split_examples,
)
from worker.training.model_loading import load_causal_lm, load_tokenizer


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(models_dir: Path) -> str:
    return str(models_dir / "gpt2-tiny")


@pytest.fixture(scope="module")
def tokenizer(tiny: str) -> Any:
    return load_tokenizer(tiny)


def test_per_record_adds_bos_eos_pads_and_masks() -> None:
    examples = per_record_examples([[5, 6, 7], [8]], bos_id=1, eos_id=2, pad_id=0, max_length=8)
    assert examples.input_ids.tolist() == [[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]]
    assert examples.attention_mask is not None and examples.labels is not None
    assert examples.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert examples.labels.tolist() == [[1, 5, 6, 7, 2], [1, 8, 2, IGNORE, IGNORE]]
    assert examples.stats == {"truncated": 0, "padding_fraction": 2 / 10}


def test_per_record_truncates_at_max_length() -> None:
    examples = per_record_examples([list(range(10, 30)), [8]], 1, 2, 0, max_length=8)
    assert examples.input_ids.shape == (2, 8)
    assert examples.input_ids[0].tolist() == [1, *range(10, 17)]
    assert examples.stats["truncated"] == 1


def inputs(examples: Examples, row: int, labels: bool = True) -> dict[str, torch.Tensor]:
    """Row `row` with all of its padding (Examples.batch would trim it)."""
    assert examples.attention_mask is not None and examples.labels is not None
    mask = examples.attention_mask[row : row + 1]
    out = {
        "input_ids": examples.input_ids[row : row + 1],
        "attention_mask": mask,
        "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
    }
    return {**out, "labels": examples.labels[row : row + 1]} if labels else out


def test_pad_positions_do_not_count_in_the_loss(tiny: str) -> None:
    model = load_causal_lm(tiny, "cpu").eval()
    short = per_record_examples([[50, 51, 52, 53]], 0, 0, 0, max_length=16)
    padded = per_record_examples([[50, 51, 52, 53], list(range(60, 70))], 0, 0, 0, max_length=16)
    one, two = inputs(short, 0), inputs(padded, 0)
    assert two["input_ids"].shape[1] == 12 > one["input_ids"].shape[1] == 6
    assert two["labels"][0, 6:].tolist() == [IGNORE] * 6
    with torch.no_grad():
        assert torch.allclose(model(**one).loss, model(**two).loss, atol=1e-5)


def test_batch_trims_columns_that_are_padding_in_every_row() -> None:
    examples = per_record_examples([[5], [6, 7], list(range(10, 20))], 1, 2, 0, max_length=16)
    batch = examples.batch(torch.tensor([1, 0]), torch.device("cpu"))
    assert batch["input_ids"].tolist() == [[1, 6, 7, 2], [1, 5, 2, 0]]
    assert batch["labels"].tolist() == [[1, 6, 7, 2], [1, 5, 2, IGNORE]]
    left = classification_examples([[5], [6, 7], list(range(10, 20))], [0, 1, 0], 0, 16)
    batch = left.batch(torch.tensor([0, 1]), torch.device("cpu"))
    assert batch["input_ids"].tolist() == [[0, 5], [6, 7]] and batch["labels"].tolist() == [0, 1]
    assert batch["position_ids"].tolist() == [[0, 0], [0, 1]]


def test_completion_labels_only_the_completion() -> None:
    examples = completion_examples([[5, 6], [7]], [[8], [9, 10]], eos_id=2, pad_id=0, max_length=8)
    assert examples.input_ids.tolist() == [[5, 6, 8, 2], [7, 9, 10, 2]]
    assert examples.labels is not None
    assert examples.labels.tolist() == [[IGNORE, IGNORE, 8, 2], [IGNORE, 9, 10, 2]]


def test_completion_truncation_keeps_the_prompt_end_and_the_answer() -> None:
    examples = completion_examples([list(range(10, 20))], [[8, 9]], 2, 0, max_length=6)
    assert examples.input_ids.tolist() == [[17, 18, 19, 8, 9, 2]]
    assert examples.stats["truncated"] == 1


def test_pad_left_puts_real_tokens_last() -> None:
    ids, mask = pad_left([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_left_padding_gives_the_same_prediction_as_none(tiny: str) -> None:
    model = load_classifier(tiny, "cpu", ["a", "b", "c"]).eval()
    alone = classification_examples([[50, 51, 52]], [0], pad_id=0, max_length=16)
    batched = classification_examples([[50, 51, 52], list(range(60, 70))], [0, 1], 0, 16)
    one, two = inputs(alone, 0, labels=False), inputs(batched, 0, labels=False)
    assert (
        two["input_ids"].shape[1] == 10 and two["attention_mask"][0].tolist() == [0] * 7 + [1] * 3
    )
    with torch.no_grad():
        assert torch.allclose(model(**one).logits, model(**two).logits, atol=1e-5)


def test_sorted_labels_numbers_then_names() -> None:
    assert sorted_labels(["10", "2", "b", "a", "2"]) == ["2", "10", "a", "b"]


def test_macro_f1() -> None:
    assert macro_f1([0, 0, 1, 1], [0, 0, 1, 1], 2) == 1.0
    # label 0: tp 2, fp 1, fn 0 -> 4/5; label 1: tp 1, fp 0, fn 1 -> 2/3
    assert macro_f1([0, 0, 1, 0], [0, 1, 1, 0], 2) == pytest.approx((4 / 5 + 2 / 3) / 2)


def test_build_examples_and_split(tokenizer: Any) -> None:
    records = [{"text": f"review {i}", "label": "good" if i % 2 else "bad"} for i in range(10)]
    examples = build_examples("classification", records, tokenizer, 32, ["bad", "good"])
    assert examples.labels is not None and examples.labels.tolist() == [0, 1] * 5
    train, valid = split_examples(examples, 0.2, seed=3)
    assert (len(train), len(valid)) == (8, 2)
    assert sorted(train.labels.tolist() + valid.labels.tolist()) == [0] * 5 + [1] * 5  # type: ignore[union-attr]
