"""Services the tests need (Postgres, Redis, redis-server, Chromium, Docker, an S3 server).

Where one is missing a test skips, saying why; in CI (CI set) or with
GPT2FT_REQUIRE_SERVICES=1 it fails instead, so that nothing passes unseen.
"""

import os
from typing import NoReturn

import pytest


def services_required() -> bool:
    """True in CI (CI set) or with GPT2FT_REQUIRE_SERVICES=1: missing services fail tests."""
    unset = ("", "0", "false", "no")
    ci = os.environ.get("CI", "").strip().lower() not in unset
    return ci or os.environ.get("GPT2FT_REQUIRE_SERVICES", "").strip() == "1"


def missing_service(reason: str) -> NoReturn:
    """Skip saying why; in CI (see services_required) fail instead, so nothing passes unseen."""
    if services_required():
        pytest.fail(f"{reason} (a failure, not a skip: CI or GPT2FT_REQUIRE_SERVICES=1 is set)")
    pytest.skip(reason)
