"""The reconciler on a real database (SQLite, as the server migrates it) and the local backend's real
bucket: a pass reads its jobs in one statement and writes their changes together, a job whose step
fails leaves the others' untouched, and a job this process is still launching is left alone."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select

from dstack.backends.base import LaunchedInstance
from dstack.core.configurations import TaskConfiguration
from dstack.core.runs import RunSpec
from dstack.server.context import ServerContext
from dstack.server.models import BackendModel, JobModel, ProjectModel, RunModel, UserModel, utcnow
from dstack.server.services.backends import compute_for
from dstack.server.workers import reconciler

SPEC = RunSpec(configuration=TaskConfiguration(type="task", commands=["true"]), repo_id="r").model_dump_json()


async def _project(ctx: ServerContext) -> ProjectModel:
    async with ctx.db.session() as session:
        user = UserModel(id=str(uuid.uuid4()), name="u", global_role="admin", token_hash="h")
        project = ProjectModel(id=str(uuid.uuid4()), name="p", owner_id=user.id)
        backend = BackendModel(project_id=project.id, type="local", config=ctx.encryptor.encrypt('{"type":"local"}'))
        for row in (user, project, backend):
            session.add(row)
            await session.flush()
        await session.commit()
    async with ctx.db.session() as session:  # with its backends, as the workers load it
        project = (await session.scalars(select(ProjectModel))).one()
        _ = project.backends
        return project


async def _add_job(ctx: ServerContext, project: ProjectModel, name: str, **job: Any) -> None:
    async with ctx.db.session() as session:
        run = RunModel(id=name, project_id=project.id, user_id=project.owner_id, name=name,
                       status=job.get("status", "running"), spec=SPEC)
        session.add(run)
        await session.flush()
        session.add(JobModel(id=name, run_id=run.id, name=name, storage_prefix=f"jobs/{name}",
                             heartbeat_at=utcnow(), history="[]", **job))
        await session.commit()


def _running(name: str) -> dict[str, Any]:
    # An agent on another machine: terminating its instance here touches nothing of this one.
    instance = LaunchedInstance(instance_id=name, region="local", data={"hostname": "another-machine"})
    return {"status": "running", "backend": "local", "instance_id": name, "instance": instance.model_dump_json(),
            "instance_terminated": False, "heartbeat_seq": 1}


async def _jobs(ctx: ServerContext) -> dict[str, tuple[str, str | None, bool | None]]:
    async with ctx.db.session() as session:
        rows = await session.execute(select(JobModel.id, JobModel.status, JobModel.reason,
                                            JobModel.instance_terminated))
        return {job_id: (status, reason, terminated) for job_id, status, reason, terminated in rows}


def test_a_pass_reads_its_jobs_at_once_and_one_broken_job_holds_back_no_other(
        ctx: ServerContext, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        project = await _project(ctx)
        storage = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project,
                              backend_type="local").storage
        names = [f"job-{i}" for i in range(6)]
        for name in names:
            # The last one's instance record is unreadable: its step fails, the others go on.
            await _add_job(ctx, project, name, **{**_running(name), **({"instance": "{not json"} if name == names[-1]
                                                                         else {})})
            storage.put_json(f"jobs/{name}/status.json", {"status": "done", "exit_code": 0, "log_events": 3})

        statements: Counter[str] = Counter()

        @event.listens_for(ctx.db.engine.sync_engine, "before_cursor_execute")
        def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            statements[" ".join(statement.split()[:4])] += 1

        await reconciler.reconcile_once(ctx)
        jobs = await _jobs(ctx)
        assert {name: jobs[name] for name in names[:-1]} == {name: ("done", None, True) for name in names[:-1]}
        assert jobs[names[-1]] == ("running", None, False)
        assert "reconciling job job-5 failed" in caplog.text
        # One statement reads the pass's jobs (after the one that lists them), and each table's
        # changes go out together: not a load and a flush for every job.
        assert statements["SELECT jobs.id, jobs.run_id, jobs.name,"] == 1, statements
        assert statements["UPDATE jobs SET status=?,"] == 1, statements
        assert statements["UPDATE runs SET status=?,"] == 1, statements
        assert statements["UPDATE jobs SET instance_terminated=?"] == 1, statements
        async with ctx.db.session() as session:
            runs = dict((await session.execute(select(RunModel.id, RunModel.status))).all())
        assert runs == {**{name: "done" for name in names[:-1]}, names[-1]: "running"}
        await ctx.db.close()

    asyncio.run(scenario())


def test_a_claim_whose_renewal_is_late_is_not_taken_for_a_dead_replicas(ctx: ServerContext) -> None:
    """A job claimed and not launched yet whose claim ran out: while this process is launching it
    (`ctx.provisioning`), the reconciler leaves it alone; once nobody launches it, it goes back to
    the queue (nothing was launched: no intent recorded)."""
    async def scenario() -> None:
        project = await _project(ctx)
        await _add_job(ctx, project, "claimed", status="provisioning", lock_owner=ctx.replica_id,
                       lock_until=utcnow() - timedelta(seconds=1))
        ctx.provisioning.add("claimed")
        await reconciler.reconcile_once(ctx)
        assert (await _jobs(ctx))["claimed"] == ("provisioning", None, True)
        ctx.provisioning.discard("claimed")
        await reconciler.reconcile_once(ctx)
        assert (await _jobs(ctx))["claimed"] == ("submitted", reconciler.INTERRUPTED, True)
        async with ctx.db.session() as session:
            history = json.loads((await session.get(JobModel, "claimed")).history)
        assert history[-1]["reason"] == reconciler.INTERRUPTED
        await ctx.db.close()

    asyncio.run(scenario())
