"""an index on jobs.run_id: a run's jobs are read with every run listed or followed

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 09:45:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_jobs_run", "jobs", ["run_id", "submission", "job_num"])


def downgrade() -> None:
    op.drop_index("ix_jobs_run", table_name="jobs")
