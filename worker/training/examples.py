"""Records to training examples for each task: packed or per-record LM, completion, labels."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from shared.chat import render_chat, trained_spans
from worker.training.data import split_blocks
from worker.training.token_cache import tokenize_cached

# Labels the loss skips: CrossEntropyLoss's ignore_index, which HF models use too.
IGNORE = -100


@dataclass
class Examples:
    """Equal-length rows of input_ids (+ attention_mask, labels) the engine batches by index."""

    input_ids: torch.Tensor
    # None for packed blocks: every slot is a real token, and labels are the inputs.
    attention_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def batch(self, index: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """Model inputs for the rows in index, on device."""
        if self.attention_mask is None:
            ids = to_device(self.input_ids[index], device)
            return {"input_ids": ids, "labels": ids}
        assert self.labels is not None
        mask = self.attention_mask[index]
        # Rows are padded to the dataset's longest; cut the columns this batch leaves all pad.
        used = mask.any(0).nonzero().flatten()
        first, last = (int(used[0]), int(used[-1]) + 1) if used.numel() else (0, 1)
        labels = self.labels[index]
        if labels.dim() == 2:
            labels = labels[:, first:last]
        mask = to_device(mask[:, first:last], device)
        return {
            "input_ids": to_device(self.input_ids[index][:, first:last], device),
            "attention_mask": mask,
            # GPT-2 numbers positions 0..n-1 from the first slot; padding must not shift them.
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
            "labels": to_device(labels, device),
        }

    def tokens(self) -> int:
        """Real (non-pad) token slots."""
        if self.attention_mask is None:
            return self.input_ids.numel()
        return int(self.attention_mask.sum().item())

    def tokens_in(self, index: torch.Tensor) -> int:
        """Real token slots in the rows at index (CPU tensors: no GPU sync)."""
        if self.attention_mask is None:
            return int(index.numel()) * int(self.input_ids.shape[1])
        return int(self.attention_mask[index].sum().item())

    def select(self, rows: Sequence[int]) -> "Examples":
        """The examples at rows, in that order."""
        index = torch.tensor(list(rows), dtype=torch.long)

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index]

        return Examples(self.input_ids[index], pick(self.attention_mask), pick(self.labels))


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """tensor on device; to a GPU from pinned memory, so the copy does not stall the host.

    (non_blocking from ordinary pageable memory is a synchronous copy in disguise.)
    """
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def blocks_to_examples(blocks: "Sequence[Sequence[int]] | np.ndarray") -> Examples:
    """Packed fixed-size blocks (the run_clm recipe): labels are the inputs."""
    if len(blocks) == 0:
        return Examples(torch.zeros((0, 0), dtype=torch.long))
    if isinstance(blocks, np.ndarray):  # int64 rows are shared, not copied
        return Examples(torch.from_numpy(np.ascontiguousarray(blocks, dtype=np.int64)))
    return Examples(torch.tensor([list(b) for b in blocks], dtype=torch.long))


def as_examples(data: "Examples | Sequence[Sequence[int]] | np.ndarray") -> Examples:
    """Examples as they are; a list of packed blocks converted."""
    return data if isinstance(data, Examples) else blocks_to_examples(data)


def padding_stats(rows: list[list[int]], length: int, truncated: int) -> dict[str, float]:
    """Records truncated and the fraction of token slots that are padding."""
    slots = len(rows) * length
    real = sum(len(row) for row in rows)
    return {"truncated": truncated, "padding_fraction": (slots - real) / slots if slots else 0.0}


def pad_right(
    rows: list[list[int]], labels: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) right-padded to the longest row; pad labels -100."""
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    out = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    for i, (row, row_labels) in enumerate(zip(rows, labels, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        out[i, : len(row)] = torch.tensor(row_labels)
    return ids, mask, out


def pad_left(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) padded on the left, so every row's last token is real."""
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, length - len(row) :] = torch.tensor(row)
            mask[i, length - len(row) :] = 1
    return ids, mask


def per_record_examples(
    token_lists: list[list[int]], bos_id: int, eos_id: int, pad_id: int, max_length: int
) -> Examples:
    """One row per record: BOS + tokens + EOS, cut at max_length; loss on real tokens only."""
    rows = [[bos_id, *ids, eos_id] for ids in token_lists]
    truncated = sum(len(row) > max_length for row in rows)
    rows = [row[:max_length] for row in rows]
    ids, mask, labels = pad_right(rows, rows, pad_id)
    return Examples(ids, mask, labels, padding_stats(rows, ids.shape[1], truncated))


def completion_examples(
    prompts: list[list[int]], completions: list[list[int]], eos_id: int, pad_id: int,
    max_length: int,
) -> Examples:  # fmt: skip
    """prompt + completion + EOS per row; the loss sees completion tokens only."""
    rows, labels, truncated = [], [], 0
    for prompt, completion in zip(prompts, completions, strict=True):
        target = [*completion, eos_id]
        if len(prompt) + len(target) > max_length:
            truncated += 1
            # Keep the prompt's end (nearest the answer) and as much of the answer as fits.
            target = target[: max(1, max_length - 1)]
            prompt = (
                prompt[len(prompt) - (max_length - len(target)) :]
                if max_length > len(target)
                else []
            )
        rows.append([*prompt, *target])
        labels.append([IGNORE] * len(prompt) + target)
    ids, mask, out = pad_right(rows, labels, pad_id)
    return Examples(ids, mask, out, padding_stats(rows, ids.shape[1], truncated))


def chat_labels(
    ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> list[int]:
    """Each token's label: its id where it starts inside a trained span, else IGNORE."""
    return [
        token if any(start <= offset[0] < end for start, end in spans) else IGNORE
        for token, offset in zip(ids, offsets, strict=True)
    ]


def chat_window(labels: list[int], max_length: int) -> tuple[int, int]:
    """(start, end) of the row kept when it is longer than max_length: its beginning, or,
    when that holds no trained token, the max_length tokens ending at the first one."""
    if len(labels) <= max_length or any(t != IGNORE for t in labels[:max_length]):
        return 0, min(len(labels), max_length)
    end = next(i for i, t in enumerate(labels) if t != IGNORE) + 1
    return end - max_length, end


def chat_examples(
    conversations: list[list[dict[str, Any]]], tokenizer: Any, pad_id: int, max_length: int
) -> Examples:
    """One conversation per row, rendered with the chat template; the loss sees the content
    and closing <|endoftext|> of assistant messages of weight 1, nothing else."""
    texts = [render_chat(messages) for messages in conversations]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    rows, labels, truncated = [], [], 0
    for messages, ids, offsets in zip(
        conversations, encoded["input_ids"], encoded["offset_mapping"], strict=True
    ):
        row_labels = chat_labels(list(ids), list(offsets), trained_spans(messages))
        start, end = chat_window(row_labels, max_length)
        truncated += end - start < len(ids)
        rows.append(list(ids[start:end]))
        labels.append(row_labels[start:end])
    ids_t, mask, out = pad_right(rows, labels, pad_id)
    return Examples(ids_t, mask, out, padding_stats(rows, ids_t.shape[1], truncated))


def sorted_labels(labels: Sequence[str]) -> list[str]:
    """Distinct labels, integers in numeric order first, then strings alphabetically."""

    def key(label: str) -> tuple[int, int, str]:
        is_int = label.lstrip("-").isdigit()
        return (0, int(label), "") if is_int else (1, 0, label)

    return sorted(set(labels), key=key)


def classification_examples(
    token_lists: list[list[int]], label_ids: list[int], pad_id: int, max_length: int
) -> Examples:
    """Left-padded rows (the classifier reads the last token) and one class id per row."""
    truncated = sum(len(ids) > max_length for ids in token_lists)
    rows = [ids[:max_length] or [pad_id] for ids in token_lists]
    ids, mask = pad_left(rows, pad_id)
    labels = torch.tensor(label_ids, dtype=torch.long)
    return Examples(ids, mask, labels, padding_stats(rows, ids.shape[1], truncated))


def split_examples(
    examples: Examples, validation_split: float, seed: int
) -> tuple[Examples, Examples]:
    """(train, valid) with the same seeded shuffle split_blocks uses."""
    train_rows, valid_rows = split_blocks(
        [[i] for i in range(len(examples))], validation_split, seed
    )
    return examples.select([r[0] for r in train_rows]), examples.select([r[0] for r in valid_rows])


def build_examples(
    task: str, records: list[dict[str, Any]], tokenizer: Any, max_length: int,
    label_names: list[str] | None = None,
) -> Examples:  # fmt: skip
    """Examples for a non-packed task from its records."""
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    if task == "chat":
        conversations = [r["messages"] for r in records]
        return chat_examples(conversations, tokenizer, pad_id, max_length)
    if task == "completion":
        prompts = tokenize_cached([r["prompt"] for r in records], tokenizer)
        completions = tokenize_cached([r["completion"] for r in records], tokenizer)
        return completion_examples(prompts, completions, tokenizer.eos_token_id, pad_id, max_length)
    texts = tokenize_cached([r["text"] for r in records], tokenizer)
    if task == "classification":
        assert label_names is not None
        index = {name: i for i, name in enumerate(label_names)}
        return classification_examples(
            texts, [index[r["label"]] for r in records], pad_id, max_length
        )
    return per_record_examples(
        texts, tokenizer.bos_token_id, tokenizer.eos_token_id, pad_id, max_length
    )


def task_plan_message(s: dict[str, Any]) -> str:
    """The validation event's line for a per-record task, with truncation and padding."""
    epochs = f"{s['n_epochs']} epoch{'s' if s['n_epochs'] != 1 else ''}"
    labels = f", {len(s['labels'])} labels" if s.get("labels") else ""
    return (
        f"Planned {s['task']} ({s['mode']}{labels}): {epochs} of {s['steps_per_epoch']} steps "
        f"(batch {s['batch_size']}, max_length {s['max_length']}): "
        f"{s['train_examples']} training examples ({s['train_tokens']} tokens), "
        f"{s['valid_examples']} validation examples; {s['truncated']} records truncated, "
        f"{s['padding_fraction']:.0%} of token slots are padding"
    )
