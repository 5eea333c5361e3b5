"""Test harness: real `dstack server` processes, the real CLI, and requirement checks.

`need(condition, reason)` skips a test on a machine that lacks something (root, PostgreSQL…),
and fails it instead when CI=true, so CI can never silently skip what it must run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, reason: str) -> None:
    if condition:
        return
    if IN_CI:
        import pytest  # here: the benchmarks use this module without the test extras

        pytest.fail(f"CI=true but this test's requirement is missing: {reason}")
    import pytest

    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.1, message: str = "condition",  # noqa: ANN001, ANN201
             diagnostics=None):  # noqa: ANN001 - a callable whose text explains a timeout
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{diagnostics()}" if diagnostics is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{extra}")
        time.sleep(interval)


@dataclass
class Env:
    """A user's machine: a HOME with ~/.dstack, and the server's state under it."""

    home: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def vars(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSTACK_")}
        env.update({"HOME": str(self.home), "PYTHONUNBUFFERED": "1", "COLUMNS": "200",
                    # The server's workers poll more often than the default 1 s: the same code paths,
                    # less waiting (a test that needs another pace sets it in `extra`).
                    "DSTACK_WORKER_INTERVAL": "0.3"})
        env.update(self.extra)
        return env

    @property
    def server_dir(self) -> Path:
        return Path(self.extra.get("DSTACK_SERVER_DIR", self.home / ".dstack" / "server"))

    def cli(self, *args: str, cwd: Path | None = None, timeout: float = 120, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dstack.cli.main", *args], cwd=cwd or self.home,
                              env=self.vars, capture_output=True, text=True, timeout=timeout, input=input)

    def popen_cli(self, *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
        """The CLI in the background (several at once), output captured."""
        return subprocess.Popen([sys.executable, "-m", "dstack.cli.main", *args], cwd=cwd or self.home,
                                env=self.vars, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def token(self) -> str:
        config = yaml.safe_load((self.home / ".dstack" / "config.yml").read_text())
        return config["projects"][0]["token"]


class Server:
    def __init__(self, env: Env, port: int | None = None) -> None:
        self.env = env
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.log = env.home / f"server-{self.port}.log"

    def start(self, timeout: float = 60) -> Server:
        log = open(self.log, "a")  # noqa: SIM115 - the child writes to it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dstack.cli.main", "server", "--port", str(self.port), "--log-level", "info"],
            env=self.env.vars, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=self.env.home,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server did not start:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def api(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.env.token()}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def run_logs(api: httpx.Client, run: str, project: str = "main") -> str:
    """Every log line of a finished run, through the API (all pages)."""
    lines, token = [], None
    while True:
        page = api.get(f"/api/projects/{project}/runs/{run}/logs", params={"next_token": token} if token else {}).json()
        lines += [e["message"] for e in page["events"]]
        token = page["next_token"]
        if page["finished"]:
            return "\n".join(lines)


@contextmanager
def server_with_repo(env: Env, database_url: str) -> Iterator[tuple[Server, Path]]:
    """A server of `env` on `database_url` (PostgreSQL), and a repo initialized against it."""
    env.extra["DSTACK_DATABASE_URL"] = database_url
    server = Server(env).start()
    try:
        repo = env.home / "repo"
        repo.mkdir()
        assert env.cli("init", cwd=repo).returncode == 0
        yield server, repo
    finally:
        server.stop()
