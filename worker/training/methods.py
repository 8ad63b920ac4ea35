"""Training methods: full fine-tuning, transfer (top blocks only) and LoRA adapters."""

import copy
import itertools
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from shared.spec import MethodOptions, TrainingSpec
from worker.training.model_loading import load_causal_lm

# LoRA adapters live in a subfolder: an adapter_config.json next to config.json would make
# from_pretrained load the adapter's base model instead of the merged weights beside it.
ADAPTER_DIR = "adapter"


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; a parameter shared by two modules counts once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def freeze_for_transfer(model: Any, trainable_layers: int) -> None:
    """Freeze embeddings and all but the top trainable_layers blocks; ln_f and the head train."""
    for param in model.parameters():
        param.requires_grad = False
    blocks = model.transformer.h
    for block in blocks[len(blocks) - min(trainable_layers, len(blocks)) :]:
        for param in block.parameters():
            param.requires_grad = True
    for param in model.transformer.ln_f.parameters():
        param.requires_grad = True
    if model.lm_head.weight is model.transformer.wte.weight:
        # GPT-2 ties the head to wte: untie it, or training the head would move the embeddings.
        model.lm_head.weight = torch.nn.Parameter(model.transformer.wte.weight.detach().clone())
        model.config.tie_word_embeddings = False
    model.lm_head.weight.requires_grad = True


def lora_config(method: MethodOptions, task_type: str = "CAUSAL_LM") -> Any:
    """The peft LoraConfig for GPT-2 (Conv1D layers store weights as fan_in x fan_out).

    task_type SEQ_CLS (a classifier) also trains and saves the new score head in full
    (modules_to_save): an adapter alone cannot learn a head that starts random.
    """
    from peft import LoraConfig

    options = method.resolved_lora()
    assert options is not None
    return LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=list(options.target_modules),
        fan_in_fan_out=True,
        bias="none",
        task_type=task_type,
        modules_to_save=["score"] if task_type == "SEQ_CLS" else None,
    )


def load_for_training(spec: TrainingSpec, device: torch.device, resume_from: Path | None) -> Any:
    """The model ready to train by spec.method: from the base, or from a checkpoint to resume."""
    method = spec.method
    if method.training_method == "lora":
        from peft import PeftModel, get_peft_model

        base = load_causal_lm(spec.model_location, device)
        if resume_from is not None:
            return PeftModel.from_pretrained(base, resume_from / ADAPTER_DIR, is_trainable=True)
        # Seeded here: the adapter's random A matrices must depend on spec.seed only.
        torch.manual_seed(spec.seed)
        return get_peft_model(base, lora_config(method))
    model = load_causal_lm(str(resume_from or spec.model_location), device)
    if method.training_method == "transfer":
        freeze_for_transfer(model, method.trainable_layers)
    return model


def is_lora(model: Any) -> bool:
    """Whether model is a peft-wrapped model."""
    return hasattr(model, "peft_config")


class Exportable:
    """save_pretrained that writes a plain model (LoRA merged) plus, for LoRA, the adapter."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def save_pretrained(self, folder: Path) -> None:
        """Weights and config loadable by AutoModelForCausalLM.from_pretrained(folder)."""
        if not is_lora(self.model):
            self.model.save_pretrained(folder)
            return
        self.model.save_pretrained(folder / ADAPTER_DIR)
        # A copy to merge: the live model keeps training with its adapter unmerged. On the
        # CPU: a GPU copy would need a second model's worth of GPU memory at every checkpoint.
        merged = cpu_copy(self.model).merge_and_unload()
        merged.save_pretrained(folder)
        del merged


def cpu_copy(model: Any) -> Any:
    """A deep copy of model with every parameter and buffer copied to the CPU, never the GPU.

    deepcopy takes each tensor from the memo: shared (tied) weights stay shared in the copy.
    """
    memo: dict[int, Any] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        copied = tensor.detach().to("cpu", copy=True)
        if isinstance(tensor, torch.nn.Parameter):
            copied = torch.nn.Parameter(copied, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = copied
    return copy.deepcopy(model, memo)


def link_or_copy(source: str, target: str) -> None:
    """A hard link (no bytes written: a checkpoint's files are never changed in place, only
    deleted, which leaves the link), else a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def copy_model_files(checkpoint: Path, final_dir: Path) -> None:
    """A checkpoint's model, tokenizer and adapter (not its resume state) into final_dir,
    hard-linked where the file system allows."""
    for path in checkpoint.iterdir():
        if path.name.startswith("training_state"):
            continue
        if path.is_dir():
            shutil.copytree(path, final_dir / path.name, copy_function=link_or_copy)
        else:
            link_or_copy(str(path), str(final_dir / path.name))
