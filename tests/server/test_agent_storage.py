"""The bucket API for SSH fleet agents: a token opens its instance's prefix and its jobs' prefixes
(not the files the server writes), reads code and the agent package, and nothing else; user tokens
and other instances' tokens get nothing."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

from dstack.core.configurations import TaskConfiguration
from dstack.core.runs import RunSpec
from dstack.server.db import Database
from dstack.server.models import FleetModel, InstanceModel, JobModel, ProjectModel, RunModel, UserModel
from dstack.server.services.users import hash_token
from dstack.server.settings import Settings
from tests.harness import Env, Server

TOKEN, OTHER_TOKEN = "agent-token-" + "a" * 20, "agent-token-" + "b" * 20


def _seed(env: Env) -> dict[str, str]:
    """Two instances of an SSH fleet; a running job on the first, one on the second."""
    ids = {"inst": str(uuid.uuid4()), "other": str(uuid.uuid4()), "job": str(uuid.uuid4()),
           "other_job": str(uuid.uuid4()), "run": str(uuid.uuid4()), "other_run": str(uuid.uuid4())}

    async def seed() -> None:
        db = Database(Settings(server_dir=env.server_dir))
        async with db.session() as session:
            project = await session.scalar(select(ProjectModel).where(ProjectModel.name == "main"))
            user = await session.scalar(select(UserModel).where(UserModel.name == "admin"))
            fleet = FleetModel(project_id=project.id, user_id=user.id, name="lab", status="active", spec="{}")
            session.add(fleet)
            await session.flush()
            for key, token in (("inst", TOKEN), ("other", OTHER_TOKEN)):
                session.add(InstanceModel(id=ids[key], project_id=project.id, fleet_id=fleet.id, num=0,
                                          status="busy", backend="ssh", job_ids="[]", allocations="{}",
                                          storage_prefix=f"dstack/instances/main/{ids[key]}",
                                          agent_token_hash=hash_token(token), heartbeat_seq=0))
            await session.flush()
            spec = RunSpec(configuration=TaskConfiguration(type="task", commands=["true"]), repo_id="r")
            for run_key, job_key, inst_key in (("run", "job", "inst"), ("other_run", "other_job", "other")):
                session.add(RunModel(id=ids[run_key], project_id=project.id, user_id=user.id, name=run_key.replace("_", "-"),
                                     status="running", spec=spec.model_dump_json()))
                await session.flush()
                session.add(JobModel(id=ids[job_key], run_id=ids[run_key], name="j", status="running",
                                     storage_prefix=f"dstack/runs/main/{ids[run_key]}/jobs/{ids[job_key]}",
                                     instance_terminated=False, fleet_instance_id=ids[inst_key], history="[]"))
            await session.commit()
        await db.close()

    asyncio.run(seed())
    return ids


@pytest.fixture
def agent(env: Env, server: Server) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    ids = _seed(env)
    with server.api() as admin:
        admin.put("/api/projects/main/secrets/HF_TOKEN", json={"value": "s3cr3t"}).raise_for_status()
    with httpx.Client(base_url=f"{server.url}/api/agent", headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client, ids


def test_an_agent_token_opens_its_instance_and_jobs_only(agent: tuple[httpx.Client, dict[str, str]],
                                                         server: Server) -> None:
    client, ids = agent
    mine = f"dstack/instances/main/{ids['inst']}"
    job = f"dstack/runs/main/{ids['run']}/jobs/{ids['job']}"
    other_job = f"dstack/runs/main/{ids['other_run']}/jobs/{ids['other_job']}"
    # Its own prefix and its job's: read, write, list, delete.
    assert client.put(f"/storage/objects/{mine}/heartbeat.json", content=b'{"seq":1}').status_code == 204
    assert client.get(f"/storage/objects/{mine}/heartbeat.json").content == b'{"seq":1}'
    assert client.head(f"/storage/objects/{mine}/heartbeat.json").headers["x-object-size"] == "9"
    assert client.put(f"/storage/objects/{job}/status.json", content=b"{}").status_code == 204
    assert client.get("/storage/list", params={"prefix": f"{job}/"}).json() == [f"{job}/status.json"]
    assert client.get(f"/storage/objects/{job}/missing.json").status_code == 404
    assert client.delete(f"/storage/objects/{mine}/heartbeat.json").status_code == 204
    # What the server writes for the job is read-only to the agent; code and the agent package too.
    assert client.put(f"/storage/objects/{job}/spec.json", content=b"{}").status_code == 403
    assert client.put(f"/storage/objects/{job}/stop.json", content=b"{}").status_code == 403
    assert client.get(f"/storage/objects/dstack/code/{'0' * 64}.tar.gz").status_code == 404
    assert client.put(f"/storage/objects/dstack/code/{'0' * 64}.tar.gz", content=b"x").status_code == 403
    # Another instance's prefix and jobs, other keys, escapes: refused.
    for key in (f"dstack/instances/main/{ids['other']}/x", f"{other_job}/status.json", "dstack/runs/main/x",
                "elsewhere/x", f"{mine}/../{ids['other']}/x"):
        assert client.get(f"/storage/objects/{key}").status_code in (403, 404), key
        assert client.put(f"/storage/objects/{key}", content=b"x").status_code in (403, 404), key
    assert client.get("/storage/list", params={"prefix": "dstack/runs/"}).status_code == 403
    # Secrets: of its own job only.
    assert client.get(f"/secrets/{ids['job']}").json() == {"HF_TOKEN": "s3cr3t"}
    assert client.get(f"/secrets/{ids['other_job']}").status_code == 403


def test_user_tokens_and_no_token_get_nothing(agent: tuple[httpx.Client, dict[str, str]], server: Server,
                                              env: Env) -> None:
    _, ids = agent
    key = f"/api/agent/storage/objects/dstack/instances/main/{ids['inst']}/x"
    for headers in ({}, {"Authorization": f"Bearer {env.token()}"}, {"Authorization": "Bearer nope"}):
        response = httpx.get(f"{server.url}{key}", headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert httpx.get(f"{server.url}/api/agent/secrets/{ids['job']}", headers=headers).status_code == 401
    assert "api/agent" not in json.dumps(httpx.get(f"{server.url}/openapi.json").json()["paths"])
