"""Sequence classification on GPT-2: loading, metrics, evaluation and inference."""

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForSequenceClassification

from worker.training.data import tokenize_records
from worker.training.device import inference_dtype
from worker.training.examples import IGNORE, Examples, pad_left
from worker.training.model_cache import ModelCache
from worker.training.model_loading import (
    _load_kwargs,
    fused_activations,
    load_tokenizer,
    model_load_kwargs,
)

# Enough for a handful of fine-tuned classifiers per inference worker.
CACHE_SIZE = 4


def load_classifier(
    location: str,
    device: str | torch.device,
    labels: list[str] | None,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """GPT2ForSequenceClassification; labels name a fresh head (None: the folder's own).

    float32 to train (autocast adds 16-bit compute); serving passes a 16-bit dtype.
    """
    extra: dict[str, Any] = {}
    if labels is not None:
        extra = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
        }
    model: Any = AutoModelForSequenceClassification.from_pretrained(
        location, **extra, **{**model_load_kwargs(), "dtype": dtype}
    )
    # GPT-2 has no pad token: EOS pads (on the left), and the head reads the last real token.
    model.config.pad_token_id = model.config.eos_token_id
    return fused_activations(model).to(device)


def is_classifier(location: str | Path) -> bool:
    """Whether a model folder holds a sequence classifier (a fine-tuned classification job)."""
    config = AutoConfig.from_pretrained(str(location), trust_remote_code=False, **_load_kwargs())
    return any(name.endswith("ForSequenceClassification") for name in config.architectures or [])


def count_on_device(labels: torch.Tensor) -> torch.Tensor:
    """labels.numel() as a tensor on labels' device, filled there (no host copy, no GPU sync)."""
    return torch.full((), labels.numel(), dtype=torch.long, device=labels.device)


def count_targets(labels: torch.Tensor) -> torch.Tensor:
    """How many predictions the loss averages over: rows for labels, else unmasked next tokens."""
    if labels.dim() == 1:
        return count_on_device(labels)
    return (labels[:, 1:] != IGNORE).sum()


def class_accuracy_counts(logits: torch.Tensor, labels: torch.Tensor) -> tuple[Any, Any]:
    """(correct, counted) class predictions as tensors (no GPU sync)."""
    return (logits.argmax(-1) == labels).sum(), count_on_device(labels)


def macro_f1(predicted: list[int], targets: list[int], n_labels: int) -> float:
    """F1 averaged over the labels that occur in targets or predictions (sklearn's macro)."""
    scores = []
    for label in range(n_labels):
        tp = sum(p == label and t == label for p, t in zip(predicted, targets, strict=True))
        fp = sum(p == label and t != label for p, t in zip(predicted, targets, strict=True))
        fn = sum(p != label and t == label for p, t in zip(predicted, targets, strict=True))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


@torch.no_grad()
def evaluate_classifier(
    model: Any, examples: Examples, batch_size: int, device: torch.device, autocast: Any
) -> dict[str, float]:
    """valid_loss, valid_accuracy and valid_macro_f1 over examples."""
    model.eval()
    # Kept on the device and read back once: no GPU sync per batch.
    loss_total = torch.zeros((), device=device, dtype=torch.float64)
    predicted_parts, target_parts = [], []
    for start in range(0, len(examples), batch_size):
        batch = examples.batch(torch.arange(start, min(start + batch_size, len(examples))), device)
        labels = batch.pop("labels")
        with autocast:
            logits = model(**batch).logits.float()
        loss_total += F.cross_entropy(logits, labels, reduction="sum").double()
        predicted_parts.append(logits.argmax(-1))
        target_parts.append(labels)
    model.train()
    predicted = torch.cat(predicted_parts).tolist() if predicted_parts else []
    targets = torch.cat(target_parts).tolist() if target_parts else []
    loss_sum = loss_total.item()
    return {
        "valid_loss": loss_sum / max(1, len(targets)),
        "valid_accuracy": sum(p == t for p, t in zip(predicted, targets, strict=True))
        / max(1, len(targets)),
        "valid_macro_f1": macro_f1(predicted, targets, model.config.num_labels),
    }


def load_for_serving(location: str, device: torch.device) -> tuple[Any, Any]:
    """(classifier, tokenizer) ready to serve: eval mode, 16-bit weights on a GPU."""
    model = load_classifier(location, device, None, inference_dtype(device)).eval()
    return model, load_tokenizer(location)


_cache = ModelCache(load_for_serving, lambda: CACHE_SIZE)


def cached_classifier(location: str) -> tuple[Any, Any]:
    """(model, tokenizer) for location, least recently used evicted."""
    return _cache.get(location)


@torch.no_grad()
def classify(location: str, texts: list[str]) -> list[dict[str, Any]]:
    """The label and per-label probabilities for each text."""
    model, tokenizer = cached_classifier(location)
    device = model.device
    context = model.config.n_positions
    # Keep the start, as training does (classification_examples cuts at max_length).
    rows = [ids[:context] or [tokenizer.eos_token_id] for ids in tokenize_records(texts, tokenizer)]
    ids, mask = pad_left(rows, tokenizer.eos_token_id)
    ids, mask = ids.to(device), mask.to(device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    probabilities = logits.float().softmax(-1).tolist()
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return [
        {
            "index": index,
            "label": names[max(range(len(names)), key=row.__getitem__)],
            "probabilities": dict(zip(names, row, strict=True)),
        }
        for index, row in enumerate(probabilities)
    ]


def load_for_task(spec: Any, device: torch.device, resume_from: Path | None) -> Any:
    """A classifier (fresh head from spec.labels, or the checkpoint's), else the method's LM."""
    if spec.task != "classification":
        from worker.training.methods import load_for_training

        return load_for_training(spec, device, resume_from)
    method = spec.method.training_method
    if method == "lora":
        return lora_classifier(spec, device, resume_from)
    if resume_from is not None:
        model = load_classifier(str(resume_from), device, None)
    else:
        # Seeded here: the new score head's random init must depend on spec.seed only.
        torch.manual_seed(spec.seed)
        model = load_classifier(spec.model_location, device, spec.labels)
    if method == "transfer":
        freeze_below_head(model, spec.method.trainable_layers)
    return model


def lora_classifier(spec: Any, device: torch.device, resume_from: Path | None) -> Any:
    """The base with a fresh score head, wrapped in a SEQ_CLS adapter whose head trains in full.

    The head is in modules_to_save: saved with the adapter and restored from it on resume
    (the fresh head built here is then replaced by the checkpoint's).
    """
    from peft import PeftModel, get_peft_model

    from worker.training.methods import ADAPTER_DIR, lora_config

    # Seeded here: the head's init and the adapter's A matrices depend on spec.seed only.
    torch.manual_seed(spec.seed)
    base = load_classifier(spec.model_location, device, spec.labels)
    if resume_from is not None:
        return PeftModel.from_pretrained(base, resume_from / ADAPTER_DIR, is_trainable=True)
    return get_peft_model(base, lora_config(spec.method, "SEQ_CLS"))


def freeze_below_head(model: Any, trainable_layers: int) -> None:
    """Transfer learning for a classifier: the top blocks, ln_f and the score head train."""
    for param in model.parameters():
        param.requires_grad = False
    blocks = model.transformer.h
    trainable = [*blocks[len(blocks) - min(trainable_layers, len(blocks)) :]]
    for module in (*trainable, model.transformer.ln_f, model.score):
        for param in module.parameters():
            param.requires_grad = True


def prediction_counts(logits: torch.Tensor, labels: torch.Tensor) -> tuple[Any, Any]:
    """(correct, counted): class predictions for 1-D labels, else next-token predictions."""
    if labels.dim() == 1:
        return class_accuracy_counts(logits, labels)
    from worker.training.results import token_accuracy_counts

    return token_accuracy_counts(logits, labels)
