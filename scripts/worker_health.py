"""The worker container's health check: can this `gpt2ft worker` take and run jobs?

Healthy when the supervisor's two Celery processes (training, inference queues) run, and
Redis and the database answer from here. Celery's `inspect ping` is no use: a solo-pool
worker answers nothing while it trains, for hours. Exit 0, or 1 naming every problem.

    python scripts/worker_health.py                 # in the container: the supervisor is pid 1
    python scripts/worker_health.py --supervisor PID
"""

import argparse
import sys
from pathlib import Path

import redis
from sqlalchemy import text

from shared.db.session import get_engine
from shared.naming import INFERENCE_QUEUE, TRAINING_QUEUE
from shared.settings import get_settings

STOPPED_STATES = {"Z": "a zombie", "T": "stopped", "t": "stopped by a tracer", "X": "dead"}


def child_processes(parent: int) -> list[tuple[int, str, list[str]]]:
    """(pid, state letter, argv) of each process whose parent is `parent`, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # it exited while we looked
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("PPid", "0").strip()) == parent:
            state = fields.get("State", "?").strip()[:1]
            found.append((int(entry.name), state, [a.decode(errors="replace") for a in argv if a]))
    return found


def celery_problems(supervisor: int) -> list[str]:
    """What is wrong with the supervisor's Celery processes (one per queue, running)."""
    by_queue: dict[str, tuple[int, str]] = {}
    for pid, state, argv in child_processes(supervisor):
        if "celery" in argv and "-Q" in argv[:-1]:
            # The training process serves "training,training.<its own>": each name counts.
            for queue in argv[argv.index("-Q") + 1].split(","):
                by_queue[queue] = (pid, state)
    problems = []
    for queue in (TRAINING_QUEUE, INFERENCE_QUEUE):
        if queue not in by_queue:
            problems.append(f"no Celery process for the {queue} queue under pid {supervisor}")
            continue
        pid, state = by_queue[queue]
        if state in STOPPED_STATES:
            problems.append(f"the {queue} Celery process {pid} is {STOPPED_STATES[state]}")
    return problems


def redis_problem(url: str) -> str | None:
    """None when Redis answers PING within 3 s, else why not."""
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except Exception as exc:  # any failure is the answer
        return f"Redis does not answer: {type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


def database_problem() -> str | None:
    """None when the database runs SELECT 1, else why not."""
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure is the answer
        return f"the database does not answer: {type(exc).__name__}: {exc}"[:300]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supervisor", type=int, default=1, help="pid of `gpt2ft worker`")
    args = parser.parse_args(argv)
    problems = celery_problems(args.supervisor)
    problems += [p for p in (redis_problem(get_settings().redis_url), database_problem()) if p]
    for problem in problems:
        print(f"unhealthy: {problem}", file=sys.stderr)
    if not problems:
        print("healthy: training and inference Celery processes run; Redis and database answer")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
