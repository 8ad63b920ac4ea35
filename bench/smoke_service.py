"""A gpt2ft home in a temporary folder for bench/gpu_smoke.py: files and jobs as the API makes
them, run by the worker's own run_job, read back from the database."""

import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO

WORKER_ID = "gpu-smoke:1:bench"
# The smoke reads its corpus from this repository: prose from the docs, code from the sources.
SOURCES = {"prose": "*.md", "code": "worker/**/*.py"}
# The record kind each task's file holds (as File.format stores it).
KIND_CODES = {"causal_lm": "text", "completion": "completion", "classification": "label"}


def build_models(folder: Path, shapes: dict[str, dict[str, int]]) -> None:
    """Random-init GPT-2 models of the given shapes (no hub here), named by folder."""
    from shared.tokenizer_files import fetch_tokenizer_files
    from worker.training.tiny import build_random_gpt2

    tokenizer_dir = fetch_tokenizer_files(REPO / "var" / "tokenizer" / "gpt2")
    for name, shape in shapes.items():
        description = f"gpu-smoke: GPT-2 shape {shape}, random weights"
        build_random_gpt2(folder / name, tokenizer_dir, shape, description)


def models_dir() -> Path:
    """The smoke home's base models."""
    from shared.settings import get_settings

    return get_settings().resolved_models_dir


def scratch() -> Path:
    """A folder for throwaway output inside the smoke home."""
    from shared.settings import get_settings

    path = get_settings().home / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_home(root: Path, models_dir: Path, device: str) -> None:
    """Settings pointed at root (SQLite), the schema migrated: what `gpt2ft setup` leaves."""
    from shared.db.migrate import upgrade
    from shared.settings import get_settings

    root.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {
            "GPT2FT_HOME": str(root),
            "DATABASE_URL": f"sqlite:///{root / 'gpt2ft.db'}",
            "GPT2FT_MODELS_DIR": str(models_dir),
            "GPT2FT_TOKENIZER_DIR": str(REPO / "var" / "tokenizer" / "gpt2"),
            "GPT2FT_DEVICE": device,
            "HF_HUB_OFFLINE": "1",
            "GPT2FT_HEARTBEAT_SECONDS": "1",
            "GPT2FT_METRICS_FLUSH_SECONDS": "0.5",
            # No broker here: a requeue's wake-up call fails fast and is logged.
            "REDIS_URL": "redis://127.0.0.1:1/0",
        }
    )
    get_settings.cache_clear()
    upgrade()


def paragraphs(kind: str, max_chars: int) -> list[str]:
    """Paragraphs of this repository's prose or code, up to max_chars in all."""
    found, total = [], 0
    for path in sorted(REPO.glob(SOURCES[kind])):
        for chunk in path.read_text(errors="replace").split("\n\n"):
            chunk = chunk.strip()
            if len(chunk) >= 60:
                found.append(chunk)
                total += len(chunk)
            if total >= max_chars:
                return found
    return found


def records(task: str, max_chars: int, repeat: int = 1) -> list[dict[str, str]]:
    """Training records for task: text, prompt/completion halves, or prose/code labels."""
    texts = paragraphs("prose", max_chars // 2) + paragraphs("code", max_chars // 2)
    if task == "completion":
        halves = [(t[: len(t) // 2], t[len(t) // 2 :]) for t in texts]
        rows = [{"prompt": p, "completion": c} for p, c in halves]
    elif task == "classification":
        rows = [
            {"text": t, "label": kind} for kind in SOURCES for t in paragraphs(kind, max_chars // 2)
        ]
    else:
        rows = [{"text": t} for t in texts]
    return rows * repeat


def add_files(chars: int, examples: int, block_size: int) -> dict[str, str]:
    """A file per task (and "packed" text), repeated to at least examples training examples."""
    from worker.training.tiny import load_bpe_tokenizer

    files = {}
    for task, kind in KIND_CODES.items():
        rows = records(task, chars)
        files[task] = add_file(rows * max(1, math.ceil(examples / len(rows))), kind)
    # Packed text: enough copies that the blocks reach examples.
    tokenizer = load_bpe_tokenizer(REPO / "var" / "tokenizer" / "gpt2")
    text = records("causal_lm", chars)
    tokens = sum(len(tokenizer(row["text"]).input_ids) + 1 for row in text)
    files["packed"] = add_file(text * max(1, math.ceil(examples * block_size / tokens)), "text")
    return files


def add_file(rows: list[dict[str, str]], kind: str) -> str:
    """A fine-tune file as an upload stores it (bytes under storage, then the row).

    kind: the stored record kind, "text", "completion" or "label".
    """
    from shared.db.session import session_scope
    from shared.db.tables import File
    from shared.ids import new_sortable_id, now_ts
    from shared.storage import file_key, get_storage

    file_id = new_sortable_id("file")
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    upload = scratch() / f"{file_id}.jsonl"
    upload.write_bytes(data)
    get_storage().put_file(file_key(file_id), upload, move=True)
    row = File(
        id=file_id,
        owner="smoke",
        filename=f"{kind}.jsonl",
        purpose="fine-tune",
        bytes=len(data),
        format=f"jsonl-{kind}",
        records=len(rows),
        created_at=now_ts(),
    )
    with session_scope() as session:
        session.add(row)
    return file_id


def add_job(model: str, file_id: str, hyperparameters: dict, options: dict) -> str:
    """A job row as POST /v1/fine_tuning/jobs creates it (validating_files, attempt 0)."""
    from shared.db.session import session_scope
    from shared.db.tables import Job, JobStatus
    from shared.ids import new_sortable_id, now_ts

    job_id = new_sortable_id("ftjob")
    row = Job(
        id=job_id,
        owner="smoke",
        model=model,
        training_file=file_id,
        seed=7,
        status=JobStatus.validating_files.value,
        hyperparameters=hyperparameters,
        options=options,
        created_at=now_ts(),
        steps_completed=0,
        cancel_requested=False,
        pause_requested=False,
        attempt=0,
        enqueued_at=time.time(),
    )
    with session_scope() as session:
        session.add(row)
    return job_id


def set_job(job_id: str, **values: Any) -> None:
    """Write columns of a job (a user's pause, the API's resume)."""
    from sqlalchemy import update

    from shared.db.session import session_scope
    from shared.db.tables import Job

    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


@dataclass
class JobView:
    """What the smoke reports about a job after run_job returned."""

    model: str
    status: str
    error: dict | None
    resolved: dict[str, Any] | None
    stats: dict[str, Any]
    events: list[tuple[str, dict | None]]
    tokens_per_second: float | None
    # Where inference finds the fine-tuned model (a stored set), once the job succeeded.
    model_location: str | None


def read_job(job_id: str) -> JobView:
    """The job's status, stats, events and steady training throughput, from the database."""
    from sqlalchemy import select

    from shared.db.session import session_scope
    from shared.db.tables import FineTunedModel, Job, JobEvent, Metric
    from shared.storage import STORED_LOCATION

    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        events = session.execute(
            select(JobEvent.message, JobEvent.data)
            .where(JobEvent.job_id == job_id, JobEvent.type == "message")
            .order_by(JobEvent.seq)
        ).all()
        rates = session.scalars(select(Metric.data).where(Metric.job_id == job_id)).all()
        kept = session.scalars(
            select(FineTunedModel.path).where(FineTunedModel.job_id == job_id)
        ).first()
        model, resolved = job.model, job.resolved
        status, error, stats = job.status, job.error, dict(job.stats or {})
    # The first interval holds the warm-up (CUDA kernels, allocator): the median skips it.
    speeds = [r["tokens_per_second"] for r in rates if r.get("tokens_per_second")]
    speed = statistics.median(speeds) if speeds else None
    messages = [(message, data) for message, data in events]
    location = STORED_LOCATION + kept if kept else None
    return JobView(model, status, error, resolved, stats, messages, speed, location)
