"""The worker's token cache: a second job on the same file skips tokenization, nothing else does."""

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from shared.catalog import find_base_model
from shared.settings import get_settings
from shared.spec import Hyperparameters, TaskOptions
from worker.training.data import tokenize_records
from worker.training.plan import Plan
from worker.training.task_plan import plan_task
from worker.training.token_cache import TokenizeTiming, timed_tokenization, tokenize_cached

TEXTS = [f"Record {i}: the quick brown fox jumps over {i} lazy dogs." for i in range(40)]
CPU = torch.device("cpu")
QA = [{"prompt": f"Q: {i} plus one? A:", "completion": f" {i + 1}"} for i in range(40)]


@pytest.fixture(autouse=True)
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GPT2FT_SCRATCH_DIR", str(tmp_path / "scratch"))
    get_settings.cache_clear()
    yield tmp_path / "scratch"
    get_settings.cache_clear()


def plan(models_dir: Path, task: str, records: list[dict[str, str]], **options: Any) -> Plan:
    base = find_base_model("gpt2-tiny", models_dir)
    assert base is not None
    task_options = TaskOptions(**{"packing": False, **options})
    return plan_task(Hyperparameters(n_epochs=1), base, task_options, task, records, None, seed=3)


def timed(
    models_dir: Path, task: str, records: list, **options: Any
) -> tuple[Plan, TokenizeTiming]:
    with timed_tokenization() as timing:
        result = plan(models_dir, task, records, **options)
    return result, timing


def same_examples(a: Plan, b: Plan) -> bool:
    left, right = a.train_examples, b.train_examples
    assert left is not None and right is not None
    return len(left) == len(right) and torch.equal(left.batch(torch.arange(len(left)), CPU)[
        "input_ids"], right.batch(torch.arange(len(right)), CPU)["input_ids"])  # fmt: skip


def test_a_second_job_on_the_same_records_reads_the_cache(models_dir: Path, scratch: Path) -> None:
    records = [{"text": t} for t in TEXTS]
    first, cold = timed(models_dir, "causal_lm", records)
    second, warm = timed(models_dir, "causal_lm", records)
    assert (cold.calls, cold.hits, cold.cached) == (1, 0, False)
    assert (warm.calls, warm.hits, warm.cached) == (1, 1, True)
    assert same_examples(first, second)
    assert len(list((scratch / "cache" / "tokens").glob("*.npz"))) == 1
    # Without a job's timing context nothing is cached: a plain plan tokenizes, writes nothing.
    plan(models_dir, "causal_lm", [{"text": t + "!"} for t in TEXTS])
    assert len(list((scratch / "cache" / "tokens").glob("*.npz"))) == 1


def test_a_changed_file_misses(models_dir: Path) -> None:
    timed(models_dir, "causal_lm", [{"text": t} for t in TEXTS])
    changed = [{"text": t} for t in TEXTS[:-1]] + [{"text": TEXTS[-1] + " One more word."}]
    _, timing = timed(models_dir, "causal_lm", changed)
    assert timing.hits == 0


def test_a_changed_task_misses_and_a_changed_length_rebuilds_from_the_cache(
    models_dir: Path,
) -> None:
    # The completion task reads other fields of the records than causal_lm: other texts.
    as_completion, cold = timed(models_dir, "completion", QA, max_length=32)
    as_text, other = timed(models_dir, "causal_lm", QA, max_length=32)
    assert cold.hits == 0 and other.hits == 0
    # max_length applies after tokenizing: the ids come from the cache, the examples are new
    # and the same as those planned with no cache at all.
    shorter, warm = timed(models_dir, "completion", QA, max_length=8)
    assert warm.cached
    assert same_examples(shorter, plan(models_dir, "completion", QA, max_length=8))
    assert not same_examples(shorter, as_completion)


def test_another_tokenizer_misses(models_dir: Path) -> None:
    location = str(models_dir / "gpt2-tiny")
    same = AutoTokenizer.from_pretrained(location)
    other = AutoTokenizer.from_pretrained(location)
    other.add_tokens(["quick brown"])
    with timed_tokenization() as timing:
        assert tokenize_cached(TEXTS, same) == tokenize_records(TEXTS, same)
        assert tokenize_cached(TEXTS, other) == tokenize_records(TEXTS, other)
        assert tokenize_cached(TEXTS, same) == tokenize_records(TEXTS, same)
    assert timing.hits == 1  # only the third call: the other tokenizer's ids differ
    assert tokenize_records(TEXTS, other) != tokenize_records(TEXTS, same)


def test_a_damaged_entry_is_tokenized_again(models_dir: Path, scratch: Path) -> None:
    location = str(models_dir / "gpt2-tiny")
    tokenizer = AutoTokenizer.from_pretrained(location)
    with timed_tokenization():
        tokenize_cached(TEXTS, tokenizer)
    (entry,) = (scratch / "cache" / "tokens").glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:50])  # a crash mid-write on a filesystem without rename
    with timed_tokenization() as timing:
        assert tokenize_cached(TEXTS, tokenizer) == tokenize_records(TEXTS, tokenizer)
    assert timing.hits == 0


def test_packed_plans_stream_through_the_cache(models_dir: Path, scratch: Path) -> None:
    """Packed causal LM: records read twice (hash, tokenize), the second job a hit, same blocks."""
    records = [{"text": text} for text in TEXTS]
    base = find_base_model("gpt2-tiny", models_dir)
    assert base is not None

    def packed() -> Plan:
        return plan_task(
            Hyperparameters(n_epochs=1, block_size=16), base, TaskOptions(), "causal_lm",
            records, None, seed=3,
        )  # fmt: skip

    uncached = packed()
    with timed_tokenization() as first:
        cold = packed()
    with timed_tokenization() as second:
        warm = packed()
    assert (first.calls, first.hits) == (1, 0)
    assert (second.calls, second.hits) == (1, 1)
    for plan_ in (cold, warm):
        assert (plan_.train_blocks == uncached.train_blocks).all()
        assert plan_.summary["corpus_tokens"] == uncached.summary["corpus_tokens"]
    (entry,) = (scratch / "cache" / "tokens").glob("*-stream-*.npz")
    entry.write_bytes(entry.read_bytes()[:50])
    with timed_tokenization() as damaged:
        assert (packed().train_blocks == uncached.train_blocks).all()
    assert damaged.hits == 0
