"""Models: base models plus the caller's fine-tuned models and checkpoints."""

import hashlib
import logging
import os
import re
import tarfile
import tempfile
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from api.auth import Owner
from api.errors import ApiError, not_found
from api.schemas import Deleted, ListPage, ModelOut
from api.stored import stored_response
from shared.catalog import BaseModelEntry, find_base_model, list_base_models, unavailable_reason
from shared.db.session import session_scope
from shared.db.tables import TERMINAL_STATUSES, Checkpoint, FineTunedModel, Job
from shared.ids import now_ts
from shared.settings import get_settings
from shared.storage import Manifest, Storage, checkpoints_prefix, get_storage

log = logging.getLogger(__name__)
router = APIRouter(prefix="/models", tags=["models"])


def base_model_out(model: BaseModelEntry) -> ModelOut:
    """A base model: owned by gpt2ft when local, by its hub organisation when catalog."""
    owned_by = "gpt2ft" if model.source == "local" else model.location.split("/")[0]
    reason = unavailable_reason(model, get_settings().resolved_models_dir)
    return ModelOut(
        id=model.name,
        created=model.created,
        owned_by=owned_by,
        available=reason is None,
        unavailable_reason=reason,
    )


def require_available(base: BaseModelEntry) -> None:
    """400 model_not_available, before anything is queued, for a base this host cannot load.

    The message is the one a job on that model fails with (shared.catalog): what to run.
    """
    reason = unavailable_reason(base, get_settings().resolved_models_dir)
    if reason is not None:
        raise ApiError(400, reason, param="model", code="model_not_available")


def find_fine_tuned(session: Session, owner: str, model_id: str) -> FineTunedModel | None:
    """The caller's live fine-tuned model called model_id, or None."""
    row = session.get(FineTunedModel, model_id)
    if row is None or row.owner != owner or row.deleted_at is not None:
        return None
    return row


def find_checkpoint(session: Session, owner: str, model_id: str) -> Checkpoint | None:
    """The caller's checkpoint whose model id is model_id, or None."""
    query = select(Checkpoint).where(
        Checkpoint.fine_tuned_model_checkpoint == model_id, Checkpoint.owner == owner
    )
    return session.scalars(query).first()


@router.get("", response_model=ListPage[ModelOut], operation_id="listModels", summary="List models")
def list_models(owner: Owner) -> ListPage[ModelOut]:
    """Base models, then the caller's fine-tuned models (newest first)."""
    data = [base_model_out(m) for m in list_base_models(get_settings().resolved_models_dir)]
    with session_scope() as session:
        rows = session.scalars(
            select(FineTunedModel)
            .where(FineTunedModel.owner == owner, FineTunedModel.deleted_at.is_(None))
            .order_by(FineTunedModel.created_at.desc(), FineTunedModel.id)
        )
        data += [ModelOut(id=r.id, created=r.created_at, owned_by=r.owner) for r in rows]
    return ListPage[ModelOut](data=data)


@router.get(
    "/{model_id:path}/content",
    operation_id="downloadModel",
    summary="Download a fine-tuned model as tar.gz",
    response_class=StreamingResponse,
)
def download_model(model_id: str, owner: Owner) -> StreamingResponse:
    """The caller's fine-tuned model (weights, config, tokenizer, adapter) as tar.gz."""
    with session_scope() as session:
        model = find_fine_tuned(session, owner, model_id)
        if model is None:
            raise not_found("model", model_id, param="model")
        prefix = model.path
    storage = get_storage()
    gone = ApiError(410, f"model '{model_id}' has no files any more", param="model", code="gone")
    manifest = storage.read_manifest(prefix)
    if manifest is None:
        raise gone
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id)
    key = archive_key(manifest)
    if storage.size(key) is None:
        # Built once per published model, then kept beside it for the next download.
        storage.put_file(key, pack_set(storage, manifest, name), move=True)
    return stored_response(key, f"{name}.tar.gz", "application/gzip", gone)


def archive_key(manifest: Manifest) -> str:
    """Where the tar.gz of a published set is kept (named after its manifest's content)."""
    digest = hashlib.sha256(manifest.to_json()).hexdigest()[:16]
    return f"{manifest.prefix}/archive-{digest}.tar.gz"


def pack_set(storage: Storage, manifest: Manifest, top: str) -> Path:
    """A temporary tar.gz of the set's files, under one top-level directory."""
    handle, name = tempfile.mkstemp(prefix=".model-", suffix=".tar.gz", dir=scratch(storage))
    os.close(handle)
    try:
        # Level 1: safetensors barely compress; speed matters more than a few percent.
        with tarfile.open(name, "w:gz", compresslevel=1) as tar:
            for entry in manifest.files:
                info = tarfile.TarInfo(f"{top}/{entry.path}")
                info.size, info.mode = entry.bytes, 0o644
                with storage.open_reader(manifest.key_of(entry)) as reader:
                    tar.addfile(info, reader)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def scratch(storage: Storage) -> Path:
    """This host's folder for archives being built."""
    folder = storage.scratch / "archives"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@router.get(
    "/{model_id:path}",
    response_model=ModelOut,
    operation_id="readModel",
    summary="Retrieve a model",
)
def read_model(model_id: str, owner: Owner) -> ModelOut:
    """A base model, one of the caller's fine-tuned models, or one of their checkpoints."""
    base = find_base_model(model_id, get_settings().resolved_models_dir)
    if base is not None:
        return base_model_out(base)
    with session_scope() as session:
        model = find_fine_tuned(session, owner, model_id)
        if model is not None:
            return ModelOut(id=model.id, created=model.created_at, owned_by=model.owner)
        checkpoint = find_checkpoint(session, owner, model_id)
        if checkpoint is not None:
            return ModelOut(id=model_id, created=checkpoint.created_at, owned_by=checkpoint.owner)
    raise not_found("model", model_id, param="model")


def delete_checkpoint(session: Session, checkpoint: Checkpoint) -> str:
    """Delete the row of a checkpoint its job no longer needs; returns its set's prefix.

    Allowed once the job has ended without a live fine-tuned model (failed, cancelled, or its
    model deleted): otherwise the checkpoint is what the job resumes from (409), or it goes
    with the fine-tuned model (403).
    """
    job = session.get(Job, checkpoint.job_id)
    if job is not None and job.status not in TERMINAL_STATUSES:
        raise ApiError(
            409,
            f"job {checkpoint.job_id} has not finished and may resume from this checkpoint; "
            "cancel the job first",
            param="model",
            code="invalid_state",
        )
    live = session.scalar(
        select(func.count()).where(
            FineTunedModel.job_id == checkpoint.job_id, FineTunedModel.deleted_at.is_(None)
        )
    )
    if live:
        raise ApiError(
            403,
            "checkpoints are kept with their job; delete the fine-tuned model instead",
            param="model",
            code="forbidden",
        )
    path = checkpoint.path
    session.delete(checkpoint)
    return path


@router.delete(
    "/{model_id:path}",
    response_model=Deleted,
    operation_id="deleteModel",
    summary="Delete a fine-tuned model",
)
def delete_model(model_id: str, owner: Owner) -> Deleted:
    """Delete a fine-tuned model with its checkpoints, or a checkpoint of a job without one."""
    if find_base_model(model_id, get_settings().resolved_models_dir) is not None:
        raise ApiError(
            403, f"base model '{model_id}' cannot be deleted", param="model", code="forbidden"
        )
    with session_scope() as session:
        model = find_fine_tuned(session, owner, model_id)
        if model is None:
            checkpoint = find_checkpoint(session, owner, model_id)
            if checkpoint is None:
                raise not_found("model", model_id, param="model")
            sets, parents = [delete_checkpoint(session, checkpoint)], []
        else:
            model.deleted_at = now_ts()
            # Its checkpoints go with it: no longer servable, listed or counted in the quota.
            session.execute(delete(Checkpoint).where(Checkpoint.job_id == model.job_id))
            sets, parents = [model.path], [checkpoints_prefix(model.job_id)]
    storage = get_storage()
    for prefix in sets:
        storage.delete_set(prefix)
    for parent in parents:
        storage.delete_prefix(parent)
    return Deleted(id=model_id, object="model")
    with session_scope() as session:
        model = session.get(FineTunedModel, model.id)
        assert model is not None
        model.deleted_at = now_ts()
        # Its checkpoints go with it: no longer servable, listed or counted in the quota.
        session.execute(delete(Checkpoint).where(Checkpoint.job_id == model.job_id))
        prefix, job_id = model.path, model.job_id
    storage = get_storage()
    storage.delete_set(prefix)
    storage.delete_prefix(checkpoints_prefix(job_id))
    return Deleted(id=model_id, object="model")
