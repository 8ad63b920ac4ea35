"""Apply Alembic migrations: the only way the schema changes."""

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations folder."""
    folder = Path(migrations.__file__).resolve().parent
    config = Config(str(folder / "alembic.ini"))
    config.set_main_option("script_location", str(folder))
    if database_url:
        config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str | None = None) -> None:
    """Bring the database at database_url (default: settings) to the newest revision."""
    command.upgrade(alembic_config(database_url), "head")
