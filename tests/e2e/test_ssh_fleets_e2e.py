"""An SSH fleet of VM hosts (network namespaces with sshd, no cloud account): the server installs the
agent over SSH, detects each host's resources, reports a host without a container runtime with the
fix, runs jobs there in containers (two small runs share a host, a bigger one goes to the other),
with secrets fetched through the server's tunnel, and cleans the hosts up when the fleet is deleted."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.ssh_hosts import ssh_hosts
from tests.harness import Env, Server, wait_for
from tests.stock_tree import default_image_env
from tests.ui.conftest import login
from tests.vmhost import VMHost

SECRET = "ssh-fleet-s3cr3t-value"


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[list[VMHost], Path]]:
    with ssh_hosts(tmp_path, 3, bare=[2]) as booted:
        yield booted


@pytest.fixture
def stack(env: Env, hosts: tuple[list[VMHost], Path]) -> Iterator[tuple[Env, Server, Path]]:
    env.extra.update(default_image_env())
    server = Server(env).start()
    try:
        with server.api() as api:
            api.put("/api/projects/main/secrets/HF_TOKEN", json={"value": SECRET}).raise_for_status()
        repo = env.home / "repo"
        repo.mkdir()
        assert env.cli("init", cwd=repo).returncode == 0
        yield env, server, repo
    finally:
        server.stop()


def _fleet(server: Server) -> dict:
    with server.api() as api:
        return api.get("/api/projects/main/fleets/mine").json()


def _instance_of(server: Server, run: str) -> str:
    with server.api() as api:
        return api.get(f"/api/projects/main/runs/{run}").json()["jobs"][0]["offer"]["instance_type"]


TASK = """\
type: task
name: {name}
commands:
  - {command}
resources:
  cpu: {cpu}
  memory: 1GB..
fleets: [mine]
"""


def test_ssh_fleet_detects_hosts_shares_them_and_cleans_up(hosts: tuple[list[VMHost], Path],
                                                          stack: tuple[Env, Server, Path],
                                                          page) -> None:  # noqa: ANN001
    vms, key = hosts
    env, server, repo = stack
    hosts_yaml = "\n".join(f"    - {vm.vm_ip}" for vm in vms)
    (repo / "fleet.dstack.yml").write_text(
        f"type: fleet\nname: mine\nssh_config:\n  user: ubuntu\n  identity_file: {key}\n  hosts:\n{hosts_yaml}\n")
    result = env.cli("apply", "-y", "-f", "fleet.dstack.yml", cwd=repo, timeout=300)
    out = result.stdout + result.stderr
    # The third host is reported with what to install; the apply says it failed.
    assert result.returncode == 1, out
    assert f"host {vms[2].vm_ip}: no container runtime: install Docker" in out.replace("\n", " "), out
    fleet = _fleet(server)
    by_host = {i["instance_type"]: i for i in fleet["instances"] if i["status"] != "terminated"}
    assert sorted(by_host) == sorted([vms[0].vm_ip, vms[1].vm_ip]), [
        (i["name"], i["status"], i["reason"]) for i in fleet["instances"]]
    for instance in by_host.values():  # detected over SSH by the agent's probe: this machine's CPUs and memory
        assert instance["status"] == "idle" and instance["backend"] == "ssh"
        assert instance["resources"]["cpus"] == os.cpu_count()
        assert instance["resources"]["memory_gb"] > 1
    # The private key never comes back.
    assert "PRIVATE KEY" not in str(fleet) and "ssh_key" not in str(fleet["spec"]["configuration"]["ssh_config"]).replace(
        "'ssh_key': None", "")
    listing = env.cli("fleet", cwd=repo).stdout
    assert vms[0].vm_ip in listing and "idle" in listing

    # A long run takes one CPU of a host; a second small one shares that host.
    (repo / ".dstack.yml").write_text(TASK.format(name="long", command="sleep 120", cpu=1))
    assert env.cli("apply", "-y", "-d", cwd=repo, timeout=120).returncode == 0
    with server.api() as api:
        wait_for(lambda: api.get("/api/projects/main/runs/long").json()["status"] == "running", 120,
                 message="the long run to start")
    first_host = _instance_of(server, "long")
    (repo / ".dstack.yml").write_text(TASK.format(
        name="small", command="echo token=$HF_TOKEN; echo ran-on-host; echo kept > /data/out.txt", cpu=1)
        + "volumes: ['/var/lib/dstack-agent/volume:/data']\n")
    result = env.cli("apply", "-y", cwd=repo, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ran-on-host" in result.stdout and "token=********" in result.stdout and SECRET not in result.stdout
    assert _instance_of(server, "small") == first_host
    host_vm = next(vm for vm in vms if vm.vm_ip == first_host)  # an instance volume: a directory of the host
    assert (host_vm.path("/var/lib/dstack-agent/volume/out.txt")).read_text() == "kept\n"
    # A run that needs both CPUs does not fit beside the long one: it goes to the other host.
    (repo / ".dstack.yml").write_text(TASK.format(name="big", command="echo big-run", cpu=os.cpu_count()))
    result = env.cli("apply", "-y", cwd=repo, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _instance_of(server, "big") != first_host
    assert env.cli("stop", "long", cwd=repo, timeout=90).returncode == 0

    # Deleting the fleet stops the agents and removes what was installed.
    wait_for(lambda: all(i["status"] in ("idle", "terminated") for i in _fleet(server)["instances"]), 60,
             message="the hosts to be idle")
    installed = [vm.path("/var/lib/dstack-agent") for vm in vms[:2]]
    assert all(len([p for p in d.iterdir() if p.name != "volume"]) == 1 for d in installed), "one agent a host"
    assert list(vms[2].path("/var/lib/dstack-agent").iterdir()) == []  # the refused host was cleaned at once
    # From the Fleets page: Delete, confirmed.
    login(page, server.url, env.token())
    page.goto(f"{server.url}/projects/main/fleets")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("button[data-delete-fleet=mine]").click()
    page.wait_for_load_state()
    wait_for(lambda: all([p.name for p in d.iterdir()] in ([], ["volume"]) for d in installed), 60,
             message="the hosts to be cleaned up (the instance volume stays)")
    assert _fleet_gone(env, repo)


def _fleet_gone(env: Env, repo: Path) -> bool:
    wait_for(lambda: env.cli("fleet", cwd=repo).stdout.startswith("No fleets"), 30, message="the fleet to end")
    return True
