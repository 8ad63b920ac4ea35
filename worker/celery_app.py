"""The Celery app: Redis wakes workers; the database decides who runs what."""

from celery import Celery

from shared.naming import GENERATE_TASK, INFERENCE_QUEUE, TRAIN_TASK, TRAINING_QUEUE
from shared.settings import get_settings


def make_celery() -> Celery:
    """A Celery app configured for hours-long tasks on the Redis broker (RELIABILITY.md)."""
    settings = get_settings()
    app = Celery(
        "gpt2ft", broker=settings.redis_url, backend=settings.redis_url, include=["worker.tasks"]
    )
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # Ack on receipt: redelivery after visibility_timeout would run a long job twice.
        task_acks_late=False,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=True,
        # Job state lives in the DB; only completions return a (short-lived) result.
        task_ignore_result=True,
        result_expires=600,
        task_routes={
            TRAIN_TASK: {"queue": TRAINING_QUEUE},
            GENERATE_TASK: {"queue": INFERENCE_QUEUE},
        },
        task_default_queue=TRAINING_QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


app = make_celery()
