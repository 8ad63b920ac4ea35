"""Lease renewal in a background thread; it flags loss, cancel and pause for the loop."""

import contextvars
import logging
import threading
import time

from shared.db.session import session_scope
from shared.jobs import Lease, LeaseLost, renew_lease

log = logging.getLogger(__name__)


class Heartbeat:
    """Renews the lease every interval; a failed renewal marks the lease lost."""

    def __init__(self, lease: Lease, lease_seconds: float, interval: float) -> None:
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.interval = interval
        self.lost = threading.Event()
        self.cancel_requested = False
        self.pause_requested = False
        self._expires_at = time.time() + lease_seconds
        self._failing = False
        self._stop = threading.Event()
        # Run in a copy of the caller's context so its log lines keep the job_id tag.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name="heartbeat", daemon=True
        )

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def beat(self) -> None:
        """Renew once now; DB errors are retried until the lease would have expired."""
        asked_at = time.time()  # the DB computes the new expiry from (about) now
        try:
            with session_scope() as session:
                requests = renew_lease(session, self.lease, self.lease_seconds)
        except LeaseLost:
            log.warning("job %s: lease lost; stopping without writing", self.lease.job_id)
            self.lost.set()
            return
        except Exception as exc:  # a DB blip: keep trying while the lease still holds
            log.warning("job %s: heartbeat failed: %s", self.lease.job_id, exc)
            self._failing = True
            if time.time() >= self._expires_at:
                self.lost.set()
            return
        self._failing = False
        self._expires_at = asked_at + self.lease_seconds
        self.cancel_requested, self.pause_requested = requests.cancel, requests.pause

    def expired(self) -> bool:
        """True once the last renewal is older than the lease: another worker may own it now.

        A process frozen (SIGSTOP, swap, a VM pause) past its lease learns it here, on its
        first step after waking, before the heartbeat thread even runs.
        """
        return time.time() >= self._expires_at

    def _run(self) -> None:
        # After a failed renewal, retry sooner: the lease is running out.
        while not self._stop.wait(min(self.interval, 1.0) if self._failing else self.interval):
            if self.lost.is_set():
                return
            self.beat()
