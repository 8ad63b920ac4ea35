"""The jobs logic behind /v1/fine_tuning/jobs: a create body checked into a job row, dry runs.

Everything that needs no tokenizer is checked here, at create, with a 4xx naming the field;
what needs one runs in a worker as the job's validating_files phase.
"""

import secrets
import time
from typing import Any

from pydantic import BaseModel
from sqlalchemy.orm import Session

from api.deps import owned_file
from api.errors import ApiError
from api.limits import check_active_jobs
from api.locks import lock_files
from api.queue import run_dry_run
from api.schemas import JobCreate
from shared.catalog import find_base_model
from shared.datasets import DatasetError, check_task, task_for_format
from shared.db.tables import Job, JobStatus
from shared.ids import new_sortable_id, now_ts
from shared.settings import get_settings
from shared.spec import ExtensionHyperparameters, Hyperparameters, JobOptions, part_of


def given(group: type[BaseModel], body: BaseModel) -> dict[str, Any]:
    """The fields of group the client set in body, as JSON values; an explicit null is unset."""
    return part_of(group, body).model_dump(mode="json", exclude_unset=True, exclude_none=True)


def _hyperparameter_sources(body: JobCreate) -> list[tuple[str, dict[str, Any]]]:
    """Where hyperparameters may come from, each with the path prefix errors should name."""
    sources: list[tuple[str, dict[str, Any]]] = []
    supervised = body.method.supervised if body.method else None
    if supervised and supervised.hyperparameters:
        nested = supervised.hyperparameters.model_dump(exclude_unset=True)
        sources.append(("method.supervised.hyperparameters.", nested))
    if body.hyperparameters:
        sources.append(("hyperparameters.", body.hyperparameters.model_dump(exclude_unset=True)))
    sources.append(("", given(ExtensionHyperparameters, body)))
    return sources


def requested_hyperparameters(body: JobCreate) -> dict[str, Any]:
    """Hyperparameters from all three places merged ("auto" kept); 422 if two disagree."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for prefix, values in _hyperparameter_sources(body):
        for name, value in values.items():
            if name in merged and merged[name] != value:
                raise ApiError(
                    422,
                    f"{prefix}{name} conflicts with {origin[name]}{name}; give it once",
                    param=f"{prefix}{name}",
                )
            merged[name], origin[name] = value, prefix
    return Hyperparameters.model_validate(merged).model_dump(mode="json", exclude_unset=True)


def job_options(session: Session, owner: str, body: JobCreate) -> dict[str, Any]:
    """Job.options: the task and method options as given, the task resolved and checked."""
    training = owned_file(session, owner, body.training_file, "training_file")
    validation = (
        owned_file(session, owner, body.validation_file, "validation_file")
        if body.validation_file is not None
        else None
    )
    task = body.task or task_for_format(training.format)
    for param, row in (("training_file", training), ("validation_file", validation)):
        if row is None:
            continue
        try:
            check_task(task, row.format)
        except DatasetError as exc:
            raise ApiError(400, f"{param}: {exc}", param=param, code="invalid_file") from None
    if task == "classification" and body.training_method == "lora":
        raise ApiError(
            400,
            'task "classification" trains with training_method "full" or "transfer"; '
            "LoRA adapters here are for text generation",
            param="training_method",
        )
    return {**given(JobOptions, body), "task": task}


def build_job(session: Session, owner: str, body: JobCreate) -> Job:
    """A new job row, queued for a worker, after every check that needs no tokenizer."""
    hyperparameters = requested_hyperparameters(body)
    if find_base_model(body.model, get_settings().resolved_models_dir) is None:
        raise ApiError(
            400,
            f"model '{body.model}' does not exist; GET /v1/models lists the base models",
            param="model",
            code="model_not_found",
        )
    if not body.dry_run:
        # Until this job is committed, a delete of its files waits (and then sees the job).
        lock_files(session, [body.training_file, body.validation_file])
    options = job_options(session, owner, body)
    if not body.dry_run:  # a dry run stores nothing, so it takes no place in the quota
        check_active_jobs(session, owner)
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    return Job(
        id=new_sortable_id("ftjob"),
        owner=owner,
        model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        suffix=body.suffix or None,
        seed=seed,
        status=JobStatus.queued,
        hyperparameters=hyperparameters,
        options=options,
        created_at=now_ts(),
        steps_completed=0,
        cancel_requested=False,
        pause_requested=False,
        attempt=0,
        enqueued_at=time.time(),
    )


def dry_run_plan(job: Job) -> dict[str, Any]:
    """The resolved plan for an unsaved job, from a worker (the API cannot tokenize)."""
    request = {
        "id": job.id,
        "owner": job.owner,
        "model": job.model,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "suffix": job.suffix,
        "seed": job.seed,
        "hyperparameters": job.hyperparameters,
        "options": job.options,
    }
    answer = run_dry_run(job.owner, request, get_settings().completion_timeout_seconds)
    error = answer.get("error")
    if error:
        raise ApiError(
            400, str(error["message"]), param=error.get("param"), code=str(error["code"])
        )
    plan = {"object": "fine_tuning.job.plan", "dry_run": True, "model": job.model}
    return {**plan, "seed": job.seed, **answer}
