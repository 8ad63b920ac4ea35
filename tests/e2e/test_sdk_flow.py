"""The README's flow through the official openai SDK against real api and worker processes."""

import io
import time

import pytest

from tests.e2e.conftest import Service
from tests.e2e.corpus import corpus_text

pytestmark = pytest.mark.e2e
# Waiting for a worker, then validating and planning in it, then training.
ORDER = ["queued", "validating_files", "running", "succeeded"]
TERMINAL = {"succeeded", "failed", "cancelled"}


def upload(client, text: str, name: str = "corpus.txt"):
    return client.files.create(file=(name, io.BytesIO(text.encode())), purpose="fine-tune")


def watch(client, job_id: str, until: set[str], timeout: float = 300) -> list[str]:
    """Poll retrieve; return the distinct statuses seen, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.fine_tuning.jobs.retrieve(job_id).status
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in until:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {seen[-1]} after {timeout}s (seen {seen})")


def all_events(client, job_id: str) -> list:
    return list(client.fine_tuning.jobs.list_events(job_id, limit=1000))


def test_fine_tune_and_generate(client, service: Service) -> None:
    training = upload(client, corpus_text())
    assert training.id.startswith("file-") and training.bytes > 1000
    job = client.fine_tuning.jobs.create(
        model="gpt2-tiny",
        training_file=training.id,
        hyperparameters={"n_epochs": 2},
        suffix="jokes",
        seed=7,
        extra_body={"block_size": 64},
    )
    assert job.status == "queued"
    seen = watch(client, job.id, TERMINAL)
    assert seen[-1] == "succeeded", client.fine_tuning.jobs.retrieve(job.id).error
    assert [s for s in ORDER if s in seen] == seen, seen

    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.fine_tuned_model == f"ft:gpt2-tiny:dev:jokes:{job.id}"
    assert job.trained_tokens and job.trained_tokens > 0
    assert job.hyperparameters.n_epochs == 2
    assert isinstance(job.hyperparameters.batch_size, int)
    assert isinstance(job.hyperparameters.learning_rate_multiplier, float)

    events = all_events(client, job.id)
    messages = [e.message for e in events if e.type == "message"]
    assert "Job started" in messages
    assert any(m.startswith("Epoch 1/2 done: valid_loss ") for m in messages), messages
    assert "The job has successfully completed" in messages
    metrics = [e.data for e in events if e.type == "metrics"]
    assert metrics and all({"step", "train_loss", "learning_rate"} <= set(d) for d in metrics)
    steps = [d["step"] for d in metrics]
    assert len(steps) == len(set(steps))
    assert any("valid_loss" in d for d in metrics)

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert len(checkpoints) == 2
    by_step = sorted(checkpoints, key=lambda c: c.step_number)
    for ckpt in by_step:
        assert ckpt.metrics.step == ckpt.step_number
        assert ckpt.metrics.train_loss is not None and ckpt.metrics.valid_loss is not None
        assert ckpt.fine_tuned_model_checkpoint == (
            f"{job.fine_tuned_model}:ckpt-step-{ckpt.step_number}"
        )
    # Random weights start near ln(50257) = 10.8; two epochs on a repeated corpus must improve.
    assert by_step[1].metrics.valid_loss < by_step[0].metrics.valid_loss < 10.8

    prompt = "A pair of jumper cables walks into a bar."
    for model in (job.fine_tuned_model, "gpt2-tiny", by_step[0].fine_tuned_model_checkpoint):
        completion = client.completions.create(model=model, prompt=prompt, max_tokens=30)
        assert completion.model == model
        assert len(completion.choices) == 1 and completion.choices[0].text.strip()
        assert completion.usage.completion_tokens <= 30

    model_ids = {m.id for m in client.models.list()}
    assert {"gpt2-tiny", "gpt2", "gpt2-xl", job.fine_tuned_model} <= model_ids


def test_offline_catalog_model_fails_at_validation(client) -> None:
    training = upload(client, corpus_text(2))
    job = client.fine_tuning.jobs.create(model="gpt2-medium", training_file=training.id)
    seen = watch(client, job.id, TERMINAL, timeout=120)
    assert seen[-1] == "failed"
    error = client.fine_tuning.jobs.retrieve(job.id).error
    assert error.param == "model"
    assert "gpt2-medium" in error.message and "cache" in error.message
    assert "Traceback" not in error.message


def test_cancel_running_and_queued(client, service: Service) -> None:
    training = upload(client, corpus_text())
    long_job = client.fine_tuning.jobs.create(
        model="gpt2-tiny",
        training_file=training.id,
        hyperparameters={"n_epochs": 100},
        extra_body={"block_size": 32},
    )
    watch(client, long_job.id, {"running"}, timeout=120)
    waiting = client.fine_tuning.jobs.create(model="gpt2-tiny", training_file=training.id)
    assert client.fine_tuning.jobs.cancel(waiting.id).status == "cancelled"

    deadline = time.monotonic() + 60
    while client.fine_tuning.jobs.retrieve(long_job.id).model_extra["steps_completed"] < 3:
        assert time.monotonic() < deadline, "the long job never logged 3 steps"
        time.sleep(0.2)
    client.fine_tuning.jobs.cancel(long_job.id)
    started = time.monotonic()
    assert watch(client, long_job.id, TERMINAL, timeout=60)[-1] == "cancelled"
    assert time.monotonic() - started < 30
    stopped_at = client.fine_tuning.jobs.retrieve(long_job.id).model_extra["steps_completed"]
    assert stopped_at < client.fine_tuning.jobs.retrieve(long_job.id).model_extra["total_steps"]

    time.sleep(8)  # longer than the sweep's re-send delay: the cancelled job must stay put
    assert client.fine_tuning.jobs.retrieve(waiting.id).status == "cancelled"
    assert "Job started" not in [e.message for e in all_events(client, waiting.id)]
    assert client.fine_tuning.jobs.cancel(waiting.id).status == "cancelled"  # idempotent


def test_job_list_pages_with_after_and_limit(client) -> None:
    training = upload(client, corpus_text(1))
    created = [
        client.fine_tuning.jobs.create(model="gpt2-tiny", training_file=training.id).id
        for _ in range(3)
    ]
    for job_id in created:
        client.fine_tuning.jobs.cancel(job_id)
    first = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in first.data] == created[::-1][:2] and first.has_more
    rest = client.fine_tuning.jobs.list(limit=2, after=first.data[-1].id)
    assert rest.data[0].id == created[0]
