from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.browser import browser, page  # noqa: F401 - real Chromium, one per session, for any test
from tests.harness import Env, Server, need


def _kill_strays(marker: str) -> None:
    """Kill every process whose environment or command line mentions this test's HOME, and remove
    the containers of the local jobs whose agents those were (a failed test leaves its runs going)."""
    containers = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if any(marker in part for part in cmdline) or proc.environ().get("HOME") == marker:
                if "--job" in cmdline[:-1]:
                    containers.append("dstack-" + cmdline[cmdline.index("--job") + 1].rsplit("/", 1)[-1])
                elif proc.name() == "dstack-agent":  # forked by the fork server: its output is its job's
                    containers.append("dstack-" + Path(os.readlink(f"/proc/{proc.pid}/fd/1")).parent.name)
                proc.kill()
        except psutil.Error:
            pass
    if containers and shutil.which("podman"):
        subprocess.run(["podman", "rm", "-f", "--ignore", *containers], capture_output=True, timeout=120)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    home = tmp_path / "home"
    home.mkdir()
    environment = Env(home=home)
    yield environment
    _kill_strays(str(home))


@pytest.fixture
def server(env: Env) -> Iterator[Server]:
    srv = Server(env).start()
    yield srv
    srv.stop()


@pytest.fixture
def repo(env: Env, server: Server) -> Path:
    """A directory initialized as a dstack repo (not a git repo)."""
    path = env.home / "repo"
    path.mkdir()
    result = env.cli("init", cwd=path)
    assert result.returncode == 0, result.stderr
    return path


def postgres_available() -> bool:
    try:
        return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the local PostgreSQL, dropped afterwards."""
    need(postgres_available(), "PostgreSQL is not running at 127.0.0.1:5432")
    import asyncio

    import asyncpg

    name = f"dstack_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def moto_server() -> Iterator:
    from tests.aws_harness import MotoAWS

    aws = MotoAWS()
    yield aws
    aws.stop()


@pytest.fixture
def aws(moto_server):  # noqa: ANN001, ANN201
    """A clean moto for each test, enforcement off."""
    moto_server.reset()
    yield moto_server
    moto_server.reset()


@pytest.fixture
def lambda_fake(monkeypatch) -> Iterator:  # noqa: ANN001
    from tests.lambda_fake import FakeLambda

    monkeypatch.setenv("DSTACK_LAMBDA_RATE_SCALE", "0.02")
    fake = FakeLambda(api_keys={"good-key"}, time_scale=0.02)
    yield fake
    fake.stop()
