"""The workers table: a worker registers its device, beats, and /readyz lists the live ones."""

import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import delete, update

from shared.db.session import session_scope
from shared.db.tables import Worker
from shared.settings import get_settings
from worker.fleet import WorkerBeat, device_report

REPORT = {**device_report(torch.device("cpu")), "queues": ["training"]}


def test_a_worker_registers_beats_and_ages_out_of_readyz(
    api: TestClient, monkeypatch: pytest.MonkeyPatch, gpt2ft_home: Path
) -> None:
    beat = WorkerBeat("host:1:abc", REPORT, interval=0.2).start()
    try:
        ready = api.get("/readyz").json()
        assert [w["id"] for w in ready["workers"]] == ["host:1:abc"]
        listed = ready["workers"][0]
        assert (listed["device"], listed["device_kind"], listed["queues"]) == (
            "cpu", "cpu", ["training"],
        )  # fmt: skip
        assert listed["torch_version"] and listed["device_count"] == 0
        # A row lost (a wiped table) comes back on the next beat.
        with session_scope() as session:
            session.execute(delete(Worker))
        deadline = time.monotonic() + 10
        while not api.get("/readyz").json()["workers"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [w["id"] for w in api.get("/readyz").json()["workers"]] == ["host:1:abc"]
    finally:
        beat.stop()
    # Not seen for longer than a lease: gone from the live list, still ready.
    with session_scope() as session:
        session.execute(update(Worker).values(last_seen_at=time.time() - 3600))
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers"] == []
    assert get_settings().lease_seconds < 3600
