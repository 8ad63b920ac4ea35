"""Where bytes live: a local folder by default, or any S3-compatible store (GPT2FT_STORAGE_URL).

Keys (DB rows keep them): files/<file-id>; jobs/<job-id>/checkpoints/step-NNNNNNNN/,
jobs/<job-id>/model/ and jobs/<job-id>/results/ are published sets (see manifest.py).
"""

from shared.settings import Settings, get_settings
from shared.storage.base import Storage, StorageError
from shared.storage.local import LocalStorage
from shared.storage.manifest import (
    Manifest,
    checkpoint_prefix,
    checkpoints_prefix,
    file_key,
    job_prefix,
    model_prefix,
    results_prefix,
    step_of,
    writer_token,
)

# A completion request names a stored set this way; workers fetch it (bases are paths or hub ids).
STORED_LOCATION = "gpt2ft-storage:"

__all__ = [
    "STORED_LOCATION",
    "LocalStorage",
    "Manifest",
    "Storage",
    "StorageError",
    "checkpoint_prefix",
    "checkpoints_prefix",
    "file_key",
    "get_storage",
    "job_prefix",
    "model_prefix",
    "open_storage",
    "results_prefix",
    "step_of",
    "writer_token",
]


def open_storage(settings: Settings) -> Storage:
    """The backend settings.storage_url names: s3://bucket/prefix, else a local folder."""
    url = settings.storage_url or ""
    if url.startswith("s3://"):
        from shared.storage.s3 import S3Storage

        return S3Storage.from_url(url, settings.resolved_scratch_dir, settings)
    return LocalStorage(
        settings.storage_dir, settings.resolved_scratch_dir, settings.cache_max_bytes
    )


_opened: tuple[Settings, Storage] | None = None


def get_storage() -> Storage:
    """The process's storage, built once per settings object (tests clear get_settings)."""
    global _opened
    settings = get_settings()
    if _opened is None or _opened[0] is not settings:
        _opened = (settings, open_storage(settings))
    return _opened[1]
