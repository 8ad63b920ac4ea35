"""A process-wide 'please stop' flag set by SIGTERM and read by the training loop."""

import threading

_shutdown = threading.Event()


def request_shutdown() -> None:
    """Ask the running job to checkpoint and hand itself back to the queue."""
    _shutdown.set()


def shutdown_requested() -> bool:
    """True once SIGTERM (Celery's warm shutdown) arrived."""
    return _shutdown.is_set()
