"""A 2-node task on the hosts of an SSH fleet, VM hosts on a private bridge: node 0 listens, node 1
connects to $DSTACK_MASTER_NODE_IP (a torchrun-style rendezvous in plain sockets), both print their
rank; every node's logs are readable; all or nothing: a run that cannot have all its nodes gets none."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.ssh_hosts import bridge_address, ssh_hosts
from tests.harness import Env, Server, wait_for
from tests.stock_tree import default_image_env
from tests.ui.conftest import login
from tests.vmhost import VMHost

RENDEZVOUS = """\
import os, socket, time
rank, n = int(os.environ["DSTACK_NODE_RANK"]), int(os.environ["DSTACK_NODES_NUM"])
master = os.environ["DSTACK_MASTER_NODE_IP"]
ips = os.environ["DSTACK_NODES_IPS"].split()
print(f"rank {rank} of {n}, master {master}, nodes {','.join(ips)}", flush=True)
print("hostfile", open(os.environ["DSTACK_MPI_HOSTFILE"]).read().replace("\\n", ";"), flush=True)
if rank == 0:
    server = socket.create_server(("0.0.0.0", 29511))
    for _ in range(n - 1):
        conn, addr = server.accept()
        print("master got", conn.recv(100).decode(), "from", addr[0], flush=True)
        conn.sendall(b"welcome")
        conn.close()
else:
    for _ in range(300):
        try:
            conn = socket.create_connection((master, 29511), timeout=2)
            break
        except OSError:
            time.sleep(0.2)
    conn.sendall(f"hello-from-{rank}".encode())
    print("worker got", conn.recv(100).decode(), flush=True)
"""


@pytest.fixture
def cluster(tmp_path: Path, env: Env) -> Iterator[tuple[list[VMHost], Env, Server, Path]]:
    with ssh_hosts(tmp_path, 2, bridge=True) as (vms, key):
        env.extra.update(default_image_env())
        server = Server(env).start()
        try:
            repo = env.home / "repo"
            repo.mkdir()
            assert env.cli("init", cwd=repo).returncode == 0
            hosts = "\n".join(f"    - hostname: {vm.vm_ip}\n      internal_ip: {bridge_address(i)}"
                              for i, vm in enumerate(vms))
            (repo / "fleet.dstack.yml").write_text(
                f"type: fleet\nname: lab\nssh_config:\n  user: ubuntu\n  identity_file: {key}\n  hosts:\n{hosts}\n")
            result = env.cli("apply", "-y", "-f", "fleet.dstack.yml", cwd=repo, timeout=300)
            assert result.returncode == 0, result.stdout + result.stderr
            yield vms, env, server, repo
        finally:
            server.stop()


def test_two_nodes_rendezvous_over_the_private_network(cluster: tuple[list[VMHost], Env, Server, Path],
                                                       page) -> None:  # noqa: ANN001
    vms, env, server, repo = cluster
    (repo / "rendezvous.py").write_text(RENDEZVOUS)
    (repo / ".dstack.yml").write_text("type: task\nname: ddp\nnodes: 2\ncommands: [python3 rendezvous.py]\n"
                                      "resources: {cpu: 1.., memory: 1GB..}\n")
    result = env.cli("apply", "-y", cwd=repo, timeout=240)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    master, worker = bridge_address(0), bridge_address(1)
    # `apply` follows the master's logs; the worker's are there too, by node.
    assert f"rank 0 of 2, master {master}, nodes {master},{worker}" in out, out
    assert f"master got hello-from-1 from {worker}" in out, out
    assert f"hostfile {master} slots=1;{worker} slots=1;" in out, out
    worker_logs = env.cli("logs", "ddp", "--job", "1", cwd=repo).stdout
    assert f"rank 1 of 2, master {master}" in worker_logs and "worker got welcome" in worker_logs, worker_logs
    with server.api() as api:
        run = api.get("/api/projects/main/runs/ddp").json()
        assert run["status"] == "done", run
        assert sorted(j["job_num"] for j in run["jobs"]) == [0, 1]
        assert {j["offer"]["instance_type"] for j in run["jobs"]} == {vm.vm_ip for vm in vms}
        # Both hosts are given back.
        wait_for(lambda: [i["status"] for i in api.get("/api/projects/main/fleets/lab").json()["instances"]]
                 == ["idle", "idle"], 60, message="the hosts to be idle")
    nope = env.cli("logs", "ddp", "--job", "5", cwd=repo)
    assert nope.returncode != 0 and "has no node 5 (it has 2" in nope.stderr
    # Upstream's --replica: a task has one, replica 0.
    assert "worker got welcome" in env.cli("logs", "ddp", "--replica", "0", "--job", "1", cwd=repo).stdout
    nope = env.cli("logs", "ddp", "--replica", "1", cwd=repo)
    assert nope.returncode != 0 and "has no replica 1 (it has 1)" in nope.stderr
    # The run page shows one node's logs at a time: the master's, then the one chosen.
    login(page, server.url, env.token())
    page.goto(f"{server.url}/projects/main/runs/ddp")
    page.locator("#logs", has_text="master got hello-from-1").wait_for()
    page.get_by_label("Node").select_option("1")
    page.locator("#logs", has_text="worker got welcome").wait_for()
    assert "master got" not in page.locator("#logs").inner_text()


def test_all_or_nothing_and_a_failed_node_fails_the_run(cluster: tuple[list[VMHost], Env, Server, Path]) -> None:
    vms, env, server, repo = cluster
    # More nodes than hosts: refused at plan time, nothing submitted.
    (repo / ".dstack.yml").write_text("type: task\nname: big\nnodes: 3\ncommands: [hostname]\n"
                                      "resources: {cpu: 1.., memory: 1GB..}\n")
    result = env.cli("apply", "-y", cwd=repo, timeout=60)
    assert result.returncode != 0 and "nodes: 3 needs 3 idle hosts of one SSH fleet" in result.stderr
    # One host busy: a 2-node run cannot have both, so neither runs.
    (repo / "long.yml").write_text(f"type: task\nname: long\ncommands: [sleep 300]\nresources: {{cpu: {os.cpu_count()}, "
                                   "memory: 1GB..}\n")
    assert env.cli("apply", "-y", "-d", "-f", "long.yml", cwd=repo, timeout=60).returncode == 0
    with server.api() as api:
        wait_for(lambda: api.get("/api/projects/main/runs/long").json()["status"] == "running", 120,
                 message="the long run to start")
        (repo / "pair.yml").write_text("type: task\nname: pair\nnodes: 2\ncommands: [hostname]\n"
                                       "resources: {cpu: 1.., memory: 1GB..}\n")
        result = env.cli("apply", "-y", "-f", "pair.yml", cwd=repo, timeout=60)
        assert result.returncode != 0 and "(there are 1)" in result.stderr, result.stderr
        assert [r["name"] for r in api.get("/api/projects/main/runs", params={"all": True}).json()] == ["long"]
        assert env.cli("stop", "long", cwd=repo, timeout=90).returncode == 0
        wait_for(lambda: [i["status"] for i in api.get("/api/projects/main/fleets/lab").json()["instances"]]
                 == ["idle", "idle"], 60, message="the hosts to be idle")
        # A node that fails stops the other and fails the run.
        (repo / "fail.yml").write_text(
            "type: task\nname: fail\nnodes: 2\nresources: {cpu: 1.., memory: 1GB..}\ncommands:\n"
            "  - 'if [ \"$DSTACK_NODE_RANK\" = 1 ]; then exit 3; fi; sleep 300'\n")
        result = env.cli("apply", "-y", "-f", "fail.yml", cwd=repo, timeout=240)
        assert result.returncode != 0
        run = wait_for(lambda: (r := api.get("/api/projects/main/runs/fail").json())["status"] == "failed" and r,
                       120, message="the run to fail")
        assert run["reason"].startswith("node 1: exit code 3"), run["reason"]
        assert {j["job_num"]: j["status"] for j in run["jobs"]} == {0: "stopped", 1: "failed"}


ORDERED = """\
import os, socket, time
rank = int(os.environ["DSTACK_NODE_RANK"])
peer = os.environ["DSTACK_NODES_IPS"].split()[1 - rank]
if rank == {first}:  # starts first: listens, and reports who connects
    server = socket.create_server(("0.0.0.0", 29512))
    conn, addr = server.accept()
    print("first got", conn.recv(100).decode(), flush=True)
else:  # starts once the other runs: its listener must answer at once (two quick tries)
    for attempt in range(2):
        try:
            socket.create_connection((peer, 29512), timeout=2).sendall(b"hi-from-" + str(rank).encode())
            print("second connected at attempt", attempt, flush=True)
            break
        except OSError as exc:
            print("second could not connect:", exc, flush=True)
            time.sleep(0.3)
"""


@pytest.mark.parametrize("order,first", [("workers-first", 1), ("master-first", 0)])
def test_startup_order_starts_one_side_after_the_other_runs(
        cluster: tuple[list[VMHost], Env, Server, Path], order: str, first: int) -> None:
    vms, env, server, repo = cluster
    (repo / "ordered.py").write_text(ORDERED.replace("{first}", str(first)))
    (repo / ".dstack.yml").write_text(f"type: task\nname: ordered\nnodes: 2\nstartup_order: {order}\n"
                                      "commands: [python3 ordered.py]\nresources: {cpu: 1.., memory: 1GB..}\n")
    result = env.cli("apply", "-y", cwd=repo, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    logs = {n: env.cli("logs", "ordered", "--job", str(n), cwd=repo).stdout for n in (0, 1)}
    assert "second connected at attempt 0" in logs[1 - first], logs
    assert f"first got hi-from-{1 - first}" in logs[first], logs
    with server.api() as api:
        jobs = {j["job_num"]: j for j in api.get("/api/projects/main/runs/ordered").json()["jobs"]}
    # When each node's process started, as its agent reported it (a short one may be done before the
    # server ever sees it running).
    started = {n: datetime.fromisoformat(j["started_at"]) for n, j in jobs.items()}
    assert started[first] < started[1 - first], started
