"""A create-job body to a validated job row: hyperparameters, model, files, seed."""

import secrets
import time
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.errors import ApiError, validation_error
from api.job_methods import method_options
from api.job_tasks import task_options
from api.limits import check_active_jobs
from api.locks import lock_files
from api.routes.files import owned_file
from api.schemas import JobCreate
from shared.catalog import find_base_model
from shared.db.models import Job, JobStatus
from shared.ids import new_sortable_id, now_ts
from shared.settings import get_settings
from shared.spec import EXTENSION_FIELDS, Hyperparameters


def _sources(body: JobCreate) -> list[tuple[str, dict[str, Any]]]:
    """Where hyperparameters may come from, each with the path prefix errors should name."""
    sources: list[tuple[str, dict[str, Any]]] = []
    if body.method and body.method.supervised and body.method.supervised.hyperparameters:
        sources.append(
            ("method.supervised.hyperparameters.", body.method.supervised.hyperparameters)
        )
    if body.hyperparameters:
        sources.append(("hyperparameters.", body.hyperparameters))
    # getattr with a default: JobCreate may lag EXTENSION_FIELDS (extra="forbid" guards it).
    top = {
        name: getattr(body, name, None)
        for name in EXTENSION_FIELDS
        if getattr(body, name, None) is not None
    }
    if top:
        sources.append(("", top))
    return sources


def requested_hyperparameters(body: JobCreate) -> dict[str, Any]:
    """The merged request, validated against shared.spec.Hyperparameters ("auto" kept)."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for prefix, values in _sources(body):
        for name, value in values.items():
            if name in merged and merged[name] != value:
                raise ApiError(
                    422,
                    f"{prefix}{name} conflicts with {origin[name]}{name}; give it once",
                    param=f"{prefix}{name}",
                )
            merged[name], origin[name] = value, prefix
    try:
        hp = Hyperparameters.model_validate(merged)
    except ValidationError as exc:
        errors = exc.errors()
        raise validation_error(
            errors, lambda path: origin.get(path.split(".")[0], "hyperparameters.") + path
        ) from None
    return hp.model_dump(mode="json", exclude_unset=True)


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
    owned_file(session, owner, body.training_file, "training_file")
    if body.validation_file is not None:
        owned_file(session, owner, body.validation_file, "validation_file")
    if not body.dry_run:  # a dry run stores nothing, so it takes no place in the quota
        check_active_jobs(session, owner)
    options = {**task_options(session, body), **method_options(body)}
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    now = now_ts()
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
        created_at=now,
        steps_completed=0,
        cancel_requested=False,
        pause_requested=False,
        attempt=0,
        enqueued_at=time.time(),
    )


def dry_run_plan(job: Job) -> dict[str, Any]:
    """The resolved plan for an unsaved job, from a worker (the API cannot tokenize)."""
    from api.queue import run_generation
    from shared.naming import PLAN_TASK

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
    answer = run_generation(request, get_settings().completion_timeout_seconds, task=PLAN_TASK)
    error = answer.get("error")
    if error:
        raise ApiError(
            400, str(error["message"]), param=error.get("param"), code=str(error["code"])
        )
    return {"object": "fine_tuning.job.plan", "dry_run": True, "model": job.model,
            "seed": job.seed, **answer}  # fmt: skip
