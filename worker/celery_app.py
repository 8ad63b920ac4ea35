"""The Celery app: Redis wakes workers; the database decides who runs what."""

from functools import lru_cache

from celery import Celery, signals

from shared.logging_setup import configure_logging
from shared.naming import DRY_RUN_TASK, GENERATE_TASK, INFERENCE_QUEUE, TRAIN_TASK, TRAINING_QUEUE
from shared.settings import get_settings


@signals.setup_logging.connect
def _json_logs(**_: object) -> None:
    """Celery's own logging setup is skipped: every process logs JSON lines the same way."""
    configure_logging(get_settings().log_level)


def make_celery(redis_url: str | None = None) -> Celery:
    """A Celery app configured for hours-long tasks on the Redis broker (docs/reliability.md)."""
    url = redis_url or get_settings().redis_url
    app = Celery("gpt2ft", broker=url, backend=url, include=["worker.tasks"])
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
            DRY_RUN_TASK: {"queue": INFERENCE_QUEUE},
        },
        task_default_queue=TRAINING_QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


@lru_cache
def sender_for(redis_url: str) -> Celery:
    """A cached app for sending to redis_url (tests and processes may switch URLs)."""
    return make_celery(redis_url)


app = make_celery()
