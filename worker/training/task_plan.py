"""Plans for per-record tasks: causal LM without packing, completion, classification."""

import math
from collections.abc import Iterable, Iterator
from typing import Any

from shared.catalog import BaseModelEntry
from shared.chat import render_chat
from shared.spec import Hyperparameters, TaskOptions, auto_block_size
from worker.training.examples import Examples, build_examples, sorted_labels, split_examples
from worker.training.model_loading import load_tokenizer, model_context_length
from worker.training.plan import Plan, PlanError, plan_training, resolve_spec


def record_text(record: dict[str, Any]) -> str:
    """The text a causal LM trains on: "text", prompt followed by completion, or a chat
    rendered with the chat template."""
    if "messages" in record:
        return render_chat(record["messages"])
    return record["text"] if "text" in record else record["prompt"] + record["completion"]


def record_texts(records: list[dict[str, Any]]) -> list[str]:
    """record_text of every record."""
    return [record_text(r) for r in records]


class RecordTexts:
    """record_text of every record, read again on each pass and never held as a list.

    Packed planning passes over them twice when the token cache is on (hash, then tokenize).
    """

    def __init__(self, records: Iterable[dict[str, Any]]) -> None:
        self.records = records

    def __iter__(self) -> Iterator[str]:
        return (record_text(r) for r in self.records)


def resolve_max_length(requested: int | None, n_positions: int) -> int:
    """Row length: explicit if it fits the context, else min(1024, the context)."""
    if requested is None:
        return auto_block_size(n_positions)
    if requested > n_positions:
        raise PlanError(
            "max_length",
            f"max_length {requested} is longer than the model's context of {n_positions} "
            f"tokens; use {n_positions} or less",
        )
    return requested


def check_labels(train: list[dict[str, str]], valid: list[dict[str, str]] | None) -> list[str]:
    """Label names from the training file; a validation label it lacks is an error."""
    names = sorted_labels([r["label"] for r in train])
    if len(names) < 2:
        raise PlanError(
            "training_file",
            f"classification needs at least 2 distinct labels; the training file has {names}",
        )
    unknown = sorted({r["label"] for r in valid or []} - set(names))
    if unknown:
        raise PlanError(
            "validation_file",
            f"validation labels {unknown} never occur in the training file; "
            "a classifier can only predict labels it was trained on",
        )
    return names


def plan_task(
    hp: Hyperparameters,
    base: BaseModelEntry,
    options: TaskOptions,
    task: str,
    train_source: Iterable[dict[str, str]],
    valid_source: Iterable[dict[str, str]] | None,
    seed: int,
) -> Plan:
    """The plan for task: packed causal LM as before, else one example per record.

    Packed, the records stream through the tokenizer (none is kept); per record, they are
    read into a list, since every example is built from its own record.
    """
    if task == "causal_lm" and options.packing:
        valid_texts = RecordTexts(valid_source) if valid_source is not None else None
        plan = plan_training(hp, base, RecordTexts(train_source), valid_texts, seed)
        plan.spec = plan.spec.model_copy(update={"task": task, "packing": True})
        return plan
    train_records = list(train_source)
    valid_records = list(valid_source) if valid_source is not None else None
    tokenizer = load_tokenizer(base.location)
    max_length = resolve_max_length(options.max_length, model_context_length(base.location))
    labels = check_labels(train_records, valid_records) if task == "classification" else None
    if task == "causal_lm":
        train_records = [{"text": t} for t in record_texts(train_records)]
        if valid_records is not None:
            valid_records = [{"text": t} for t in record_texts(valid_records)]
    examples = build_examples(task, train_records, tokenizer, max_length, labels)
    if valid_records is not None:
        validation_split = 0.0
        train, valid = examples, build_examples(task, valid_records, tokenizer, max_length, labels)
    else:
        validation_split = hp.validation_split
        train, valid = split_examples(examples, validation_split, seed)
    spec = resolve_spec(hp, base, len(train), max_length, validation_split, seed)
    spec = spec.model_copy(
        update={"task": task, "packing": False, "max_length": max_length, "labels": labels}
    )
    return Plan(spec, [], [], train.tokens(), task_summary(spec, examples, train, valid),
                train, valid)  # fmt: skip


def task_summary(spec: Any, examples: Examples, train: Examples, valid: Examples) -> dict[str, Any]:
    """The figures the job's validation event and total_steps come from."""
    steps_per_epoch = math.ceil(len(train) / spec.batch_size)
    return {
        "task": spec.task,
        "mode": "per-record" if spec.task == "causal_lm" else "one example per record",
        "labels": spec.labels,
        "max_length": spec.max_length,
        "train_examples": len(train),
        "valid_examples": len(valid),
        "train_tokens": train.tokens(),
        "valid_tokens": valid.tokens(),
        "truncated": int(examples.stats.get("truncated", 0)),
        "padding_fraction": examples.stats.get("padding_fraction", 0.0),
        "batch_size": spec.batch_size,
        "n_epochs": spec.n_epochs,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": steps_per_epoch * spec.n_epochs,
        "trained_tokens": train.tokens() * spec.n_epochs,
    }
