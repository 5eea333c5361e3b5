"""Two server processes on one PostgreSQL: every queued run starts exactly once."""

from __future__ import annotations

from collections import Counter

import pytest

from dstack.api.client import Client
from dstack.api.code import build_archive, repo_id_for
from dstack.core.configurations import TaskConfiguration
from dstack.core.runs import RunSpec
from tests.harness import Env, Server, wait_for

RUNS = 50


@pytest.mark.postgres
def test_two_replicas_start_each_run_exactly_once(env: Env, postgres_url: str) -> None:
    env.extra.update({
        "DSTACK_DATABASE_URL": postgres_url,
        "DSTACK_SERVER_ADMIN_TOKEN": "replica-test-token",
        "DSTACK_SERVER_DIR": str(env.home / "shared-server-dir"),
    })
    first = Server(env).start()
    second = Server(env).start()
    try:
        repo = env.home / "repo"
        repo.mkdir()
        client = Client(url=first.url, token="replica-test-token", project="main")
        repo_id = repo_id_for(repo)
        client.repos.init(repo_id)
        data, code_hash = build_archive(repo)
        client.repos.upload_code(data, code_hash)
        # Submit through both replicas; both schedulers compete for the queue.
        clients = [client, Client(url=second.url, token="replica-test-token", project="main")]
        for i in range(RUNS):
            # A sandboxed job can write nowhere but its own directory: each start is a line of its logs.
            conf = TaskConfiguration(type="task", name=f"run-{i}", commands=["echo started $DSTACK_RUN_NAME"],
                                     resources={"cpu": "1..", "memory": "1GB.."})
            clients[i % 2].runs.submit(RunSpec(configuration=conf, repo_id=repo_id, code_hash=code_hash))

        def all_finished() -> bool:
            runs = client.runs.list(all=True)
            return len(runs) == RUNS and all(r.status.finished for r in runs)

        wait_for(all_finished, 180, interval=0.5, message="all runs to finish")
        runs = client.runs.list(all=True)
        assert {r.status.value for r in runs} == {"done"}
        assert all(len(r.jobs) == 1 and len(r.jobs[0].attempts) == 1 for r in runs)
        started = Counter(e.message for r in runs for e in client.runs.follow_logs(r.name, follow=False)
                          if e.message.startswith("started"))
        assert started == Counter({f"started run-{i}": 1 for i in range(RUNS)})
    finally:
        first.stop()
        second.stop()
