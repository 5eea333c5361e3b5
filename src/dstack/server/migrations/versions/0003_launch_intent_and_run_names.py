"""launch intents; one active run per name

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 10:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACTIVE = sa.text("finished_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("launch_intent", sa.Text(), nullable=True))
    # Older servers let several runs of one name be active at once: keep the newest active.
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT id, project_id, name FROM runs WHERE finished_at IS NULL ORDER BY submitted_at DESC")).fetchall()
    seen: set[tuple[str, str]] = set()
    for run_id, project_id, name in rows:
        if (project_id, name) in seen:
            conn.execute(sa.text("UPDATE runs SET finished_at = submitted_at, status = 'failed', "
                                 "reason = 'superseded by a newer run of the same name' WHERE id = :id"),
                         {"id": run_id})
        seen.add((project_id, name))
    op.create_index("ux_runs_active_name", "runs", ["project_id", "name"], unique=True,
                    sqlite_where=_ACTIVE, postgresql_where=_ACTIVE)


def downgrade() -> None:
    op.drop_index("ux_runs_active_name", table_name="runs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("launch_intent")
