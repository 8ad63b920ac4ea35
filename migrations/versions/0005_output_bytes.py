"""checkpoints.bytes, fine_tuned_models.bytes: job outputs counted in the storage quota

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("checkpoints", "fine_tuned_models"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(
                sa.Column("bytes", sa.BigInteger(), nullable=False, server_default="0")
            )


def downgrade() -> None:
    for table in ("checkpoints", "fine_tuned_models"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("bytes")
