"""The migrations build exactly the schema the ORM tables declare (SQLite and Postgres)."""

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from shared.db.session import get_engine
from shared.db.tables import Base


def test_migrated_schema_matches_the_tables(gpt2ft_home: Path) -> None:
    with get_engine().connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == [], "add a migration for: " + repr(differences)
