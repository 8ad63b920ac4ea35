"""Alembic environment: the URL comes from gpt2ft settings, never from alembic.ini."""

from alembic import context

from shared.db.session import make_engine
from shared.db.tables import Base
from shared.settings import get_settings

config = context.config
url = config.attributes.get("database_url") or get_settings().resolved_database_url

engine = make_engine(url)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
