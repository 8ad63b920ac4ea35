"""Models: base models plus the caller's fine-tuned models and checkpoints."""

import logging
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from api.auth import Owner
from api.errors import ApiError, not_found
from api.schemas import Deleted, ListPage, ModelOut
from shared.catalog import BaseModelEntry, find_base_model, list_base_models
from shared.db.session import session_scope
from shared.db.tables import Checkpoint, FineTunedModel
from shared.ids import now_ts
from shared.settings import get_settings
from shared.storage import get_storage

log = logging.getLogger(__name__)
router = APIRouter(prefix="/models", tags=["models"])


def base_model_out(model: BaseModelEntry) -> ModelOut:
    """A base model: owned by gpt2ft when local, by its hub organisation when catalog."""
    owned_by = "gpt2ft" if model.source == "local" else model.location.split("/")[0]
    return ModelOut(id=model.name, created=model.created, owned_by=owned_by)


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
    response_class=FileResponse,
)
def download_model(model_id: str, owner: Owner) -> FileResponse:
    """The caller's fine-tuned model folder (weights, config, tokenizer, adapter) as tar.gz."""
    with session_scope() as session:
        model = find_fine_tuned(session, owner, model_id)
        if model is None:
            raise not_found("model", model_id, param="model")
        folder = get_storage().absolute(model.path)
    if not folder.is_dir():
        raise ApiError(
            410, f"model '{model_id}' has no files on disk any more", param="model", code="gone"
        )
    archive = pack_folder(folder, model_id)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id)
    return FileResponse(
        archive,
        media_type="application/gzip",
        filename=f"{name}.tar.gz",
        background=BackgroundTask(archive.unlink, missing_ok=True),
    )


def pack_folder(folder: Path, model_id: str) -> Path:
    """A temporary tar.gz of folder, files under one top-level directory."""
    top = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id)
    handle, name = tempfile.mkstemp(prefix="gpt2ft-model-", suffix=".tar.gz")
    os.close(handle)
    try:
        # Level 1: safetensors barely compress; speed matters more than a few percent.
        with tarfile.open(name, "w:gz", compresslevel=1) as tar:
            for path in sorted(folder.rglob("*")):
                if path.is_file() and not path.name.startswith("."):
                    tar.add(path, arcname=f"{top}/{path.relative_to(folder)}")
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


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


@router.delete(
    "/{model_id:path}",
    response_model=Deleted,
    operation_id="deleteModel",
    summary="Delete a fine-tuned model",
)
def delete_model(model_id: str, owner: Owner) -> Deleted:
    """Delete one of the caller's fine-tuned models and its files; base models are refused."""
    if find_base_model(model_id, get_settings().resolved_models_dir) is not None:
        raise ApiError(
            403, f"base model '{model_id}' cannot be deleted", param="model", code="forbidden"
        )
    with session_scope() as session:
        model = find_fine_tuned(session, owner, model_id)
        if model is None:
            if find_checkpoint(session, owner, model_id) is not None:
                raise ApiError(
                    403,
                    "checkpoints are kept with their job; delete the fine-tuned model instead",
                    param="model",
                    code="forbidden",
                )
            raise not_found("model", model_id, param="model")
        model.deleted_at = now_ts()
        folder = get_storage().absolute(model.path)
    shutil.rmtree(folder, ignore_errors=True)
    return Deleted(id=model_id, object="model")
