"""Results: token accuracy, best-checkpoint tracking, early stopping, samples, memorization."""

import math
import string
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from worker.training.examples import pad_left

# A generation holding 8 consecutive training tokens verbatim counts as memorized text.
MEMORIZATION_NGRAM = 8
# Sampled continuations are short: enough to show style, cheap on CPU.
SAMPLE_TOKENS = 32


def token_accuracy_counts(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, counted) next-token predictions as tensors (no GPU sync); -100 is ignored."""
    predicted = logits[:, :-1].argmax(-1)
    targets = labels[:, 1:]
    mask = targets != -100
    return ((predicted == targets) & mask).sum(), mask.sum()


@dataclass
class BestState:
    """The lowest validation loss so far, where, and how many evaluations since."""

    best_valid_loss: float = math.inf
    best_step: int = -1
    evals_since_best: int = 0


def update_best(state: BestState, valid_loss: float, step: int) -> bool:
    """Record one evaluation; True when it is a new best (strictly lower loss)."""
    if valid_loss < state.best_valid_loss:
        state.best_valid_loss, state.best_step, state.evals_since_best = valid_loss, step, 0
        return True
    state.evals_since_best += 1
    return False


def should_stop_early(state: BestState, patience: int | None) -> bool:
    """True when patience evaluations in a row brought no new best."""
    return patience is not None and state.evals_since_best >= patience


def early_stop_message(state: BestState, patience: int) -> str:
    """The event text for an early stop."""
    return (
        f"Early stopping: validation loss has not improved for {patience} evaluation"
        f"{'s' if patience != 1 else ''} (best {state.best_valid_loss:.4f} at step "
        f"{state.best_step})"
    )


def ngrams(tokens: Sequence[int], n: int = MEMORIZATION_NGRAM) -> set[tuple[int, ...]]:
    """Every n-gram of tokens."""
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def is_filler(text: str) -> bool:
    """Whether text holds only whitespace and punctuation (indentation, rules, "....")."""
    return all(
        ch.isspace() or ch in string.punctuation or unicodedata.category(ch).startswith("P")
        for ch in text
    )


def _rows(blocks: Any) -> Iterable[Sequence[int]]:
    """Token rows from a list of blocks, a tensor, or anything with input_ids."""
    rows = getattr(blocks, "input_ids", blocks)
    return rows.tolist() if isinstance(rows, torch.Tensor) else rows


def memorization_fraction(
    generations: Sequence[Sequence[int]],
    train_blocks: Any,
    n: int = MEMORIZATION_NGRAM,
    tokenizer: Any = None,
) -> float | None:
    """Fraction of generations holding a training n-gram verbatim; None without generations.

    With a tokenizer, n-grams whose text is only whitespace and punctuation do not count:
    eight tokens of indentation match any code or licence text and say nothing about
    memorization. One pass over the training data against the generations' few n-grams:
    memory stays small however large the corpus.
    """
    if not generations:
        return None
    wanted = [ngrams(tokens, n) for tokens in generations]
    if tokenizer is not None:
        wanted = [
            {gram for gram in grams if not is_filler(tokenizer.decode(list(gram)))}
            for grams in wanted
        ]
    pending = set().union(*wanted)
    found: set[tuple[int, ...]] = set()
    for row in _rows(train_blocks):
        if not pending:
            break
        hits = ngrams(row, n) & pending
        found |= hits
        pending -= hits
    return sum(1 for grams in wanted if grams & found) / len(generations)


# Without sample prompts, this many unconditioned generations measure memorization.
UNCONDITIONED_SAMPLES = 4


def memorization_samples(run: Any, spec: Any) -> list[list[int]]:
    """Token ids generated for the memorization figure: the sample prompts, seeded by spec.seed.

    The same prompts and seed before training (the base model) and after it (the fine-tuned
    one), so the two figures differ only by the training. A classifier generates nothing.
    """
    if spec.task == "classification":
        return []
    prompts = list(spec.method.sample_prompts) or [""] * UNCONDITIONED_SAMPLES
    samples = sample_continuations(
        run.model, run.tokenizer, prompts, run.device, spec.seed, run.amp_dtype
    )
    return [ids for _, ids in samples]


def memorization_figures(
    base: Sequence[Sequence[int]], tuned: Sequence[Sequence[int]], train_blocks: Any, tokenizer: Any
) -> dict[str, Any]:
    """memorization_fraction (fine-tuned), _base, the increase and the sample count."""
    fraction = memorization_fraction(tuned, train_blocks, tokenizer=tokenizer)
    # A run resumed from a checkpoint written before the base figure existed has none.
    before = memorization_fraction(base, train_blocks, tokenizer=tokenizer) if base else None
    return {
        "memorization_fraction": fraction,
        "memorization_fraction_base": before,
        "memorization_increase": None if fraction is None or before is None else fraction - before,
        "memorization_samples": len(tuned),
    }


@torch.no_grad()
def sample_continuations(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    device: torch.device,
    seed: int,
    amp_dtype: torch.dtype | None = None,
) -> list[tuple[str, list[int]]]:
    """(text, new token ids) per prompt: seeded sampling, so reruns show the same text.

    All prompts in one batch (left-padded), in amp_dtype on a GPU.
    """
    if not prompts:
        return []
    was_training = model.training
    model.eval()
    eos = tokenizer.eos_token_id
    rows = [tokenizer(prompt).input_ids or [eos] for prompt in prompts]
    ids, mask = pad_left(rows, eos)
    # fork_rng: sampling must not shift the training run's random stream (exact resume).
    devices = [device] if device.type == "cuda" else []
    # bf16 autocast pays on a GPU; on a CPU it makes one-token decoding steps ~3x slower
    # (casts dominate tiny matmuls): sample in fp32 there even when training autocasts.
    amp = amp_dtype is not None and device.type == "cuda"
    try:
        with (
            torch.random.fork_rng(devices=devices),
            torch.autocast(device.type, dtype=amp_dtype, enabled=amp),
        ):
            torch.manual_seed(seed)
            output = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=SAMPLE_TOKENS,
                do_sample=True,
                top_k=50,
                pad_token_id=eos,
            )
    finally:
        model.train(was_training)
    results = []
    for row in output[:, ids.shape[1] :].tolist():
        new_ids = row[: row.index(eos) + 1] if eos in row else row
        results.append((tokenizer.decode(new_ids, skip_special_tokens=True), new_ids))
    return results
