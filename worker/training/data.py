"""Pure data functions: text records to fixed-size token blocks (run_clm's recipe)."""

import random
from collections.abc import Sequence
from typing import Any


def tokenize_records(texts: list[str], tokenizer: Any) -> list[list[int]]:
    """Token ids of each record, with no special tokens added."""
    if not texts:
        return []
    # One batched call: the fast tokenizer parallelises across records in Rust.
    encoded = tokenizer(texts, add_special_tokens=False)
    return [list(ids) for ids in encoded["input_ids"]]


def join_with_eos(token_lists: list[list[int]], eos_id: int) -> list[int]:
    """One stream of ids with EOS after each record, so the model learns where records end."""
    joined: list[int] = []
    for ids in token_lists:
        joined.extend(ids)
        joined.append(eos_id)
    return joined


def group_texts(ids: list[int], block_size: int) -> list[list[int]]:
    """Full blocks of block_size ids; the remainder is dropped, as run_clm does."""
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    usable = (len(ids) // block_size) * block_size
    return [ids[i : i + block_size] for i in range(0, usable, block_size)]


def split_blocks(
    blocks: Sequence[list[int]], validation_split: float, seed: int
) -> tuple[list[list[int]], list[list[int]]]:
    """(train, valid): a seeded shuffle, then validation_split of the blocks held out."""
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    order = list(range(len(blocks)))
    random.Random(seed).shuffle(order)
    n_valid = 0
    if validation_split > 0 and len(blocks) >= 2:
        # Round, but keep at least one block on each side so both losses exist.
        n_valid = min(len(blocks) - 1, max(1, round(len(blocks) * validation_split)))
    valid = [list(blocks[i]) for i in order[:n_valid]]
    train = [list(blocks[i]) for i in order[n_valid:]]
    return train, valid


def count_tokens(blocks: Sequence[Sequence[int]]) -> int:
    """Total ids across blocks."""
    return sum(len(block) for block in blocks)
