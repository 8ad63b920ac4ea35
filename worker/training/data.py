"""Pure data functions: text records to fixed-size token blocks (run_clm's recipe)."""

import random
from array import array
from collections.abc import Iterable
from typing import Any

import numpy as np

# Records tokenized per call: the fast tokenizer's per-record objects (offsets, masks) stay
# a few MB, so planning memory follows the token count, not the record count.
TOKENIZE_BATCH = 4096


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


def token_stream(texts: Iterable[str], tokenizer: Any, eos_id: int) -> np.ndarray:
    """join_with_eos(tokenize_records(texts)) as one int32 array, tokenized in batches.

    texts may be a generator over millions of records: nothing per record outlives its batch.
    """
    ids = array("i")
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == TOKENIZE_BATCH:
            _append_batch(ids, batch, tokenizer, eos_id)
            batch = []
    if batch:
        _append_batch(ids, batch, tokenizer, eos_id)
    return np.frombuffer(ids, dtype=np.int32) if ids else np.zeros(0, dtype=np.int32)


def _append_batch(ids: array, batch: list[str], tokenizer: Any, eos_id: int) -> None:
    for record in tokenizer(batch, add_special_tokens=False)["input_ids"]:
        ids.extend(record)
        ids.append(eos_id)


def group_texts(ids: Any, block_size: int) -> Any:
    """Full blocks of block_size ids; the remainder is dropped, as run_clm does.

    A list gives a list of lists; an array gives a (blocks, block_size) view of it.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    usable = (len(ids) // block_size) * block_size
    if isinstance(ids, np.ndarray):
        return ids[:usable].reshape(-1, block_size)
    return [ids[i : i + block_size] for i in range(0, usable, block_size)]


def split_blocks(blocks: Any, validation_split: float, seed: int) -> tuple[Any, Any]:
    """(train, valid): a seeded shuffle, then validation_split of the blocks held out."""
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    order = list(range(len(blocks)))
    random.Random(seed).shuffle(order)
    n_valid = 0
    if validation_split > 0 and len(blocks) >= 2:
        # Round, but keep at least one block on each side so both losses exist.
        n_valid = min(len(blocks) - 1, max(1, round(len(blocks) * validation_split)))
    if isinstance(blocks, np.ndarray):  # rows of an array: (train, valid) arrays
        return blocks[np.array(order[n_valid:], dtype=np.int64)], blocks[
            np.array(order[:n_valid], dtype=np.int64)
        ]
    valid = [list(blocks[i]) for i in order[:n_valid]]
    train = [list(blocks[i]) for i in order[n_valid:]]
    return train, valid


def count_tokens(blocks: Any) -> int:
    """Total ids across blocks."""
    if isinstance(blocks, np.ndarray):
        return int(blocks.size)
    return sum(len(block) for block in blocks)
