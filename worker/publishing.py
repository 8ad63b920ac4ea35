"""Publishing a job's output: upload first, then the manifest, under the job's lease.

The fence: a manifest is written only inside a transaction that began with the job's
fenced UPDATE (shared.jobs.fenced_update). That UPDATE fails once another worker owns
the job, and while it holds the row lock no claim can take the job: a worker that lost
its lease publishes nothing, and a set is visible only once its manifest is.
"""

import logging
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from shared.ids import new_sortable_id
from shared.jobs import Lease, fenced_update
from shared.storage import (
    Manifest,
    Storage,
    StorageError,
    checkpoints_prefix,
    file_key,
    results_prefix,
    step_of,
    writer_token,
)
from shared.storage.manifest import Entry
from shared.storage.manifest import sha256_file as sha256_of

log = logging.getLogger(__name__)


def writer(lease: Lease) -> dict[str, Any]:
    """Who staged a set (kept in its manifest, for people reading the store)."""
    return {"owner": lease.owner, "attempt": lease.attempt}


def stage(
    storage: Storage, lease: Lease, prefix: str, folder: Path, info: dict[str, Any]
) -> Manifest:
    """Upload folder as the set prefix (nothing visible yet); an already published set is kept."""
    published = storage.read_manifest(prefix)
    if published is not None:
        return published  # the same checkpoint twice, or an earlier attempt's final model
    return storage.stage_set(prefix, folder, writer_token(lease.attempt), writer(lease), info)


def stage_results(
    storage: Storage, lease: Lease, csv: Path, filename: str, records: int
) -> Manifest:
    """Upload the results CSV as a new file; its manifest names the file id the job reports."""
    file_id = new_sortable_id("file")
    size = csv.stat().st_size
    storage.put_file(file_key(file_id), csv)
    info = {"file_id": file_id, "filename": filename, "records": records}
    entry = Entry(file_id, size, sha256_of(csv))
    return Manifest(results_prefix(lease.job_id), "files", (entry,), writer(lease), info)


def publish(session: Session, lease: Lease, storage: Storage, staged: Manifest) -> Manifest:
    """Write staged's manifest while lease holds the job; returns the visible one (first wins).

    The job row stays locked until the caller's transaction ends, so no claim slips in
    between the check and the write. LeaseLost: nothing was published.
    """
    fenced_update(session, lease)
    return storage.commit_manifest(staged)


def discard_unless_visible(storage: Storage, staged: Manifest) -> None:
    """Remove staged's files unless its manifest is the one readers see."""
    visible = storage.read_manifest(staged.prefix)
    if visible is None or visible.to_json() != staged.to_json():
        try:
            storage.discard(staged)
        except Exception as exc:  # leftovers are swept when the job is next claimed
            log.warning("could not remove unpublished %s: %s", staged.root, exc)


def job_scratch(storage: Storage, lease: Lease) -> Path:
    """An empty local folder for this attempt; earlier attempts' folders on this host go."""
    parent = storage.scratch / "jobs"
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.glob(f"{lease.job_id}-a*"):
        shutil.rmtree(old, ignore_errors=True)
    folder = parent / f"{lease.job_id}-a{lease.attempt}"
    folder.mkdir()
    return folder


def restore_checkpoints(
    storage: Storage, job_id: str, dest: Path
) -> tuple[Path | None, Path | None]:
    """The newest published checkpoint and the best one, fetched into dest: (latest, best)."""
    sets = sorted(storage.published_sets(checkpoints_prefix(job_id)), key=step_of)
    if not sets:
        return None, None
    manifests = {prefix: storage.read_manifest(prefix) for prefix in sets}
    # The newest checkpoint marked best is the best so far: keep=best copies it at the end.
    marked = [p for p in sets if (m := manifests[p]) is not None and m.info.get("is_best")]
    fetched = {
        prefix: fetch_checkpoint(storage, manifests[prefix], dest)
        for prefix in dict.fromkeys([sets[-1], *marked[-1:]])
    }
    return fetched[sets[-1]], fetched[marked[-1]] if marked else None


def fetch_checkpoint(storage: Storage, manifest: Manifest | None, dest: Path) -> Path:
    """A published checkpoint as the local folder the engine resumes from."""
    if manifest is None:
        raise StorageError("a checkpoint was deleted while the job resumed from it")
    return storage.materialize(manifest, dest / manifest.prefix.rsplit("/", 1)[1])
