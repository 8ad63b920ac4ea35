"""The Owner dependency: who the bearer key belongs to."""

from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from shared.keys import owner_for_key

# auto_error=False: a missing header must still get OpenAI's envelope, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="An API key: Authorization: Bearer sk-...")


def require_owner(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The owner of the request's API key, or 401 in the OpenAI envelope."""
    if credentials is None or not credentials.credentials:
        raise ApiError(
            401,
            "Missing bearer token: send 'Authorization: Bearer <API key>'",
            param=None,
            code="missing_api_key",
        )
    owner = owner_for_key(credentials.credentials)
    if owner is None:
        raise ApiError(
            401,
            "Incorrect API key provided; create one with `gpt2ft keys create`",
            code="invalid_api_key",
        )
    return owner


Owner = Annotated[str, Depends(require_owner)]
