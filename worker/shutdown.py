"""A process-wide 'please stop' flag set by SIGTERM and read by the training loop."""

# A plain bool, not a threading.Event: the flag is set from a signal handler, and two
# SIGTERMs (the process group's and the supervisor's) can nest; Event.set() takes a
# non-reentrant lock, so the nested handler would deadlock the training thread.
_requested = False


def request_shutdown() -> None:
    """Ask the running job to checkpoint and hand itself back to the queue."""
    global _requested
    _requested = True


def shutdown_requested() -> bool:
    """True once SIGTERM (Celery's warm shutdown) arrived."""
    return _requested
