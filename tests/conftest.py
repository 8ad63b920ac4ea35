"""Fixtures shared by every test tier: real tokenizer, real tiny GPT-2, real databases."""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import get_settings
from shared.tokenizer_files import fetch_tokenizer_files
from tests.services import missing_service

# s3_server / s3_env: a real S3 server (SeaweedFS) for the storage tests.
pytest_plugins = ["tests.s3server"]
REPO = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get(
    "GPT2FT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    """OpenAI's GPT-2 vocab.json and merges.txt (fetched once into var/tokenizer/gpt2)."""
    return fetch_tokenizer_files(REPO / "var" / "tokenizer" / "gpt2")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A models directory holding gpt2-tiny, built once per test session."""
    from worker.training.tiny import build_tiny_gpt2

    folder = tmp_path_factory.mktemp("models")
    build_tiny_gpt2(folder / "gpt2-tiny", tokenizer_dir)
    return folder


def _reset_process_state() -> None:
    from api import job_reads
    from shared.db.session import reset_engines

    get_settings.cache_clear()
    reset_engines()
    job_reads.forget_all()


def postgres_available() -> str | None:
    """None when the test Postgres answers, else the reason it does not."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL.replace("+psycopg", ""), connect_timeout=3):
            return None
    except Exception as exc:  # any failure means: no Postgres tests here, saying why
        return f"Postgres not reachable at {POSTGRES_URL}: {exc}"


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh, empty Postgres database for one test; dropped afterwards."""
    reason = postgres_available()
    if reason:
        missing_service(reason)
    import psycopg

    admin_url = POSTGRES_URL.replace("+psycopg", "")
    name = f"gpt2ft_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        _reset_process_state()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs twice: on SQLite and on Postgres."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gpt2ft.db'}"
    return request.getfixturevalue("postgres_database")


@pytest.fixture
def gpt2ft_home(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    models_dir: Path,
    tokenizer_dir: Path,
) -> Iterator[Path]:
    """Settings pointed at a temporary home and a migrated database (SQLite and Postgres)."""
    from shared.db.migrate import upgrade

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("GPT2FT_HOME", str(home))
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("GPT2FT_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("GPT2FT_TOKENIZER_DIR", str(tokenizer_dir))
    _reset_process_state()
    upgrade(database_url)
    yield home
    _reset_process_state()
