"""Thin Celery tasks: the logic lives in run_job and the training engine."""

import logging
from typing import Any

from celery import signals

from shared.logging_setup import job_logging
from shared.naming import CLASSIFY_TASK, DRY_RUN_TASK, GENERATE_TASK, TRAIN_TASK
from worker.celery_app import app
from worker.run_job import run_job, worker_identity
from worker.shutdown import request_shutdown

log = logging.getLogger(__name__)


@signals.celeryd_after_setup.connect
def _join_fleet(sender: str, instance: Any, **_: Any) -> None:
    """Check the device, log it and join the workers table; an unusable GPU stops the worker."""
    from worker.fleet import DeviceUnavailable, start_worker_beat
    from worker.run_job import warm_up

    warm_up()  # before joining: a worker the API lists picks a job up without imports
    try:
        start_worker_beat(worker_identity(), list(instance.app.amqp.queues.consume_from))
    except DeviceUnavailable as exc:
        log.critical("worker %s cannot start: %s", sender, exc)
        raise SystemExit(3) from None  # Celery swallows other exceptions from signal handlers


@signals.worker_shutdown.connect
def _leave_fleet(**_: Any) -> None:
    """After the last task (a running job has checkpointed and requeued): leave the table."""
    from worker.fleet import leave_fleet

    leave_fleet()


@signals.worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    """SIGTERM: the running job checkpoints at its next step and goes back to the queue."""
    request_shutdown()


@app.task(name=TRAIN_TASK, ignore_result=True)
def run_job_task(job_id: str) -> None:
    """Claim the job and train it; a duplicate message finds the job claimed and returns."""
    with job_logging(job_id):
        run_job(job_id, worker_identity())


@app.task(name=GENERATE_TASK, ignore_result=False)
def generate_task(request: dict[str, Any]) -> dict[str, Any]:
    """Generate text for /v1/completions; models stay cached in this process."""
    from worker.inference import handle_generate

    return handle_generate(request)


@app.task(name=CLASSIFY_TASK, ignore_result=False)
def classify_task(request: dict[str, Any]) -> dict[str, Any]:
    """Labels and probabilities for /v1/classifications; models stay cached in this process."""
    from worker.inference import handle_classify

    return handle_classify(request)


@app.task(name=DRY_RUN_TASK, ignore_result=False)
def dry_run_task(request: dict[str, Any]) -> dict[str, Any]:
    """Resolve a dry-run job's plan (tokenize, count, estimate memory) without training."""
    from worker.dry_run import handle_plan

    return handle_plan(request)
