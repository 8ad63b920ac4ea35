"""JSON-lines logging for every gpt2ft process, with the current job's id on each line."""

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO

# Set while a worker runs a job: every line logged in that context names the job.
current_job_id: ContextVar[str | None] = ContextVar("gpt2ft_job_id", default=None)

# LogRecord attributes that are not user extras.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, job_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        line: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None) or current_job_id.get()
        if job_id:
            line["job_id"] = job_id
        for key, value in vars(record).items():
            if key not in _STANDARD and key != "job_id" and not key.startswith("_"):
                line[key] = value if isinstance(value, str | int | float | bool) else repr(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


# Celery's "received" and "succeeded" lines quote a task's arguments and result: for
# completions that is the user's prompts and the generated text.
_TASK_PAYLOAD = ("args", "kwargs", "return_value")


class TaskPayloadFilter(logging.Filter):
    """Celery task lines keep their id, name and runtime; the payload only at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Blank the payload of a Celery INFO line unless the root logger shows DEBUG."""
        context = record.args
        if (
            record.name.startswith("celery")
            and isinstance(context, dict)
            and logging.getLogger().getEffectiveLevel() > logging.DEBUG
        ):
            hidden = {k: "(shown at log level DEBUG)" for k in _TASK_PAYLOAD if k in context}
            record.args = {**context, **hidden}
            data = getattr(record, "data", None)
            if isinstance(data, dict):
                record.__dict__["data"] = {**data, **hidden}
        return True


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Route the root logger (and uvicorn's, celery's) to stderr (or stream) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TaskPayloadFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
        named = logging.getLogger(name)
        named.handlers[:] = []
        named.propagate = True
    # Alembic's fileConfig disables every logger that existed before it ran: undo that.
    for existing in logging.root.manager.loggerDict.values():
        if isinstance(existing, logging.Logger):
            existing.disabled = False


@contextmanager
def job_logging(job_id: str) -> Iterator[None]:
    """Tag every log line in this context (thread or task) with job_id."""
    token = current_job_id.set(job_id)
    try:
        yield
    finally:
        current_job_id.reset(token)
