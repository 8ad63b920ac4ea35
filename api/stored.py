"""Responses that stream an object out of storage (local folder or S3 alike)."""

from urllib.parse import quote

from fastapi.responses import StreamingResponse

from api.errors import ApiError
from shared.storage import get_storage


def attachment(filename: str) -> str:
    """A Content-Disposition header value for filename (RFC 6266 form when it needs quoting)."""
    quoted = quote(filename)
    if quoted != filename:
        return f"attachment; filename*=utf-8''{quoted}"
    return f'attachment; filename="{filename}"'


def stored_response(
    key: str, filename: str, media_type: str, missing: ApiError
) -> StreamingResponse:
    """The object at key as a download; missing is raised when the store has no such object."""
    storage = get_storage()
    size = storage.size(key)
    if size is None:
        raise missing
    return StreamingResponse(
        storage.iter_bytes(key),
        media_type=media_type,
        headers={"content-length": str(size), "content-disposition": attachment(filename)},
    )
