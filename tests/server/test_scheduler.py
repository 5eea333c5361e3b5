"""The scheduler on a real database (SQLite, as the server migrates it): a priority level's jobs are
claimed in one statement and read in one, jobs another replica holds are left to it, and a job whose
run was stopped before its launch ends stopped without one."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import event, select

from dstack.core.configurations import TaskConfiguration
from dstack.core.runs import RunSpec
from dstack.server.context import ServerContext
from dstack.server.models import BackendModel, JobModel, ProjectModel, RunModel, UserModel, utcnow
from dstack.server.services.runs import WAITING_FOR_CAPACITY
from dstack.server.workers import scheduler

SPEC = RunSpec(configuration=TaskConfiguration(type="task", commands=["true"]), repo_id="r").model_dump_json()


async def _add_runs(ctx: ServerContext, names: list[str], **job: Any) -> None:
    async with ctx.db.session() as session:
        user = UserModel(id=str(uuid.uuid4()), name="u", global_role="admin", token_hash="h")
        project = ProjectModel(id=str(uuid.uuid4()), name="p", owner_id=user.id)
        backend = BackendModel(project_id=project.id, type="local", config=ctx.encryptor.encrypt('{"type":"local"}'))
        runs = [RunModel(id=name, project_id=project.id, user_id=user.id, name=name, status="submitted", spec=SPEC,
                         stop_requested=True, stop_reason="stopped by the user") for name in names]
        jobs = [JobModel(id=name, run_id=name, name=name, storage_prefix=f"jobs/{name}", status="submitted", **job)
                for name in names]
        for rows in ([user], [project, backend], runs, jobs):
            session.add_all(rows)
            await session.flush()
        await session.commit()


def test_a_level_is_claimed_and_read_at_once_and_a_stopped_run_ends_unlaunched(ctx: ServerContext) -> None:
    async def scenario() -> None:
        names = [f"run-{i}" for i in range(5)]
        await _add_runs(ctx, names)
        async with ctx.db.session() as session:  # another replica holds one of them
            held = await session.get(JobModel, "run-4")
            held.lock_owner, held.lock_until = "another-replica", utcnow() + timedelta(seconds=60)
            await session.commit()
        statements: list[str] = []

        @event.listens_for(ctx.db.engine.sync_engine, "before_cursor_execute")
        def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            statements.append(" ".join(statement.split()))

        await scheduler.schedule_once(ctx)
        async with ctx.db.session() as session:
            jobs = {job.id: job for job in await session.scalars(select(JobModel))}
            runs = dict((await session.execute(select(RunModel.id, RunModel.status))).all())
        for name in names[:4]:
            assert (jobs[name].status, jobs[name].reason, jobs[name].instance_id) == (
                "stopped", "stopped by the user", None)
            assert jobs[name].lock_owner is None  # the claim given back
            assert runs[name] == "stopped"
            assert [e["status"] for e in json.loads(jobs[name].history)] == ["stopped"]
        assert (jobs["run-4"].status, jobs["run-4"].lock_owner) == ("submitted", "another-replica")
        # One statement claims the level, one reads the claimed jobs with their runs, projects and
        # backends (and the project's secrets once): not a claim, a load and a read of secrets for each.
        claims = [s for s in statements if s.startswith("UPDATE jobs SET status=?, lock_owner=?")]
        assert len(claims) == 1 and claims[0].count("?,") >= 3, claims  # the four jobs in one
        assert len([s for s in statements if s.startswith("SELECT jobs.id, jobs.run_id")
                    and "WHERE jobs.id IN (?, ?, ?, ?)" in s]) == 1
        assert len([s for s in statements if s.startswith("SELECT secrets.")]) == 1
        assert not ctx.provisioning
        await ctx.db.close()

    asyncio.run(scenario())


def test_a_job_that_found_freed_capacity_leaves_it_to_a_higher_priority_waiting(ctx: ServerContext) -> None:
    """Capacity freed during a pass may be what a higher priority was refused a moment before: a job
    of a lower level that found it asks whether one waits above it (once per level), and only then."""
    async def scenario() -> None:
        await _add_runs(ctx, ["high"], priority=10, reason=f"{WAITING_FOR_CAPACITY}: no offers")
        level = scheduler._Outranked(priority=0)
        assert not await scheduler._outranked(ctx, freed=ctx.capacity_freed, outranked=level)
        assert level.answer is None  # nothing freed during the pass: not even asked
        ctx.capacity_freed += 2
        assert await scheduler._outranked(ctx, freed=0, outranked=level)
        assert not await scheduler._outranked(ctx, freed=0, outranked=scheduler._Outranked(priority=10))
        async with ctx.db.session() as session:  # no longer waiting: nothing outranks the level
            (await session.get(JobModel, "high")).reason = None
            await session.commit()
        assert not await scheduler._outranked(ctx, freed=0, outranked=scheduler._Outranked(priority=0))
        await ctx.db.close()

    asyncio.run(scenario())
