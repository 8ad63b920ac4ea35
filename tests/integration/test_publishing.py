"""The publishing fence with real interleavings: a worker that lost its lease publishes nothing.

Each test runs on SQLite and Postgres, against a local folder and a real S3 server.
"""

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from shared.db.session import session_scope
from shared.db.tables import Checkpoint, File, FineTunedModel, JobStatus
from shared.jobs import Lease, LeaseLost
from shared.settings import get_settings
from shared.storage import (
    Storage,
    checkpoint_prefix,
    checkpoints_prefix,
    get_storage,
    job_prefix,
    model_prefix,
    results_prefix,
)
from tests.integration.test_jobs_lease import claim, make_job, read_job
from worker.heartbeat import Heartbeat
from worker.outcomes import Outcome, TrainedRun, handle_success
from worker.publishing import publish, stage, stage_results
from worker.reporting import DbReporter
from worker.run_job import JobSnapshot
from worker.training.engine import TrainResult


@pytest.fixture(params=["local", "s3"])
def storage(
    request: pytest.FixtureRequest, gpt2ft_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Storage:
    """The process's storage: the home's folder, or a fresh prefix on the test S3 server."""
    if request.param == "s3":
        server = request.getfixturevalue("s3_env")
        monkeypatch.setenv("GPT2FT_STORAGE_URL", server.url("fence"))
        get_settings.cache_clear()
    return get_storage()


def checkpoint_folder(root: Path, name: str, weights: bytes) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def lapsing_lease() -> Lease:
    """w1's claim on a new job, lapsing in 50 ms: still held until another worker claims it."""
    lease = claim(make_job(JobStatus.queued), "w1", lease_seconds=0.05)
    assert lease is not None
    return lease


def reporter_for(lease: Lease, storage: Storage) -> DbReporter:
    heartbeat = Heartbeat(lease, lease_seconds=60, interval=60)  # never started: no renewals
    return DbReporter(lease, heartbeat, storage, f"ft:gpt2-tiny:alice::{lease.job_id}", 10, 60)


def checkpoint_rows(job_id: str) -> int:
    with session_scope() as session:
        query = select(func.count()).where(Checkpoint.job_id == job_id)
        return int(session.execute(query).scalar_one())


def take_over_while_locked(
    job_id: str, locked: threading.Event, uploaded: threading.Event, done: threading.Event
) -> None:
    """Lock the jobs table; once the upload is in, claim the job for w2 (claim_job's UPDATE)."""
    url = get_settings().resolved_database_url
    expires = time.time() + 60
    takeover = (
        f"UPDATE jobs SET lease_owner = 'w2', attempt = attempt + 1, lease_expires_at = {expires}"
        f" WHERE id = '{job_id}' AND lease_owner = 'w1'"
    )
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        assert uploaded.wait(60)
        time.sleep(0.5)  # the worker is now waiting on the lock to write its manifest
        conn.execute(takeover)
        conn.execute("COMMIT")
    else:
        import psycopg

        conn = psycopg.connect(url.replace("+psycopg", ""))
        conn.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        locked.set()
        assert uploaded.wait(60)
        time.sleep(0.5)
        conn.execute(takeover)
        conn.commit()
    conn.close()
    done.set()


def test_lease_lost_between_upload_and_manifest_publishes_nothing(
    storage: Storage, tmp_path: Path
) -> None:
    job_id = make_job(JobStatus.queued)
    lease = claim(job_id, "w1")
    assert lease is not None
    folder = checkpoint_folder(tmp_path, "step-00000005", b"w1" * 50_000)
    prefix = checkpoint_prefix(job_id, 5)
    locked, uploaded, done = threading.Event(), threading.Event(), threading.Event()
    watcher = threading.Thread(target=take_over_while_locked, args=(job_id, locked, uploaded, done))
    watcher.start()
    assert locked.wait(30)

    def upload_seen() -> None:
        while not done.is_set():
            if len(storage.list_keys(prefix)) >= 2:
                uploaded.set()
                return
            time.sleep(0.01)

    threading.Thread(target=upload_seen, daemon=True).start()
    with pytest.raises(LeaseLost):
        reporter_for(lease, storage).on_checkpoint(5, folder, {"train_loss": 1.0})
    watcher.join()
    assert uploaded.is_set(), "the takeover did not wait for the upload"
    assert (read_job(job_id).lease_owner, read_job(job_id).attempt) == ("w2", 2)
    # Nothing visible: no manifest, no checkpoint row, and the uploaded files are gone.
    assert storage.read_manifest(prefix) is None
    assert storage.published_sets(checkpoints_prefix(job_id)) == []
    assert storage.list_keys(job_prefix(job_id)) == []
    assert checkpoint_rows(job_id) == 0

    # The new owner publishes the same step normally.
    new = Lease(job_id, "w2", 2)
    mine = checkpoint_folder(tmp_path / "w2", "step-00000005", b"w2" * 50_000)
    reporter_for(new, storage).on_checkpoint(5, mine, {"train_loss": 1.0})
    manifest = storage.read_manifest(prefix)
    assert manifest is not None and manifest.writer == {"owner": "w2", "attempt": 2}
    assert checkpoint_rows(job_id) == 1


def test_a_zombies_uploads_never_change_a_published_set(storage: Storage, tmp_path: Path) -> None:
    old = lapsing_lease()
    job_id = old.job_id
    prefix = checkpoint_prefix(job_id, 5)
    zombie = stage(storage, old, prefix, checkpoint_folder(tmp_path, "z", b"old" * 1000), {})
    time.sleep(0.1)
    new = claim(job_id, "w2")
    assert new is not None
    reporter_for(new, storage).on_checkpoint(
        5, checkpoint_folder(tmp_path, "n", b"new" * 1000), {"train_loss": 1.0}
    )
    # The zombie keeps uploading after the new owner published, then tries to publish.
    late = stage(storage, old, prefix, checkpoint_folder(tmp_path, "z2", b"late" * 10), {})
    assert late == storage.read_manifest(prefix)  # published already: the zombie stages nothing
    with session_scope() as session, pytest.raises(LeaseLost):
        publish(session, old, storage, zombie)
    visible = storage.read_manifest(prefix)
    assert visible is not None and visible.writer["owner"] == "w2"
    restored = storage.materialize(visible, tmp_path / "restored")
    assert (restored / "model.safetensors").read_bytes() == b"new" * 1000


def test_outputs_published_by_a_dead_attempt_are_the_ones_reported(
    storage: Storage, tmp_path: Path
) -> None:
    first = lapsing_lease()
    job_id = first.job_id
    model = stage(storage, first, model_prefix(job_id), checkpoint_folder(tmp_path, "m1", b"1"), {})
    csv = tmp_path / "results.csv"
    csv.write_text("step,train_loss\n1,2.0\n")
    results = stage_results(storage, first, csv, f"{job_id}_results.csv", records=1)
    # Attempt 1 writes both manifests, then dies before its transaction commits.
    with pytest.raises(RuntimeError), session_scope() as session:
        publish(session, first, storage, model)
        publish(session, first, storage, results)
        raise RuntimeError("killed before commit")
    time.sleep(0.1)
    second = claim(job_id, "w2")
    assert second is not None
    work = tmp_path / "work"
    final = checkpoint_folder(work, "model", b"2")
    job = JobSnapshot(job_id, "alice", "gpt2-tiny", "file-x", None, None, 1, {})
    result = TrainResult(None, 10, 1000, {"train_loss": 1.0}, final)
    reporter = reporter_for(second, storage)
    run = TrainedRun(second, job, result, reporter, f"ft:m:{job_id}", storage, work)
    assert handle_success(run) is Outcome.succeeded

    assert read_job(job_id).status == JobStatus.succeeded
    assert storage.read_manifest(model_prefix(job_id)) == model
    assert storage.read_manifest(results_prefix(job_id)) == results
    with session_scope() as session:
        files = session.scalars(select(File).where(File.filename == f"{job_id}_results.csv"))
        assert [f.id for f in files] == [results.info["file_id"]]
        models = session.scalars(select(FineTunedModel).where(FineTunedModel.job_id == job_id))
        assert [m.path for m in models] == [model_prefix(job_id)]
    # Attempt 2's own uploads were removed: only attempt 1's published files remain.
    named = {model.key, *(model.key_of(entry) for entry in model.files), results.key}
    assert set(storage.list_keys(job_prefix(job_id))) == named
    assert storage.list_keys("files") == [results.key_of(results.files[0])]


def test_a_claim_waits_while_a_manifest_is_being_published(
    storage: Storage, tmp_path: Path
) -> None:
    lease = lapsing_lease()
    job_id = lease.job_id
    staged = stage(storage, lease, model_prefix(job_id), checkpoint_folder(tmp_path, "m", b"m"), {})
    time.sleep(0.1)  # the lease has lapsed; nobody has taken the job yet
    published, moments = threading.Event(), {}

    def publisher() -> None:
        with session_scope() as session:
            publish(session, lease, storage, staged)
            published.set()
            time.sleep(1.0)  # still in the transaction that holds the job row
        moments["committed"] = time.monotonic()

    thread = threading.Thread(target=publisher)
    thread.start()
    assert published.wait(30)
    taken = claim(job_id, "w2")
    moments["claimed"] = time.monotonic()
    thread.join()
    # The claim went through only after the publishing transaction ended.
    assert taken is not None and taken.attempt == 2
    assert moments["claimed"] >= moments["committed"]
    assert storage.read_manifest(model_prefix(job_id)) == staged
