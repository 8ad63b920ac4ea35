"""OpenAI's error envelope for every error the API returns."""

import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

# Location parts that name a union branch or a request part, not a field.
_LOCATION_ROOTS = {"body", "query", "path", "header", "cookie"}
_TYPE_TAGS = {"int", "float", "str", "bool", "list", "dict", "none", "bytes"}
# Specific errors win over "wrong type" errors from the other union branches.
_PRIORITY = {"extra_forbidden": 0, "missing": 0, "literal_error": 3}
# The openai SDK's header: "false" stops its retries, "true" asks for them.
SHOULD_RETRY = "x-should-retry"
# A 422 quotes the bad value this far: enough to recognise it, never the whole request back.
MAX_ECHO_CHARS = 100


class ApiError(Exception):
    """An error shown to the client as {"error": {...}} with an HTTP status.

    retry_after (seconds) marks an error that the same request may get past soon (a busy
    slot, Redis restarting): the answer carries Retry-After and x-should-retry: true. Every
    other ApiError says x-should-retry: false, so the openai SDK, which retries 409, 429 and
    5xx twice by default, fails at once where retrying cannot help (a quota, a conflict).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code


def not_found(kind: str, object_id: str, param: str | None = None) -> ApiError:
    """404 'No such file: file-abc' (another owner's object reads the same)."""
    return ApiError(404, f"No such {kind}: {object_id}", param=param, code=f"{kind}_not_found")


def envelope(
    status: int, message: str, type: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    """The JSON response OpenAI clients parse as an error."""
    # A lone surrogate from the client's input cannot be encoded as UTF-8: escape it.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(status_code=status, content=body)


def _field_path(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in _LOCATION_ROOTS:
        parts = parts[1:]
    kept = [p for p in parts if not ({"[", "-", "'"} & set(p)) and p not in _TYPE_TAGS]
    return ".".join(kept)[:MAX_ECHO_CHARS]


def _describe(error: dict[str, Any], param: str, accepts_auto: bool) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown field '{param}'; remove it (see /openapi.json for the accepted fields)"
    if kind == "missing":
        return f"'{param}' is required"
    alternative = ' or "auto"' if accepts_auto else ""
    got = repr(error.get("input"))
    if len(got) > MAX_ECHO_CHARS:
        got = f"{got[:MAX_ECHO_CHARS]}... ({len(got)} characters)"
    return f"{param}: {error['msg']}{alternative} (got {got})"


def validation_error(
    errors: Sequence[Any], prefix: Callable[[str], str] = lambda path: path
) -> ApiError:
    """A 422 naming the first bad field (its dotted path) and the bound it broke."""
    by_param: dict[str, list[dict[str, Any]]] = {}
    for error in errors:
        by_param.setdefault(prefix(_field_path(error["loc"])), []).append(error)
    param, group = next(iter(by_param.items()))
    best = min(group, key=lambda e: _PRIORITY.get(e["type"], 1 if e.get("ctx") else 2))
    accepts_auto = any(e.get("ctx", {}).get("expected") == "'auto'" for e in group)
    accepts_auto = accepts_auto and best["type"] != "literal_error"
    message = _describe(best, param, accepts_auto)
    return ApiError(422, message, param=param or None, code=best["type"])


def retry_headers(retry_after: int | None) -> dict[str, str]:
    """What tells a client whether to send the request again, and when."""
    if retry_after is None:
        return {SHOULD_RETRY: "false"}
    return {SHOULD_RETRY: "true", "Retry-After": str(retry_after)}


def error_response(exc: ApiError) -> JSONResponse:
    """The envelope for exc, with its retry headers."""
    response = envelope(exc.status, exc.message, exc.type, exc.param, exc.code)
    response.headers.update(retry_headers(exc.retry_after))
    return response


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _request_validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return await _api_error(_request, validation_error(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    path = request.url.path
    if exc.status_code == 404:
        message = f"Unknown request URL: {request.method} {path}"
        if path != "/v1" and not path.startswith("/v1/"):
            message += (
                f". The API lives under /v1: set the client's base URL to {request.base_url}v1 "
                f'(for example OpenAI(base_url="{request.base_url}v1"))'
            )
    else:
        message = str(exc.detail)
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    response = envelope(exc.status_code, message, kind)
    if exc.status_code < 500:
        response.headers.update(retry_headers(None))
    return response


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return envelope(500, "internal server error; see the API log", "server_error")


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the OpenAI envelope."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
