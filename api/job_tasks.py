"""The task extensions of a create-job body: validated, inferred from the file, checked."""

from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.errors import ApiError, validation_error
from api.schemas import JobCreate
from shared.datasets import DatasetError, check_task, task_for_format
from shared.db.tables import File
from shared.spec import TASK_FIELDS, TaskOptions


def _format(session: Session, file_id: str | None) -> str | None:
    row = session.get(File, file_id) if file_id else None
    return row.format if row is not None else None


def task_options(session: Session, body: JobCreate) -> dict[str, Any]:
    """{"task", "packing", "max_length"} as Job.options stores them; the task always resolved."""
    given = {name: getattr(body, name) for name in TASK_FIELDS if getattr(body, name) is not None}
    try:
        options = TaskOptions.model_validate(given)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None
    train_format = _format(session, body.training_file) or "txt"
    task = options.task or task_for_format(train_format)
    for param, stored in (("training_file", train_format),
                          ("validation_file", _format(session, body.validation_file))):  # fmt: skip
        if stored is None:
            continue
        try:
            check_task(task, stored)
        except DatasetError as exc:
            raise ApiError(400, f"{param}: {exc}", param=param, code="invalid_file") from None
    if task == "classification" and getattr(body, "training_method", None) == "lora":
        raise ApiError(
            400,
            'task "classification" trains with training_method "full" or "transfer"; '
            "LoRA adapters here are for text generation",
            param="training_method",
        )
    return {**options.model_dump(exclude_unset=True), "task": task}
