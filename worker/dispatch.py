"""Sending job messages from inside a worker (sweep, SIGTERM requeue)."""

import logging

from shared.naming import TRAIN_TASK, TRAINING_QUEUE

log = logging.getLogger(__name__)


def send_job(job_id: str) -> bool:
    """Wake a worker for job_id; False (logged) when the broker is unreachable."""
    from shared.settings import get_settings
    from worker.celery_app import sender_for

    try:
        sender_for(get_settings().redis_url).send_task(
            TRAIN_TASK, args=[job_id], queue=TRAINING_QUEUE, retry=False
        )
        return True
    except Exception as exc:  # the sweep sends it again later; the DB still holds the job
        log.warning("job %s: could not reach the broker: %s", job_id, exc)
        return False
