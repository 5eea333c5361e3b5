"""network volumes

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 02:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "volumes",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("project_id", sa.String(36), sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("backend", sa.String(20), nullable=False),
        sa.Column("region", sa.String(100), nullable=False),
        sa.Column("availability_zone", sa.String(100), nullable=True),
        sa.Column("size_gb", sa.Float(), nullable=True),
        sa.Column("volume_id", sa.String(200), nullable=True),
        sa.Column("external", sa.Boolean(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True),
        sa.Column("attachment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("lock_owner", sa.String(64), nullable=True),
        sa.Column("lock_until", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ux_volumes_active_name", "volumes", ["project_id", "name"], unique=True,
                    sqlite_where=sa.text("deleted = false"), postgresql_where=sa.text("deleted = false"))
    op.create_index("ix_volumes_status", "volumes", ["status"])


def downgrade() -> None:
    op.drop_index("ix_volumes_status", table_name="volumes")
    op.drop_index("ux_volumes_active_name", table_name="volumes")
    op.drop_table("volumes")
