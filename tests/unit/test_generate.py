"""Completions on gpt2-tiny: shape, n, max_tokens, stop, seeds, echo, the model cache."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import get_settings
from worker.training import generate as generation
from worker.training.generate import cut_at_stop, generate


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    get_settings.cache_clear()
    generation.clear_cache()
    yield
    generation.clear_cache()
    get_settings.cache_clear()


@pytest.fixture
def tiny(models_dir: Path) -> str:
    return str(models_dir / "gpt2-tiny")


def test_n_choices_per_prompt_in_prompt_major_order(tiny: str) -> None:
    result = generate(tiny, ["Hello", "The cat"], max_tokens=5, n=3, seed=1)
    choices = result["choices"]
    assert [c["index"] for c in choices] == list(range(6))
    assert all(c["text"] and c["finish_reason"] == "length" for c in choices)
    assert all(c["logprobs"] is None for c in choices)
    assert len({c["text"] for c in choices}) == 6  # sampling: different continuations
    assert result["usage"] == {"prompt_tokens": 1 + 2, "completion_tokens": 30, "total_tokens": 33}


def test_seed_reproduces_and_other_seeds_differ(tiny: str) -> None:
    first = generate(tiny, ["Hello"], max_tokens=8, seed=42)
    assert generate(tiny, ["Hello"], max_tokens=8, seed=42) == first
    assert generate(tiny, ["Hello"], max_tokens=8, seed=43) != first


def test_temperature_zero_is_greedy(tiny: str) -> None:
    result = generate(tiny, ["Hello"], max_tokens=6, temperature=0, n=2)
    texts = [c["text"] for c in result["choices"]]
    assert texts[0] == texts[1]
    assert generate(tiny, ["Hello"], max_tokens=6, temperature=0)["choices"][0]["text"] == texts[0]


def test_stop_string_cuts_the_text(tiny: str) -> None:
    free = generate(tiny, ["Hello"], max_tokens=12, temperature=0)["choices"][0]["text"]
    stop = free[3:5]  # a substring the greedy text is known to contain
    result = generate(tiny, ["Hello"], max_tokens=12, temperature=0, stop=[stop, "zzzzqqq"])
    choice = result["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == free[: free.index(stop)]
    assert result["usage"]["completion_tokens"] < 12


def test_echo_prefixes_the_prompt(tiny: str) -> None:
    plain = generate(tiny, ["Hello"], max_tokens=4, seed=3)["choices"][0]["text"]
    echoed = generate(tiny, ["Hello"], max_tokens=4, seed=3, echo=True)["choices"][0]["text"]
    assert echoed == "Hello" + plain


def test_prompt_too_long_for_the_context_says_so(tiny: str) -> None:
    with pytest.raises(ValueError, match="exceeds the model's context of 256 tokens"):
        generate(tiny, ["hello " * 250], max_tokens=16)


def test_cut_at_stop() -> None:
    assert cut_at_stop("a.b\nc", ["\n", "."]) == ("a", True)
    assert cut_at_stop("abc", ["x", ""]) == ("abc", False)


def test_model_cache_is_bounded(tiny: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT2FT_INFERENCE_CACHE_SIZE", "1")
    get_settings.cache_clear()
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    generate(tiny, ["Hi"], max_tokens=1)
    generate(str(copy), ["Hi"], max_tokens=1)
    assert generation._cache.locations() == [str(copy)]


def test_stop_strings_end_each_sampled_row_on_its_own(tiny: str) -> None:
    # GPT-2 text is full of spaces: most of the 4 sampled rows meet one early.
    result = generate(tiny, ["Hello"], max_tokens=24, n=4, seed=5, stop=[" "])
    stopped = [c for c in result["choices"] if c["finish_reason"] == "stop"]
    assert stopped and all(" " not in c["text"] for c in stopped)
    assert result["usage"]["completion_tokens"] < 4 * 24  # stopped rows generated no more


def test_generation_stops_at_the_deadline(tiny: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock that moves one second per look: a deadline 5 s away ends generation early."""
    start, looks = 1_000_000.0, []

    def clock() -> float:
        looks.append(1)
        return start + len(looks)

    monkeypatch.setattr(generation.time, "time", clock)
    with pytest.raises(generation.DeadlineExceeded, match="after 0 of 2 choices"):
        generate(tiny, ["Hello", "World"], max_tokens=200, temperature=0, deadline=start + 5)
    # The criteria looked once per token: about 5 tokens, not 200 (nor 400 for both prompts).
    assert len(looks) <= 7


def test_logprobs_are_the_models_log_softmax(tiny: str) -> None:
    """Each token's logprob and alternatives equal log_softmax of the raw logits of one
    plain forward pass over prompt + completion (the loop uses a KV cache and temperature)."""
    import torch

    result = generate(tiny, ["Hello world"], max_tokens=6, temperature=1.5, seed=2, logprobs=3)
    choice = result["choices"][0]
    entries = choice["logprobs"]
    model, tokenizer = generation.cached_model(tiny)
    prompt_ids = tokenizer("Hello world").input_ids
    new_ids = tokenizer(choice["text"]).input_ids
    assert "".join(e["token"] for e in entries) == choice["text"]
    assert len(entries) == len(new_ids) == 6
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + new_ids])).logits[0].float()
    expected = torch.log_softmax(logits, dim=-1)[len(prompt_ids) - 1 : -1]
    for entry, token_id, row in zip(entries, new_ids, expected, strict=True):
        assert abs(entry["logprob"] - float(row[token_id])) < 1e-4
        best = torch.topk(row, 3)
        assert [t["logprob"] for t in entry["top"]] == pytest.approx(best.values.tolist(), abs=1e-4)
        assert [t["token"] for t in entry["top"]] == [tokenizer.decode([i]) for i in best.indices]
    # text_offset counts from the prompt's start, as OpenAI's does.
    offsets = [e["offset"] for e in entries]
    assert offsets[0] == len("Hello world")
    assert [choice["text"][o - len("Hello world") :][:1] for o in offsets] == [
        e["token"][:1] for e in entries
    ]


def test_streamed_chunks_add_up_to_the_plain_answer(tiny: str) -> None:
    free = generate(tiny, ["Hello"], max_tokens=12, temperature=0)["choices"][0]["text"]
    stop = [free[5:7]]  # met mid-way: text held back while it may be a stop string is cut
    chunks: list[dict] = []
    kwargs = {"max_tokens": 12, "n": 3, "seed": 7, "stop": stop, "logprobs": 1}
    plain = generate(tiny, ["Hello", "A"], **kwargs)
    streamed = generate(tiny, ["Hello", "A"], **kwargs, on_chunk=chunks.append)
    assert streamed == plain
    for choice in plain["choices"]:
        mine = [c for c in chunks if c["index"] == choice["index"]]
        assert "".join(c["text"] for c in mine) == choice["text"]
        assert [c["finish_reason"] for c in mine][-1] == choice["finish_reason"]
        assert all(c["finish_reason"] is None for c in mine[:-1])
        assert sum(len(c["logprobs"]) for c in mine) == len(choice["logprobs"])
    greedy = generate(tiny, ["Hello"], max_tokens=12, temperature=0, stop=stop)["choices"][0]
    assert greedy["text"] == free[: free.index(stop[0])] and greedy["finish_reason"] == "stop"


def test_echo_with_logprobs_scores_the_prompt(tiny: str) -> None:
    result = generate(tiny, ["Hello big world"], max_tokens=2, echo=True, logprobs=0, seed=1)
    entries = result["choices"][0]["logprobs"]
    assert [e["token"] for e in entries[:3]] == ["Hello", " big", " world"]
    assert entries[0]["logprob"] is None and entries[1]["logprob"] < 0
    assert [e["offset"] for e in entries[:3]] == [0, 5, 9]


def test_held_back_keeps_what_may_still_become_a_stop_string_or_a_character() -> None:
    assert generation.held_back("hello wo", ["world"]) == 2
    assert generation.held_back("hello w", ["xyz", " wx", "w!"]) == 2  # the longest wins
    assert generation.held_back("hello", ["world"]) == 0
    assert generation.held_back("caf\ufffd", []) == 1  # the rest of the UTF-8 bytes is coming
    assert generation.held_back("ab", ["b"]) == 0  # a whole stop string is cut, not held
