"""Figures for bench/gpu_smoke.py: probe choice, estimate vs measured memory, tokens/s, MFU."""

import time
from dataclasses import dataclass
from typing import Any

from bench import smoke_service as service

GIB = 1024**3
# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s), by device-name fragment.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "V100": 125e12,
    "T4": 65e12,
}


@dataclass
class Row:
    """One run's line of the report."""

    name: str
    job_id: str
    status: str
    error: str | None
    seconds: float
    tokens_per_second: float | None
    micro_batch: int = 0
    accumulation: int = 0
    probed: bool = False
    estimate_bytes: int | None = None  # the estimate at the micro-batch that ran, no overhead
    check_bytes: int | None = None  # what the fit check used (micro-batch 1 with the probe on)
    peak_bytes: int | None = None  # torch.cuda.max_memory_allocated(); None on CPU
    mfu: float | None = None
    outcome: str = ""


def chosen_micro_batch(view: service.JobView, resolved: dict[str, Any]) -> tuple[int, int, bool]:
    """(micro-batch, accumulation, probed) from the engine's event, else the resolved spec."""
    for _message, data in reversed(view.events):
        if data and "micro_batch_size" in data and "gradient_accumulation_steps" in data:
            probed = bool(data.get("probed"))
            return int(data["micro_batch_size"]), int(data["gradient_accumulation_steps"]), probed
    batch, accumulation = int(resolved["batch_size"]), int(resolved["gradient_accumulation_steps"])
    return -(-batch // accumulation), accumulation, False


def model_shape(model: str) -> Any:
    """The ModelShape of a base model in the smoke's models folder."""
    from transformers import AutoConfig

    from worker.training.memory import ModelShape

    return ModelShape.from_config(AutoConfig.from_pretrained(service.models_dir() / model))


def estimate_at(view: service.JobView, resolved: dict[str, Any], micro: int, gpu: bool) -> int:
    """The memory estimate's peak for the micro-batch the job ran with."""
    from worker.training.memory import estimate

    planned = view.stats["memory_estimate"]
    labels = resolved.get("labels")
    shape = model_shape(view.model)
    return int(
        estimate(
            shape,
            view.stats["training_method"],
            view.stats["trainable_parameters"],
            micro,
            planned["sequence_length"],
            gpu,
            len(labels) if labels else None,
        )["peak_bytes"]
    )


def flops_per_token(view: service.JobView, length: int) -> float:
    """Training FLOPs per token: 6 per matmul weight (4 when frozen) plus attention (PaLM)."""
    shape = model_shape(view.model)
    from worker.training.memory import block_parameters

    head = shape.vocab * shape.width if not (view.resolved or {}).get("labels") else 0
    matmul = shape.layers * block_parameters(shape) + head
    trainable = min(matmul, view.stats["trainable_parameters"])
    weights = 4 * matmul + 2 * trainable  # forward 2, input gradients 2, weight gradients 2
    return weights + 12 * shape.layers * shape.width * length


def device_peak_flops() -> float | None:
    """The GPU's dense bf16 peak, when its name is in PEAK_FLOPS."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def figures_for(name: str, job_id: str, device: str, seconds: float) -> Row:
    """The row for a finished job, from its database records."""
    view = service.read_job(job_id)
    resolved = view.resolved or {}
    error = view.error["message"] if view.error else None
    row = Row(name, job_id, view.status, error, seconds, view.tokens_per_second)
    if view.status != "succeeded" or "memory_estimate" not in view.stats:
        return row
    row.micro_batch, row.accumulation, row.probed = chosen_micro_batch(view, resolved)
    row.estimate_bytes = estimate_at(view, resolved, row.micro_batch, device == "cuda")
    row.check_bytes = view.stats["memory_estimate"]["peak_bytes"]
    row.peak_bytes = view.stats.get("final_metrics", {}).get("peak_memory_bytes")
    length = view.stats["memory_estimate"]["sequence_length"]
    peak_flops, speed = device_peak_flops(), view.tokens_per_second
    if speed and peak_flops:
        row.mfu = speed * flops_per_token(view, length) / peak_flops
    return row


def print_row(row: Row) -> None:
    """One line: status, micro-batch, memory estimate vs measured, tokens/s, MFU."""
    probe = (
        f"probe micro {row.micro_batch} x {row.accumulation}"
        if row.probed
        else (f"micro {row.micro_batch} x {row.accumulation} (no probe)")
    )
    memory = "memory n/a"
    if row.estimate_bytes is not None:
        memory = f"estimate {row.estimate_bytes / GIB:.2f} GiB"
        if row.peak_bytes:
            ratio = row.estimate_bytes / row.peak_bytes
            memory += f" vs max_allocated {row.peak_bytes / GIB:.2f} GiB (x{ratio:.2f})"
    speed = f"{row.tokens_per_second:,.0f} tok/s" if row.tokens_per_second else "tok/s n/a"
    mfu = f"MFU {row.mfu:.1%}" if row.mfu is not None else "MFU n/a"
    error = f" [{row.error}]" if row.error else ""
    print(
        f"run {row.name}: {row.status}{error} | {probe} | {memory} | {speed} | {mfu} | "
        f"{row.seconds:.1f}s",
        flush=True,
    )


def trainer_tokens_per_second(job_id: str, device: str, micro: int, accumulation: int) -> float:
    """transformers.Trainer on the job's own plan and micro-batch: tokens per second."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, set_seed

    from bench.parity import Blocks
    from shared.settings import get_settings
    from shared.storage import get_storage
    from worker.run_job import _snapshot, prepare

    plan = prepare(_snapshot(job_id), get_settings(), get_storage(), check_memory=False)
    spec, gpu = plan.spec, device == "cuda"
    bf16 = gpu and torch.cuda.is_bf16_supported(including_emulation=False)
    set_seed(spec.seed)
    model = AutoModelForCausalLM.from_pretrained(
        spec.model_location, dtype=torch.float32, attn_implementation="sdpa"
    )
    args = TrainingArguments(
        output_dir=str(service.scratch() / "trainer"),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=1,
        learning_rate=spec.learning_rate,
        bf16=bf16,
        fp16=gpu and not bf16,
        use_cpu=not gpu,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        report_to=[],
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Blocks(plan.train_blocks))
    started = time.perf_counter()
    trainer.train()
    return plan.train_tokens / (time.perf_counter() - started)
