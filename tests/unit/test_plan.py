"""Plan resolution: auto values, shrinking blocks to small corpora, errors naming the param."""

from pathlib import Path

import pytest

from shared.catalog import find_base_model
from shared.spec import Hyperparameters, auto_batch_size, auto_epochs
from worker.training.plan import PlanError, plan_training

SENTENCE = "The quick brown fox jumps over the lazy dog. "


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tiny(models_dir: Path):
    base = find_base_model("gpt2-tiny", models_dir)
    assert base is not None
    return base


def test_auto_values_on_a_large_corpus(models_dir: Path) -> None:
    texts = [SENTENCE * 20] * 20  # 20 records of 201 tokens + EOS = 4040 tokens
    plan = plan_training(Hyperparameters(), tiny(models_dir), texts, None, seed=3)
    spec = plan.spec
    assert spec.block_size == 256  # min(1024, n_positions=256)
    n_blocks = 4040 // 256
    assert len(plan.train_blocks) + len(plan.valid_blocks) == n_blocks
    assert len(plan.valid_blocks) == round(n_blocks * 0.1)
    assert spec.batch_size == auto_batch_size(len(plan.train_blocks))
    assert spec.n_epochs == auto_epochs(len(plan.train_blocks))
    assert spec.learning_rate == pytest.approx(1e-3)  # gpt2-tiny's gpt2ft.json
    assert spec.learning_rate_multiplier == 1.0
    assert spec.seed == 3 and spec.validation_split == 0.1
    assert plan.train_tokens == 256 * len(plan.train_blocks)
    assert plan.summary["total_steps"] == plan.summary["steps_per_epoch"] * spec.n_epochs
    assert plan.summary["corpus_tokens"] == 4040
    assert "training blocks" in plan.message()
    assert "packed: 0 records truncated, 0% of token slots are padding" in plan.message()
    assert plan.summary["dropped_tokens"] == 4040 % 256


def test_small_corpus_shrinks_the_block_to_give_two_blocks(models_dir: Path) -> None:
    plan = plan_training(Hyperparameters(), tiny(models_dir), [SENTENCE * 4], None, seed=0)
    assert plan.summary["corpus_tokens"] == 42  # 41 + EOS
    assert plan.spec.block_size == 21
    assert (len(plan.train_blocks), len(plan.valid_blocks)) == (1, 1)


def test_explicit_values_win(models_dir: Path) -> None:
    hp = Hyperparameters(n_epochs=2, batch_size=3, block_size=32, learning_rate_multiplier=0.5)
    plan = plan_training(hp, tiny(models_dir), [SENTENCE * 40], None, seed=0)
    spec = plan.spec
    assert (spec.n_epochs, spec.batch_size, spec.block_size) == (2, 3, 32)
    assert spec.learning_rate == pytest.approx(5e-4)
    assert all(len(block) == 32 for block in plan.train_blocks + plan.valid_blocks)


def test_validation_file_replaces_the_split(models_dir: Path) -> None:
    hp = Hyperparameters(block_size=16)
    plan = plan_training(hp, tiny(models_dir), [SENTENCE * 10], [SENTENCE * 4], seed=0)
    assert plan.spec.validation_split == 0.0
    assert len(plan.train_blocks) == 102 // 16
    assert len(plan.valid_blocks) == 42 // 16


def test_block_size_longer_than_the_corpus_names_the_param(models_dir: Path) -> None:
    hp = Hyperparameters(block_size=128)
    with pytest.raises(PlanError) as caught:
        plan_training(hp, tiny(models_dir), [SENTENCE * 4], None, seed=0)
    assert caught.value.param == "hyperparameters.block_size"
    assert "42 tokens" in str(caught.value)


def test_block_size_longer_than_the_context_names_the_param(models_dir: Path) -> None:
    hp = Hyperparameters(block_size=512)
    with pytest.raises(PlanError) as caught:
        plan_training(hp, tiny(models_dir), [SENTENCE * 100], None, seed=0)
    assert caught.value.param == "hyperparameters.block_size"
    assert "256" in str(caught.value)


def test_tiny_training_file_is_refused(models_dir: Path) -> None:
    with pytest.raises(PlanError) as caught:
        plan_training(Hyperparameters(), tiny(models_dir), ["hello world"], None, seed=0)
    assert caught.value.param == "training_file"
    assert "3 tokens" in str(caught.value) and "add more text" in str(caught.value)
