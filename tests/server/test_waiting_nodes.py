"""A multi-node run's master that ends before its nodes were assigned ends them too; a master that
did not end, or an earlier submission's nodes, are left alone (a real, migrated SQLite database)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from types import SimpleNamespace

from sqlalchemy import select

from dstack.server import migrate
from dstack.server.db import Database
from dstack.server.models import JobModel, ProjectModel, RunModel, UserModel
from dstack.server.settings import Settings
from dstack.server.workers.nodes import end_waiting_nodes


def test_a_master_that_ended_ends_its_waiting_nodes_only(tmp_path: Path) -> None:
    settings = Settings(server_dir=tmp_path)
    migrate.upgrade(settings)

    async def scenario() -> dict[str, tuple[str, str | None]]:
        db = Database(settings)
        ctx = SimpleNamespace(db=db)
        async with db.session() as session:
            user = UserModel(id=str(uuid.uuid4()), name="u", global_role="admin", token_hash="h")
            project = ProjectModel(id=str(uuid.uuid4()), name="p", owner_id=user.id)
            runs = [RunModel(id=f"run-{n}", project_id=project.id, user_id=user.id, name=f"r{n}", status="submitted",
                             spec="{}") for n in range(2)]
            jobs = [
                # run-0: its master failed (no capacity) on submission 1; node 1 of submission 1 waits,
                # node 1 of submission 0 ended long ago
                JobModel(id="m0", run_id="run-0", name="r0-0", job_num=0, submission=1, status="failed",
                         reason="no capacity", storage_prefix="x/m0"),
                JobModel(id="n0", run_id="run-0", name="r0-1", job_num=1, submission=1, status="submitted",
                         storage_prefix="x/n0"),
                JobModel(id="old", run_id="run-0", name="r0-1", job_num=1, submission=0, status="submitted",
                         storage_prefix="x/old"),
                # run-1: its master is provisioning: its node keeps waiting
                JobModel(id="m1", run_id="run-1", name="r1-0", job_num=0, status="provisioning", storage_prefix="x/m1"),
                JobModel(id="n1", run_id="run-1", name="r1-1", job_num=1, status="submitted", storage_prefix="x/n1"),
            ]
            for rows in ([user], [project], runs, jobs):  # parents first (no relationships set)
                session.add_all(rows)
                await session.flush()
            await session.commit()
        await end_waiting_nodes(ctx, "m1")
        await end_waiting_nodes(ctx, "m0")
        await end_waiting_nodes(ctx, "missing")
        async with db.session() as session:
            rows = (await session.execute(select(JobModel.id, JobModel.status, JobModel.reason))).all()
        await db.close()
        return {job_id: (status, reason) for job_id, status, reason in rows}

    jobs = asyncio.run(scenario())
    assert jobs["n0"] == ("failed", "no capacity")
    assert jobs["old"] == ("submitted", None)
    assert jobs["n1"] == ("submitted", None)
    assert jobs["m1"] == ("provisioning", None)
