"""The Owner dependency: who the bearer key belongs to."""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api import key_cache
from api.errors import ApiError
from shared.keys import owner_for_key

# auto_error=False: a missing header must still get OpenAI's envelope, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="An API key: Authorization: Bearer sk-...")


def bearer_token(authorization: str | None) -> str | None:
    """The key of an 'Authorization: Bearer <key>' header value, else None."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def owner_of(token: str | None) -> str:
    """The owner of an API key, or 401 in the OpenAI envelope."""
    if not token:
        raise ApiError(
            401,
            "Missing bearer token: send 'Authorization: Bearer <API key>'",
            param=None,
            code="missing_api_key",
        )
    owner = owner_for_key(token)
    if owner is None:
        raise ApiError(
            401,
            "Incorrect API key provided; create one with `gpt2ft keys create`",
            code="invalid_api_key",
        )
    return owner


async def authenticate(token: str | None) -> str:
    """owner_of, from this process's key cache when it can (no thread, no database)."""
    key_cache.ensure_listener()
    if token:
        owner = key_cache.cached_owner(token)
        if owner is not None:
            return owner
    since = key_cache.generation()
    owner = await run_in_threadpool(owner_of, token)
    if token:
        key_cache.remember(token, owner, since)
    return owner


async def require_owner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The owner the request guard authenticated (before the body), else checked here."""
    owner = getattr(request.state, "owner", None)
    if isinstance(owner, str):
        return owner
    return await authenticate(credentials.credentials if credentials else None)


Owner = Annotated[str, Depends(require_owner)]
