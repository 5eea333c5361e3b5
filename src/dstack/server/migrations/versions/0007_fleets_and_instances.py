"""fleets and their instances; a job may run on a fleet instance; a job's node number (multi-node)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fleets",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("project_id", sa.String(36), sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=True),
    )
    op.create_index("ux_fleets_active_name", "fleets", ["project_id", "name"], unique=True,
                    sqlite_where=sa.text("deleted = false"), postgresql_where=sa.text("deleted = false"))
    op.create_table(
        "instances",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("project_id", sa.String(36), sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("fleet_id", sa.String(36), sa.ForeignKey("fleets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("num", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("backend", sa.String(20), nullable=True),
        sa.Column("offer", sa.Text(), nullable=True),
        sa.Column("price", sa.Float(), nullable=True),
        sa.Column("instance_id", sa.String(200), nullable=True),
        sa.Column("instance", sa.Text(), nullable=True),
        sa.Column("launch_intent", sa.Text(), nullable=True),
        sa.Column("storage_prefix", sa.Text(), nullable=False),
        sa.Column("job_ids", sa.Text(), nullable=False),
        sa.Column("allocations", sa.Text(), nullable=False),
        sa.Column("agent_token_hash", sa.String(64), nullable=True, unique=True),
        sa.Column("heartbeat_seq", sa.Integer(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("idle_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lock_owner", sa.String(64), nullable=True),
        sa.Column("lock_until", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_instances_status", "instances", ["status"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("fleet_instance_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("job_num", sa.Integer(), nullable=False, server_default="0"))
        batch.create_foreign_key("fk_jobs_fleet_instance", "instances", ["fleet_instance_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_fleet_instance", type_="foreignkey")
        batch.drop_column("fleet_instance_id")
        batch.drop_column("job_num")
    op.drop_index("ix_instances_status", "instances")
    op.drop_table("instances")
    op.drop_index("ux_fleets_active_name", "fleets")
    op.drop_table("fleets")
