"""job options and stats, best checkpoint flag

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("options", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("stats", sa.JSON(), nullable=True))
    with op.batch_alter_table("checkpoints") as batch_op:
        batch_op.add_column(
            sa.Column("is_best", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch_op:
        batch_op.drop_column("is_best")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("stats")
        batch_op.drop_column("options")
