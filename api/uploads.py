"""Streaming multipart reception: the size limit holds while bytes arrive, not after."""

import os
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from api.errors import ApiError

# Form fields besides the file (purpose) are tiny; anything bigger is not a form we know.
MAX_FIELD_BYTES = 64 * 1024


# The filename column holds 255 characters; a longer name keeps its end (the extension).
MAX_FILENAME_CHARS = 255


def safe_filename(sent: str) -> str:
    """The base name of a client's file name, without control or direction characters.

    Both / and \\ separate folders (browsers on Windows send C:\\...\\name); Unicode
    categories Cc and Cf cover NUL, newlines and the right-to-left override that disguises
    an extension. May be empty: the caller refuses that.
    """
    base = sent.replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(c for c in base if unicodedata.category(c) not in ("Cc", "Cf", "Cs"))
    kept = kept.strip().lstrip(".")
    return kept[-MAX_FILENAME_CHARS:]


class UploadTooLarge(Exception):
    """The file part grew past the configured limit."""


@dataclass
class Upload:
    """A received multipart form: its text fields and the one file, spooled to disk."""

    path: Path
    fields: dict[str, str] = field(default_factory=dict)
    file_field: str | None = None
    filename: str | None = None
    size: int = 0


class _Receiver:
    """python-multipart callbacks that collect fields and queue file bytes for writing."""

    def __init__(self, upload: Upload, max_bytes: int) -> None:
        self.upload = upload
        self.max_bytes = max_bytes
        self.pending: list[bytes] = []
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._is_file = False
        self._data = bytearray()

    def on_part_begin(self) -> None:
        self._disposition, self._name, self._is_file = b"", "", False
        self._data = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            if self.upload.filename is not None:
                raise ApiError(400, "send exactly one file per upload", param="file")
            self._is_file = True
            self.upload.file_field = self._name
            self.upload.filename = options[b"filename"].decode("utf-8", "replace")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._is_file:
            self.upload.size += len(chunk)
            if self.upload.size > self.max_bytes:
                raise UploadTooLarge()
            self.pending.append(bytes(chunk))
            return
        self._data += chunk
        if len(self._data) > MAX_FIELD_BYTES:
            raise ApiError(400, f"form field '{self._name}' is too large", param=self._name)

    def on_part_end(self) -> None:
        if not self._is_file:
            self.upload.fields[self._name] = self._data.decode("utf-8", "replace")


def too_large(max_bytes: int) -> ApiError:
    """413 naming the limit."""
    return ApiError(
        413,
        f"file is larger than the upload limit of {max_bytes} bytes (GPT2FT_MAX_UPLOAD_BYTES)",
        param="file",
        code="file_too_large",
    )


def _boundary(request: Request) -> bytes:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(400, "send the file as multipart/form-data (fields: file, purpose)")
    return params[b"boundary"]


async def receive_upload(request: Request, tmp_dir: Path, max_bytes: int) -> Upload:
    """Stream the request body into a temp file under tmp_dir; 413 past max_bytes."""
    boundary = _boundary(request)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + MAX_FIELD_BYTES:
        raise too_large(max_bytes)
    handle, name = tempfile.mkstemp(prefix="upload-", dir=tmp_dir)
    upload = Upload(path=Path(name))
    receiver = _Receiver(upload, max_bytes)
    callbacks = {k: getattr(receiver, k) for k in dir(receiver) if k.startswith("on_")}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        with os.fdopen(handle, "wb") as sink:
            async for chunk in request.stream():
                parser.write(chunk)
                if receiver.pending:
                    data = b"".join(receiver.pending)
                    receiver.pending.clear()
                    await anyio.to_thread.run_sync(sink.write, data)
            parser.finalize()
    except UploadTooLarge:
        upload.path.unlink(missing_ok=True)
        raise too_large(max_bytes) from None
    except FormParserError as exc:
        upload.path.unlink(missing_ok=True)
        raise ApiError(400, f"invalid multipart body: {exc}", param="file") from None
    except BaseException:
        upload.path.unlink(missing_ok=True)
        raise
    return upload
