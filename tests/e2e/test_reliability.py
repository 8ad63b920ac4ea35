"""Crashes, duplicates, broker loss, stalls and signals against real api and worker processes."""

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.e2e.conftest import Service, job_events, wait_until
from tests.e2e.corpus import corpus_text

pytestmark = pytest.mark.e2e
TERMINAL = {"succeeded", "failed", "cancelled"}
# Short leases so a lost worker is noticed in seconds; two attempts so giving up is quick.
FAST = {
    "GPT2FT_LEASE_SECONDS": "6",
    "GPT2FT_HEARTBEAT_SECONDS": "1",
    "GPT2FT_MAX_ATTEMPTS": "2",
    # One torch thread per worker: on a shared 2-core box, more threads only thrash.
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def parent_pid(pid: int) -> int:
    """A process's parent, from /proc (the Celery children run in their own sessions)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


class Api:
    """Plain HTTP against the service, plus read-only looks at its SQLite database."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.http = httpx.Client(
            base_url=f"{service.url}/v1",
            headers={"Authorization": f"Bearer {service.api_key}"},
            timeout=60,
        )
        self.files: dict[str, str] = {}
        self.references: dict[tuple[int, int], str] = {}

    def file(self, text: str) -> str:
        if text not in self.files:
            response = self.http.post(
                "/files",
                files={"file": ("corpus.txt", text.encode())},
                data={"purpose": "fine-tune"},
            )
            assert response.status_code == 200, response.text
            self.files[text] = response.json()["id"]
        return self.files[text]

    def create(self, epochs: int = 1, every: int | None = None, repeat: int = 10) -> str:
        """A gpt2-tiny job; repeat=10 gives 8 steps an epoch, repeat=20 gives 17."""
        body: dict[str, Any] = {
            "model": "gpt2-tiny",
            "training_file": self.file(corpus_text(repeat)),
            "validation_file": self.file(corpus_text(3)),
            "seed": 11,
            "hyperparameters": {"n_epochs": epochs, "batch_size": 4, "block_size": 32},
        }
        if every:
            body["hyperparameters"]["checkpoint_every_steps"] = every
        response = self.http.post("/fine_tuning/jobs", json=body)
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/fine_tuning/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def action(self, job_id: str, name: str) -> httpx.Response:
        return self.http.post(f"/fine_tuning/jobs/{job_id}/{name}")

    def wait(self, job_id: str, statuses: set[str], timeout: float = 120) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def reached() -> bool:
            found.update(self.job(job_id))
            return found["status"] in statuses

        try:
            wait_until(reached, timeout, f"{job_id} to reach {statuses}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen: {found.get('status')}") from None
        return found

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return job_events(self.http, job_id)

    def messages(self, job_id: str) -> list[str]:
        return [e["message"] for e in self.events(job_id) if e["type"] == "message"]

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        response = self.http.get(f"/fine_tuning/jobs/{job_id}/checkpoints", params={"limit": 100})
        return sorted(response.json()["data"], key=lambda c: c["step_number"])

    def row(self, job_id: str) -> dict[str, Any]:
        """The job row itself (attempt and lease are not part of the API)."""
        with sqlite3.connect(self.service.home / "gpt2ft.db", timeout=30) as db:
            db.row_factory = sqlite3.Row
            return dict(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def holder_pid(self, job_id: str) -> int:
        """The pid of the Celery process holding the job's lease (host:pid:nonce)."""
        owner = self.row(job_id)["lease_owner"]
        assert owner, f"{job_id} has no lease owner"
        return int(owner.split(":")[1])

    def holder(self, job_id: str) -> str:
        """The name of the `gpt2ft worker` whose Celery child holds the job's lease."""
        supervisor = parent_pid(self.holder_pid(job_id))
        names = [n for n, p in self.service.processes.items() if p.pid == supervisor]
        assert names, f"supervisor {supervisor} is none of {list(self.service.processes)}"
        return names[0]

    def reference(self, epochs: int, repeat: int = 10) -> str:
        """An uninterrupted job of this shape (run once per module): what others must equal."""
        key = (epochs, repeat)
        if key not in self.references:
            job_id = self.create(epochs=epochs, repeat=repeat)
            assert self.wait(job_id, TERMINAL, timeout=300)["status"] == "succeeded"
            self.references[key] = job_id
        return self.references[key]

    def training_record(self, job_id: str) -> list[dict[str, Any]]:
        """Every logged step's figures, without the wall-clock ones (tokens_per_second)."""
        response = self.http.get(f"/fine_tuning/jobs/{job_id}/metrics")
        assert response.status_code == 200, response.text
        return [
            {k: v for k, v in point.items() if k != "tokens_per_second"}
            for point in response.json()["data"]
        ]

    def stored(self, job_id: str) -> dict[str, Any]:
        """Everything stored about the job: its row, events, metrics and checkpoints."""
        with sqlite3.connect(self.service.home / "gpt2ft.db", timeout=30) as db:
            db.row_factory = sqlite3.Row
            tables = {"jobs": "id", "job_events": "job_id", "metrics": "job_id"}
            tables["checkpoints"] = "job_id"
            return {
                table: [
                    dict(r)
                    for r in db.execute(f"SELECT * FROM {table} WHERE {column} = ?", (job_id,))
                ]
                for table, column in tables.items()
            }

    def final_valid_loss(self, job_id: str) -> float:
        losses = [
            e["data"]["valid_loss"]
            for e in self.events(job_id)
            if e["type"] == "metrics" and "valid_loss" in e["data"]
        ]
        return float(losses[-1])


@pytest.fixture(scope="module")
def api(service: Service) -> Iterator[Api]:
    """The module's workers run with FAST settings; the default worker makes way."""
    service.stop("worker")
    service.start_worker("w1", **FAST)
    client = Api(service)
    yield client
    client.http.close()


def ensure_workers(service: Service, count: int) -> None:
    """At least count FAST workers, so each test also runs alone (-k)."""
    running = [n for n in service.processes if n.startswith("w")]
    for number in range(count - len(running)):
        service.start_worker(f"w-extra-{len(service.processes)}-{number}", **FAST)


def wait_steps(api: Api, job_id: str, past: int, timeout: float = 90) -> None:
    wait_until(lambda: api.job(job_id)["steps_completed"] > past, timeout, f"step {past}")


def assert_every_step_logged(api: Api, job_id: str) -> None:
    """One metrics row per step, none missing (rows are keyed by step: never two for one)."""
    steps = [point["step"] for point in api.training_record(job_id)]
    assert steps == list(range(1, api.job(job_id)["total_steps"] + 1)), steps


def assert_trained_as(api: Api, job_id: str, reference: str) -> None:
    """Every step's figures equal the uninterrupted reference's, exactly (CPU, one thread).

    A resume that replayed a step differently, or a stale attempt's late write, shows here.
    """
    record, expected = api.training_record(job_id), api.training_record(reference)
    assert [p["step"] for p in record] == [p["step"] for p in expected]
    for got, want in zip(record, expected, strict=True):
        assert got == want, f"step {want['step']}: {got} != {want}"


def test_kill9_mid_epoch_resumes_from_step_checkpoint(api: Api, service: Service) -> None:
    plain = api.create(epochs=2, repeat=20)
    assert api.wait(plain, TERMINAL)["status"] == "succeeded"
    total = api.job(plain)["total_steps"]
    assert 30 <= total <= 300, total

    crashed = api.create(epochs=2, every=5, repeat=20)
    api.wait(crashed, {"running"})
    wait_until(lambda: api.checkpoints(crashed), 60, "a step checkpoint")
    saved = api.checkpoints(crashed)[-1]["step_number"]
    wait_steps(api, crashed, saved)
    service.stop("w1", signal.SIGKILL)
    at_kill = api.job(crashed)["steps_completed"]
    assert at_kill < total, "the job finished before the kill; make it longer"
    service.start_worker("w2", **FAST)

    assert api.wait(crashed, TERMINAL)["status"] == "succeeded"
    messages = api.messages(crashed)
    resumed = [m for m in messages if m.startswith("Resumed from step ")]
    assert len(resumed) == 1 and resumed[0].endswith("(attempt 2)"), messages
    assert saved <= int(resumed[0].split()[3]) <= at_kill
    assert any(m.startswith("Worker lost during step") for m in messages), messages
    assert api.row(crashed)["attempt"] == 2
    a, b = api.final_valid_loss(plain), api.final_valid_loss(crashed)
    print(f"final valid loss: uninterrupted {a!r}, killed and resumed {b!r}")
    # Exact on CPU: the resume restores weights, optimizer, schedule, RNG and data order.
    assert a == b
    assert_trained_as(api, crashed, plain)


def test_duplicate_delivery_runs_once(api: Api, service: Service) -> None:
    from shared.naming import TRAIN_TASK, TRAINING_QUEUE
    from worker.celery_app import make_celery

    job_id = api.create(epochs=2, repeat=30)
    api.wait(job_id, {"running"})
    service.start_worker("w3", **FAST)  # an idle second worker takes the duplicates at once
    sender = make_celery(service.env["REDIS_URL"])
    for _ in range(2):
        sender.send_task(TRAIN_TASK, args=[job_id], queue=TRAINING_QUEUE)
    assert api.wait(job_id, TERMINAL)["status"] == "succeeded"
    time.sleep(2)
    messages = api.messages(job_id)
    assert messages.count("Job started") == 1, messages
    assert not [m for m in messages if m.startswith(("Resumed", "Worker lost"))], messages
    assert api.row(job_id)["attempt"] == 1
    assert_every_step_logged(api, job_id)


def test_redis_down_at_submit_and_flushed_queue(api: Api, service: Service) -> None:
    ensure_workers(service, 2)
    service.stop("redis", signal.SIGKILL)
    started = time.monotonic()
    offline = api.create()
    assert time.monotonic() - started < 15, "a down broker must not hold the request"
    assert api.job(offline)["status"] == "queued"
    service.start_redis()
    assert api.wait(offline, TERMINAL)["status"] == "succeeded"  # the sweep re-sent it

    busy = [api.create(epochs=4) for _ in range(2)]  # both workers busy: the rest must queue
    for job_id in busy:
        api.wait(job_id, {"running"})
    queued = [api.create() for _ in range(2)]
    assert redis.Redis.from_url(service.env["REDIS_URL"]).llen("training") >= 1
    redis.Redis.from_url(service.env["REDIS_URL"]).flushall()
    for job_id in [*busy, *queued]:
        assert api.wait(job_id, TERMINAL, timeout=180)["status"] == "succeeded"
    for job_id in [offline, *busy, *queued]:
        assert api.messages(job_id).count("Job started") == 1
        assert api.row(job_id)["attempt"] == 1


def test_stalled_worker_is_fenced_out(api: Api, service: Service) -> None:
    ensure_workers(service, 2)
    job_id = api.create(epochs=3, every=10)
    api.wait(job_id, {"running"})
    wait_steps(api, job_id, 3)
    stalled = api.holder(job_id)
    celery_pid = api.holder_pid(job_id)
    log_path = service.logs / f"{stalled}.log"
    log_start = log_path.stat().st_size  # log files are appended to across runs

    def stalled_log() -> str:
        with log_path.open("rb") as log_file:
            log_file.seek(log_start)
            return log_file.read().decode(errors="replace")

    os.kill(celery_pid, signal.SIGSTOP)  # the training process itself stalls
    try:
        wait_until(lambda: api.row(job_id)["attempt"] == 2, 60, "another worker to take over")
        # The new attempt runs to the end while the stalled one is still frozen mid-step.
        assert api.wait(job_id, TERMINAL)["status"] == "succeeded"
        before = api.stored(job_id)
    finally:
        os.kill(celery_pid, signal.SIGCONT)
    wait_until(lambda: "lease lost" in stalled_log(), 30, "the stalled worker to notice")
    time.sleep(2)  # whatever it would still write, it would have written by now
    # Not one row of the job changed after the stalled attempt woke: its writes were refused.
    assert api.stored(job_id) == before
    messages = api.messages(job_id)
    assert messages.count("The job has successfully completed") == 1, messages
    assert api.row(job_id)["attempt"] == 2
    assert_every_step_logged(api, job_id)


def test_worker_dying_every_attempt_fails_without_looping(api: Api, service: Service) -> None:
    job_id = api.create(epochs=4)
    for attempt, spare in ((1, "w4"), (2, "w5")):
        wait_until(lambda n=attempt: api.row(job_id)["attempt"] == n, 90, f"attempt {attempt}")
        wait_steps(api, job_id, api.job(job_id)["steps_completed"])
        service.stop(api.holder(job_id), signal.SIGKILL)
        service.start_worker(spare, **FAST)
    job = api.wait(job_id, TERMINAL, timeout=60)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "worker_lost"
    assert job["error"]["message"].startswith("worker lost during step ")
    assert job["error"]["message"].endswith(", 2 times")
    time.sleep(6)  # longer than the sweep's re-send delay: nothing picks it up again
    assert api.job(job_id)["status"] == "failed" and api.row(job_id)["attempt"] == 2


def test_sigterm_requeues_with_attempt_refunded(api: Api, service: Service) -> None:
    job_id = api.create(epochs=4)
    api.wait(job_id, {"running"})
    wait_steps(api, job_id, 3)
    leaving = api.holder(job_id)
    service.stop(leaving, signal.SIGTERM)
    messages = api.messages(job_id)
    handed_back = [m for m in messages if m.startswith("Worker shutting down")]
    assert handed_back and handed_back[0].endswith("job requeued"), messages
    ensure_workers(service, 1)
    assert api.wait(job_id, TERMINAL)["status"] == "succeeded"
    messages = api.messages(job_id)
    assert any(m.startswith("Resumed from step ") and m.endswith("(attempt 1)") for m in messages)
    assert api.row(job_id)["attempt"] == 1
    assert_trained_as(api, job_id, api.reference(epochs=4))


def test_pause_resume_and_cancel_in_every_state(api: Api, service: Service) -> None:
    job_id = api.create(epochs=4)
    api.wait(job_id, {"running"})
    wait_steps(api, job_id, 3)
    assert api.action(job_id, "pause").status_code == 200
    api.wait(job_id, {"paused"}, timeout=60)
    paused_at = api.checkpoints(job_id)[-1]["step_number"]
    assert api.job(job_id)["steps_completed"] == paused_at
    assert api.action(job_id, "resume").json()["status"] == "queued"
    assert api.wait(job_id, TERMINAL)["status"] == "succeeded"
    assert f"Resumed from step {paused_at} (attempt 1)" in api.messages(job_id)
    assert_trained_as(api, job_id, api.reference(epochs=4))
    finished = api.action(job_id, "cancel")
    assert finished.status_code == 409
    assert set(finished.json()["error"]) == {"message", "type", "param", "code"}
    assert "succeeded" in finished.json()["error"]["message"]

    running = api.create(epochs=4)
    api.wait(running, {"running"})
    assert api.action(running, "cancel").status_code == 200
    assert api.wait(running, TERMINAL, timeout=60)["status"] == "cancelled"

    pausing = api.create(epochs=4)
    api.wait(pausing, {"running"})
    api.action(pausing, "pause")
    api.wait(pausing, {"paused"}, timeout=60)
    assert api.action(pausing, "cancel").json()["status"] == "cancelled"

    for name in [n for n in service.processes if n.startswith("w")]:
        service.stop(name)
    waiting = api.create()
    resumed = api.create()
    api.action(resumed, "pause")
    assert api.action(resumed, "resume").json()["status"] == "queued"
    for job_id in (waiting, resumed):
        for _ in range(2):  # a repeated cancel is a no-op, not an error
            response = api.action(job_id, "cancel")
            assert response.status_code == 200 and response.json()["status"] == "cancelled"
        assert "Job started" not in api.messages(job_id)
