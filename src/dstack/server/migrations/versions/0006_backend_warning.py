"""a backend's warning: the last error that made it unusable (denied, bad credentials)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("backends") as batch:
        batch.add_column(sa.Column("warning", sa.Text(), nullable=True))
        batch.add_column(sa.Column("warning_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("backends") as batch:
        batch.drop_column("warning_at")
        batch.drop_column("warning")
