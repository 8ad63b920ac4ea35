"""Pure data functions: tokenize, join, group, split."""

from pathlib import Path

import pytest

from worker.training.data import (
    count_tokens,
    group_texts,
    join_with_eos,
    split_blocks,
    tokenize_records,
)
from worker.training.tiny import load_bpe_tokenizer


def test_tokenize_records_adds_no_special_tokens(tokenizer_dir: Path) -> None:
    tokenizer = load_bpe_tokenizer(tokenizer_dir)
    assert tokenize_records(["hello world", "hello"], tokenizer) == [[31373, 995], [31373]]
    assert tokenize_records([], tokenizer) == []


def test_join_with_eos_ends_every_record() -> None:
    assert join_with_eos([[1, 2], [3], []], eos_id=9) == [1, 2, 9, 3, 9, 9]
    assert join_with_eos([], eos_id=9) == []


def test_group_texts_drops_the_remainder() -> None:
    assert group_texts(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert group_texts(list(range(8)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert group_texts([1, 2, 3], 4) == []
    with pytest.raises(ValueError):
        group_texts([1], 0)


def test_split_blocks_is_deterministic_and_disjoint() -> None:
    blocks = [[i, i] for i in range(20)]
    train, valid = split_blocks(blocks, 0.1, seed=7)
    assert (len(train), len(valid)) == (18, 2)
    assert sorted(train + valid) == blocks
    assert split_blocks(blocks, 0.1, seed=7) == (train, valid)
    assert split_blocks(blocks, 0.1, seed=8) != (train, valid)


def test_split_blocks_keeps_one_valid_block_and_one_train_block() -> None:
    assert [len(part) for part in split_blocks([[1], [2]], 0.01, seed=0)] == [1, 1]
    assert [len(part) for part in split_blocks([[1], [2]], 0.5, seed=0)] == [1, 1]
    assert [len(part) for part in split_blocks([[1]], 0.5, seed=0)] == [1, 0]
    train, valid = split_blocks([[1], [2], [3]], 0.0, seed=0)
    assert valid == [] and sorted(train) == [[1], [2], [3]]


def test_count_tokens() -> None:
    assert count_tokens([[1, 2], [3, 4]]) == 4
