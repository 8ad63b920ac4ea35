"""ORM rows to OpenAI-shaped job, event and checkpoint objects."""

from typing import Any

from api.schemas import CheckpointMetrics, CheckpointOut, EventOut, JobErrorOut, JobOut, MethodOut
from shared.db.tables import Checkpoint, Job, JobEvent
from shared.spec import JobOptions, MethodOptions, TaskOptions, part_of

# What the SDK's Hyperparameters shows before a worker resolves "auto".
OPENAI_HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")


def shown_hyperparameters(job: Job) -> dict[str, Any]:
    """Resolved values once the worker set them, else the request with "auto" kept."""
    if job.resolved:
        return dict(job.resolved)
    shown: dict[str, Any] = {name: "auto" for name in OPENAI_HYPERPARAMETERS}
    shown.update(job.hyperparameters or {})
    # The task is resolved at creation (inferred from the file): show it before the worker runs.
    options = JobOptions.model_validate(job.options or {})
    shown.update(part_of(TaskOptions, options).model_dump(mode="json", exclude_unset=True))
    return shown


def shown_method(options: dict[str, Any] | None) -> dict[str, Any]:
    """The method options with defaults filled in, as the job object shows them."""
    method = part_of(MethodOptions, JobOptions.model_validate(options or {}))
    shown = method.model_dump(mode="json")
    lora = method.resolved_lora()
    shown["lora"] = lora.model_dump(mode="json") if lora else None
    if method.training_method != "transfer":
        shown.pop("trainable_layers")
    return shown


def job_error(job: Job) -> JobErrorOut | None:
    """The job's error object, tolerating rows that lack a field."""
    if not job.error:
        return None
    return JobErrorOut(
        code=str(job.error.get("code") or "error"),
        message=str(job.error.get("message") or ""),
        param=job.error.get("param"),
    )


def job_out(job: Job) -> JobOut:
    """The fine_tuning.job object for a row."""
    hyperparameters = shown_hyperparameters(job)
    stats = job.stats or {}
    progress = None
    if job.total_steps:
        progress = min(1.0, (job.steps_completed or 0) / job.total_steps)
    return JobOut(
        id=job.id,
        created_at=job.created_at,
        error=job_error(job),
        fine_tuned_model=job.fine_tuned_model,
        finished_at=job.finished_at,
        hyperparameters=hyperparameters,
        model=job.model,
        organization_id=job.owner,
        seed=job.seed,
        status=job.status,
        trained_tokens=job.trained_tokens or stats.get("trained_tokens"),
        result_files=[str(f) for f in stats.get("result_files") or []],
        tokens_per_second=stats.get("tokens_per_second") if job.status == "running" else None,
        training_file=job.training_file,
        validation_file=job.validation_file,
        estimated_finish=job.estimated_finish,
        user_provided_suffix=job.suffix,
        metadata=job.job_metadata,
        method=MethodOut(supervised={"hyperparameters": hyperparameters}),
        steps_completed=job.steps_completed or 0,
        total_steps=job.total_steps,
        epoch=job.epoch,
        progress=progress,
        **method_fields(job),
    )


def method_fields(job: Job) -> dict[str, Any]:
    """The method extensions: requested options (defaults filled) and the worker's figures."""
    stats = job.stats or {}
    names = ("trainable_parameters", "total_parameters", "memory_estimate", "final_metrics")
    return {**shown_method(job.options), **{name: stats.get(name) for name in names}}


def event_out(event: JobEvent) -> EventOut:
    """The fine_tuning.job.event object for a row."""
    return EventOut(
        id=event.id,
        created_at=event.created_at,
        level=event.level,
        message=event.message,
        data=event.data,
        type=event.type,
    )


def checkpoint_out(checkpoint: Checkpoint) -> CheckpointOut:
    """The fine_tuning.job.checkpoint object for a row; metrics OpenAI lacks stay out."""
    known = {
        name: value
        for name, value in (checkpoint.metrics or {}).items()
        if name in CheckpointMetrics.model_fields and isinstance(value, int | float)
    }
    known.setdefault("step", checkpoint.step)
    return CheckpointOut(
        id=checkpoint.id,
        created_at=checkpoint.created_at,
        fine_tuned_model_checkpoint=checkpoint.fine_tuned_model_checkpoint,
        fine_tuning_job_id=checkpoint.job_id,
        metrics=CheckpointMetrics(**known),
        step_number=checkpoint.step,
        is_best=bool(checkpoint.is_best),
    )
