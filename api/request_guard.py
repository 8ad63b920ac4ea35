"""The API key is checked, and a JSON body capped, before the app reads a byte of the body."""

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import authenticate, bearer_token
from api.errors import ApiError, error_response
from shared.settings import get_settings

# Uploads stream to disk under their own limit (max_upload_bytes, api/uploads.py).
STREAMED_ROUTES = {("POST", "/v1/files")}
# A JSON \u0000 escape (not an escaped backslash followed by "u0000").
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def request_too_large(limit: int) -> ApiError:
    """413 naming the cap and the setting that raises it."""
    return ApiError(
        413,
        f"request body is larger than {limit} bytes (GPT2FT_MAX_REQUEST_BYTES); "
        "upload data with POST /v1/files instead",
        code="request_too_large",
    )


def check_no_nul(scope: Scope, body: bytes) -> None:
    """400 for a NUL character in the path, the query or a JSON body.

    No id, name or text here has a use for one, and Postgres cannot store it in text.
    """
    query = scope.get("query_string", b"")
    if "\x00" in scope["path"] or b"%00" in query or b"\x00" in query:
        where = "URL"
    elif b"\x00" in body or _JSON_NUL.search(body):
        where = "request body"
    else:
        return
    raise ApiError(
        400, f"the {where} contains a NUL character (\\u0000); remove it", code="nul_character"
    )


async def read_capped_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, read before the app runs: at most limit bytes, else 413."""
    declared = _header(scope, b"content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise request_too_large(limit)  # refused before any of it arrives
    if declared in (None, "0") and _header(scope, b"transfer-encoding") is None:
        return b""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away: the app sees the disconnect
        size += len(message.get("body", b""))
        if size > limit:
            raise request_too_large(limit)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the client's next messages."""
    replay: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return replay.pop() if replay else await receive()

    return replayed


class RequestGuard:
    """Authenticates /v1 requests from their headers, then caps bodies; refuses early."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """401 or 413 without reading the body, 400 for NUL; else the app, owner in scope state."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/")
        try:
            if path == "/v1" or path.startswith("/v1/"):
                token = bearer_token(_header(scope, b"authorization"))
                scope.setdefault("state", {})["owner"] = await authenticate(token)
            body = b""
            if (scope["method"], path) not in STREAMED_ROUTES:
                body = await read_capped_body(scope, receive, get_settings().max_request_bytes)
                receive = replaying(body, receive)
            check_no_nul(scope, body)
        except ApiError as exc:
            response = error_response(exc)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
