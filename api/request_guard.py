"""The API key is checked, and a JSON body capped, before the app reads a byte of the body."""

from fastapi.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import bearer_token, owner_of
from api.errors import ApiError, envelope
from shared.settings import get_settings

# Uploads stream to disk under their own limit (max_upload_bytes, api/uploads.py).
STREAMED_ROUTES = {("POST", "/v1/files")}


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


async def read_capped_body(scope: Scope, receive: Receive, limit: int) -> Receive:
    """Read the whole body (at most limit bytes, else 413) and replay it to the app."""
    declared = _header(scope, b"content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise request_too_large(limit)  # refused before any of it arrives
    if declared in (None, "0") and _header(scope, b"transfer-encoding") is None:
        return receive
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
    replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

    async def replayed() -> Message:
        return replay.pop() if replay else await receive()

    return replayed


class RequestGuard:
    """Authenticates /v1 requests from their headers, then caps bodies; refuses early."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """401 or 413 without reading the body; otherwise the app, owner in scope state."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/")
        try:
            if path == "/v1" or path.startswith("/v1/"):
                token = bearer_token(_header(scope, b"authorization"))
                scope.setdefault("state", {})["owner"] = await run_in_threadpool(owner_of, token)
            if (scope["method"], path) not in STREAMED_ROUTES:
                limit = get_settings().max_request_bytes
                receive = await read_capped_body(scope, receive, limit)
        except ApiError as exc:
            response = envelope(exc.status, exc.message, exc.type, exc.param, exc.code)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
