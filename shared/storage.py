"""Where bytes live on disk; paths kept in the DB are relative to the storage root."""

from pathlib import Path

from shared.settings import get_settings


class Storage:
    """Local-directory storage; the same methods would front S3."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def file_path(self, file_id: str) -> Path:
        """Bytes of an uploaded file, named by its generated id."""
        return self.root / "files" / file_id

    def job_dir(self, job_id: str) -> Path:
        """Everything one job writes."""
        return self.root / "jobs" / job_id

    def checkpoints_dir(self, job_id: str) -> Path:
        """Parent of a job's checkpoint folders."""
        return self.job_dir(job_id) / "checkpoints"

    def checkpoint_dir(self, job_id: str, step: int) -> Path:
        """One complete checkpoint (model files plus resume state)."""
        return self.checkpoints_dir(job_id) / f"step-{step:08d}"

    def model_dir(self, job_id: str) -> Path:
        """The final fine-tuned model of a job."""
        return self.job_dir(job_id) / "model"

    def tmp_dir(self) -> Path:
        """Scratch space on the same filesystem, so renames out of it are atomic."""
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def relative(self, path: Path) -> str:
        """path as stored in the DB."""
        return str(path.resolve().relative_to(self.root.resolve()))

    def absolute(self, stored: str) -> Path:
        """A DB-stored path back to a filesystem path."""
        return self.root / stored


def get_storage() -> Storage:
    """Storage at the configured root."""
    return Storage(get_settings().storage_dir)
