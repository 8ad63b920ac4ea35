"""The jobs logic behind /v1/fine_tuning/jobs: a create body checked into a job row, dry runs.

Everything that needs no tokenizer is checked here, at create, with a 4xx naming the field;
what needs one runs in a worker as the job's validating_files phase.
"""

import re
import secrets
import time
from typing import Any

from pydantic import BaseModel
from sqlalchemy import ColumnElement, exists, func
from sqlalchemy.orm import Session
from starlette.datastructures import QueryParams

from api.deps import owned_file
from api.errors import ApiError
from api.limits import check_active_jobs, check_job_outputs
from api.locks import lock_files
from api.queue import run_dry_run
from api.schemas import JobCreate
from shared.catalog import BaseModelEntry, find_base_model
from shared.datasets import KINDS, DatasetError, check_task, record_kind, task_for_format
from shared.db.tables import File, Job, JobStatus
from shared.ids import new_sortable_id, now_ts
from shared.model_size import model_shape, output_bytes_estimate
from shared.naming import FINE_TUNE_PURPOSE
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


def training_data(session: Session, owner: str, file_id: str, param: str) -> File:
    """The caller's file named by param; 400 unless it was uploaded as training data."""
    row = owned_file(session, owner, file_id, param)
    if row.purpose != FINE_TUNE_PURPOSE:
        raise ApiError(
            400,
            f"{param}: {file_id} has purpose {row.purpose!r}, not {FINE_TUNE_PURPOSE!r}; "
            f"upload the training data with purpose {FINE_TUNE_PURPOSE!r} and pass that file",
            param=param,
            code="invalid_file_purpose",
        )
    return row


def check_same_records(training: File, validation: File) -> None:
    """400 unless the validation file holds the training file's kind of records."""
    train_kind, valid_kind = record_kind(training.format), record_kind(validation.format)
    if train_kind is None or valid_kind is None or train_kind == valid_kind:
        return  # a legacy "jsonl" row names no kind: the worker reads and checks it
    raise ApiError(
        400,
        f"validation_file holds {valid_kind} records ({', '.join(KINDS[valid_kind])}) but "
        f"training_file holds {train_kind} records ({', '.join(KINDS[train_kind])}); "
        "upload validation data in the training file's format",
        param="validation_file",
        code="invalid_file",
    )


def job_options(session: Session, owner: str, body: JobCreate) -> dict[str, Any]:
    """Job.options: the task and method options as given, the task resolved and checked."""
    training = training_data(session, owner, body.training_file, "training_file")
    validation = None
    if body.validation_file is not None:
        validation = training_data(session, owner, body.validation_file, "validation_file")
        check_same_records(training, validation)
    task = body.task or task_for_format(training.format)
    for param, row in (("training_file", training), ("validation_file", validation)):
        if row is None:
            continue
        try:
            check_task(task, row.format)
        except DatasetError as exc:
            raise ApiError(400, f"{param}: {exc}", param=param, code="invalid_file") from None
    return {**given(JobOptions, body), "task": task}


def check_supported(body: JobCreate) -> None:
    """400 for OpenAI fields gpt2ft cannot honour, rather than dropping them silently."""
    if body.integrations:
        raise ApiError(
            400,
            "integrations: gpt2ft has no third-party integrations (such as Weights & Biases); "
            "remove the field and follow the job's events and metrics instead",
            param="integrations",
            code="unsupported_parameter",
        )


# OpenAI's list filter: metadata[key]=value, every pair must match.
_METADATA_PAIR = re.compile(r"^metadata\[(.+)\]$")


def metadata_conditions(query: QueryParams, dialect: str) -> list[ColumnElement[bool]]:
    """WHERE conditions for metadata[key]=value filters, or metadata=null (jobs without any)."""
    matches = ((_METADATA_PAIR.match(name), value) for name, value in query.multi_items())
    pairs = [(m[1], value) for m, value in matches if m]
    if "metadata" in query:
        if query["metadata"] != "null" or pairs:
            raise ApiError(
                400,
                "metadata: filter with metadata[key]=value (repeat for more keys) or select "
                "jobs without metadata with metadata=null; not both",
                param="metadata",
            )
        return [Job.job_metadata.is_(None)]
    return [_metadata_has(dialect, key, value) for key, value in pairs]


def _metadata_has(dialect: str, key: str, value: str) -> ColumnElement[bool]:
    """metadata[key] == value; SQLite's JSON paths cannot quote every key, its json_each can."""
    if dialect != "sqlite":
        return Job.job_metadata[key].as_string() == value
    pairs = func.json_each(Job.job_metadata).table_valued("key", "value")
    return exists().select_from(pairs).where(pairs.c.key == key, pairs.c.value == value)


def build_job(session: Session, owner: str, body: JobCreate) -> Job:
    """A new job row, queued for a worker, after every check that needs no tokenizer."""
    check_supported(body)
    hyperparameters = requested_hyperparameters(body)
    base = find_base_model(body.model, get_settings().resolved_models_dir)
    if base is None:
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
    stats: dict[str, Any] = {}
    if not body.dry_run:  # a dry run stores nothing, so it takes no place in the quota
        check_active_jobs(session, owner)
        estimate = job_outputs_estimate(base, hyperparameters, options)
        if estimate is not None:
            check_job_outputs(session, owner, estimate)
            stats["output_bytes_estimate"] = estimate
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
        job_metadata=body.metadata,
        created_at=now_ts(),
        steps_completed=0,
        cancel_requested=False,
        pause_requested=False,
        attempt=0,
        enqueued_at=time.time(),
        stats=stats or None,
    )


def job_outputs_estimate(
    base: BaseModelEntry, hyperparameters: dict[str, Any], options: dict[str, Any]
) -> int | None:
    """Bytes the job's kept checkpoints and final model take at most (None: unknown shape)."""
    shape = model_shape(base)
    if shape is None:
        return None
    hp = Hyperparameters.model_validate(hyperparameters)
    method = JobOptions.model_validate(options)
    return output_bytes_estimate(
        shape, hp.keep_checkpoints, method.training_method, method.trainable_layers
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
