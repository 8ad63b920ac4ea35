"""Files: upload (streamed, validated), list, read, download, delete."""

import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from api.auth import Owner
from api.deps import find_file, owned_file
from api.errors import ApiError
from api.limits import check_stored_bytes
from api.locks import lock_files
from api.pagination import cursor_row, newest_first
from api.schemas import Deleted, FileOut, ListPage
from api.stored import stored_response
from api.uploads import Upload, receive_upload, safe_filename
from shared.datasets import DatasetError, detect_format, public_format, validate_dataset
from shared.db.session import session_scope
from shared.db.tables import TERMINAL_STATUSES, File, Job
from shared.ids import new_sortable_id, now_ts
from shared.naming import FINE_TUNE_PURPOSE
from shared.settings import get_settings
from shared.storage import file_key, get_storage

log = logging.getLogger(__name__)
router = APIRouter(prefix="/files", tags=["files"])
PURPOSES = (FINE_TUNE_PURPOSE,)

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(PURPOSES)},
                    },
                }
            }
        },
    }
}


def file_out(row: File) -> FileOut:
    """The OpenAI file object for a row."""
    return FileOut(
        id=row.id,
        bytes=row.bytes,
        created_at=row.created_at,
        filename=row.filename,
        purpose=row.purpose,
        format=public_format(row.format),
        records=row.records,
    )


def _store_upload(owner: str, upload: Upload) -> FileOut:
    """Validate the spooled upload, move it under its generated id, insert the row."""
    purpose = upload.fields.get("purpose", "")
    if purpose not in PURPOSES:
        raise ApiError(400, f"purpose must be 'fine-tune' (got {purpose!r})", param="purpose")
    if upload.filename is None or upload.file_field != "file":
        raise ApiError(400, "missing multipart field 'file'", param="file")
    filename = safe_filename(upload.filename)
    if not filename:
        raise ApiError(400, "the file needs a name such as train.jsonl", param="file")
    try:
        fmt = detect_format(filename)
        info = validate_dataset(upload.path, fmt)
    except DatasetError as exc:
        raise ApiError(400, f"{filename}: {exc}", param="file", code="invalid_file") from None
    storage = get_storage()
    file_id = new_sortable_id("file")
    key = file_key(file_id)
    storage.put_file(key, upload.path, move=True)
    try:
        with session_scope() as session:
            check_stored_bytes(session, owner, upload.size)
            row = File(
                id=file_id,
                owner=owner,
                filename=filename,
                purpose=purpose,
                bytes=upload.size,
                format=info.format,
                records=info.records,
                created_at=now_ts(),
            )
            session.add(row)
    except BaseException:
        storage.delete(key)
        raise
    return file_out(row)


def upload_dir() -> Path:
    """This host's folder for uploads being received (validated there, then stored)."""
    folder = get_storage().scratch / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _check_quota(owner: str) -> None:
    with session_scope() as session:
        check_stored_bytes(session, owner, 1)


@router.post(
    "",
    response_model=FileOut,
    operation_id="createFile",
    summary="Upload a training or validation file",
    openapi_extra=UPLOAD_BODY,
)
async def create_file(request: Request, owner: Owner) -> FileOut:
    """Stream the upload to scratch space, validate it, then keep it under a generated id."""
    settings = get_settings()
    tmp_dir = await run_in_threadpool(upload_dir)
    await run_in_threadpool(_check_quota, owner)  # already full: refuse before streaming
    upload = await receive_upload(request, tmp_dir, settings.max_upload_bytes)
    try:
        return await run_in_threadpool(_store_upload, owner, upload)
    finally:
        upload.path.unlink(missing_ok=True)


@router.get("", response_model=ListPage[FileOut], operation_id="listFiles", summary="List files")
def list_files(
    owner: Owner,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    purpose: str | None = None,
) -> ListPage[FileOut]:
    """The caller's files, newest first."""
    with session_scope() as session:
        after_row = cursor_row(lambda i: find_file(session, owner, i), after)
        query = select(File).where(File.owner == owner, File.deleted_at.is_(None))
        if purpose is not None:
            query = query.where(File.purpose == purpose)
        rows, has_more = newest_first(session, query, after_row, [File.created_at, File.id], limit)
        return ListPage[FileOut](data=[file_out(r) for r in rows], has_more=has_more)


@router.get(
    "/{file_id}", response_model=FileOut, operation_id="readFile", summary="Retrieve a file"
)
def read_file(file_id: str, owner: Owner) -> FileOut:
    """One of the caller's files."""
    with session_scope() as session:
        row = owned_file(session, owner, file_id)
        return file_out(row)


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    operation_id="downloadFile",
    summary="Download a file's bytes",
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_file(file_id: str, owner: Owner) -> StreamingResponse:
    """The stored bytes, exactly as uploaded."""
    with session_scope() as session:
        row = owned_file(session, owner, file_id)
    missing = ApiError(404, f"the bytes of {file_id} are missing from storage", type="server_error")
    return stored_response(file_key(file_id), row.filename, "application/octet-stream", missing)


@router.delete(
    "/{file_id}", response_model=Deleted, operation_id="deleteFile", summary="Delete a file"
)
def delete_file(file_id: str, owner: Owner) -> Deleted:
    """Forget the file and remove its bytes; refused while an unfinished job uses it."""
    with session_scope() as session:
        lock_files(session, [file_id])  # a job create naming it finishes first, or waits
        row = owned_file(session, owner, file_id)
        user = session.scalars(
            select(Job.id).where(
                (Job.training_file == file_id) | (Job.validation_file == file_id),
                Job.status.not_in([s.value for s in TERMINAL_STATUSES]),
            )
        ).first()
        if user is not None:
            raise ApiError(
                409, f"{file_id} is used by {user}, which has not finished; cancel it first"
            )
        row.deleted_at = now_ts()
    get_storage().delete(file_key(file_id))
    return Deleted(id=file_id, object="file")
