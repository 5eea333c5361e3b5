"""Leases on a real database (SQLite, as the server migrates it): a batch is taken in one statement
(`UPDATE … RETURNING`) and only rows nobody holds are taken; giving back frees only our own."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select
from sqlalchemy.exc import InvalidRequestError

from dstack.server import migrate
from dstack.server.db import Database
from dstack.server.models import JobModel, ProjectModel, RunModel, UserModel, utcnow
from dstack.server.settings import Settings
from dstack.server.workers import common


def test_batch_leases_take_free_rows_only_and_give_back_their_own(tmp_path: Path) -> None:
    settings = Settings(server_dir=tmp_path)
    migrate.upgrade(settings)

    async def scenario() -> None:
        db = Database(settings)
        ours, theirs = SimpleNamespace(db=db, replica_id="ours"), SimpleNamespace(db=db, replica_id="theirs")
        async with db.session() as session:
            user = UserModel(id=str(uuid.uuid4()), name="u", global_role="admin", token_hash="h")
            project = ProjectModel(id=str(uuid.uuid4()), name="p", owner_id=user.id)
            run = RunModel(id=str(uuid.uuid4()), project_id=project.id, user_id=user.id, name="r", status="running",
                           spec="{}")
            jobs = [JobModel(id=f"job-{i}", run_id=run.id, name=f"r-{i}", status="running", storage_prefix=f"x/{i}")
                    for i in range(5)]
            for rows in ([user], [project], [run], jobs):  # parents first (no relationships set)
                session.add_all(rows)
                await session.flush()
            await session.commit()
        ids = [j.id for j in jobs]

        assert await common.try_lease(theirs, "job-0")
        assert sorted(await common.lease_many(ours, ids)) == ids[1:]  # job-0 is theirs
        assert not await common.try_lease(theirs, "job-1")
        await common.release_many(ours, ids)  # gives back ours only
        assert not await common.try_lease(ours, "job-0")
        assert await common.try_lease(theirs, "job-1")
        await common.release_lease(ours, "job-1")  # not ours: still held
        assert not await common.try_lease(ours, "job-1")

        seen: list[str] = []
        async with db.session() as session:  # a lease that ran out is free again
            (await session.get(JobModel, "job-0")).lock_until = utcnow() - timedelta(seconds=1)
            await session.commit()
        await common.for_each_leased_batch(ours, ids, lambda batch: _record(seen, batch))
        assert sorted(seen) == ["job-0", "job-2", "job-3", "job-4"]
        async with db.session() as session:
            held = dict((await session.execute(select(JobModel.id, JobModel.lock_owner))).all())
        assert held == {"job-0": None, "job-1": "theirs", "job-2": None, "job-3": None, "job-4": None}
        await db.close()

    asyncio.run(scenario())


async def _record(seen: list[str], batch: list[str]) -> None:
    seen.extend(batch)


def test_a_job_loads_its_runs_jobs_only_where_the_run_status_is_made_from_several(tmp_path: Path) -> None:
    """`load_job(run_jobs=False)` (each reconciler pass, each launch): a run of one job is followed by
    that job alone, so its jobs are not read (and raise if asked); a multi-node task's and a service's
    are, in order."""
    settings = Settings(server_dir=tmp_path)
    migrate.upgrade(settings)

    async def scenario() -> None:
        db = Database(settings)
        async with db.session() as session:
            user = UserModel(id=str(uuid.uuid4()), name="u", global_role="admin", token_hash="h")
            project = ProjectModel(id=str(uuid.uuid4()), name="p", owner_id=user.id)
            specs = {"task": '{"configuration":{"type":"task"}}',
                     "nodes": '{"configuration":{"type":"task","nodes":2}}',
                     "service": '{"configuration":{"type":"service"}}'}
            runs = [RunModel(id=name, project_id=project.id, user_id=user.id, name=name, status="running", spec=spec)
                    for name, spec in specs.items()]
            jobs = [JobModel(id=f"{run.id}-{num}", run_id=run.id, name=f"{run.id}-{num}", status="running",
                             storage_prefix=f"x/{run.id}/{num}", job_num=num) for run in runs for num in (1, 0)]
            for rows in ([user], [project], runs, jobs):
                session.add_all(rows)
                await session.flush()
            await session.commit()
        async with db.session() as session:
            task = await common.load_job(session, "task-0", run_jobs=False)
            assert task.run.project.name == "p"
            with pytest.raises(InvalidRequestError):
                _ = task.run.jobs
            for name in ("nodes", "service"):
                job = await common.load_job(session, f"{name}-0", run_jobs=False)
                assert [j.id for j in job.run.jobs] == [f"{name}-0", f"{name}-1"]
                assert job.run.jobs[0] is job
            assert [j.id for j in (await common.load_job(session, "task-1")).run.jobs] == ["task-0", "task-1"]
        await db.close()

    asyncio.run(scenario())
