"""Child processes for the dev supervisor: start in their own group, stop with TERM then KILL."""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

# A Celery warm shutdown waits for the running task; a training job resumes from its
# checkpoint when its lease lapses, so after this long the supervisor stops waiting.
STOP_TIMEOUT_SECONDS = 15.0


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if the supervisor dies without cleaning up."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


class Child:
    """One supervised process (and everything it starts: it leads its own process group)."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self, stdout: int | None = None) -> None:
        """Start the process; it inherits the terminal unless stdout is given."""
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children
            preexec_fn=_die_with_parent,
        )
        self.started_at = time.monotonic()

    def poll(self) -> int | None:
        """The exit code, or None while it runs (or was never started)."""
        return None if self.process is None else self.process.poll()

    def running(self) -> bool:
        """True while started and not yet exited."""
        return self.process is not None and self.process.poll() is None

    def signal_group(self, signum: int) -> None:
        """Send signum to the child's whole process group (its workers included)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def stop_all(
    children: Sequence[Child],
    timeout: float = STOP_TIMEOUT_SECONDS,
    hurry: Callable[[], bool] = lambda: False,
) -> None:
    """SIGTERM every child's group, wait up to timeout (or until hurry()), then SIGKILL."""
    for child in children:
        if child.process is not None:
            child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(child.running() for child in children):
        if time.monotonic() >= deadline or hurry():
            break
        time.sleep(0.1)
    for child in children:
        # Kill the group even when its leader exited: grandchildren may linger.
        child.signal_group(signal.SIGKILL)
        if child.process is not None:
            try:
                child.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when port can be bound on host."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(
    port: int, child: Child, timeout: float, cancelled: Callable[[], bool] = lambda: False
) -> bool:
    """Wait until 127.0.0.1:port accepts connections; False if child exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.running() or cancelled():
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False
