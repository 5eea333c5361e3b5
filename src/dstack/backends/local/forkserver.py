"""The server's end of the agents' fork server (dstack/agent/forkserver.py): started on the first local
launch, it forks each job's agent from an interpreter that has already imported the agent, instead of
starting a new one per job. If it cannot start or answer, the agent is started as a new process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path


class ForkServerError(OSError):
    """The fork server could not start an agent."""


class ForkServer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None
        self._reader = None  # the channel's buffered reader
        self._env: dict[str, str] | None = None

    def spawn(self, argv: list[str], *, env: dict[str, str], log: Path, base_env: dict[str, str],
              server_dir: Path, server_log: Path) -> tuple[int, float]:
        """(pid, start time) of an agent forked with `argv`, `env` and its output appended to `log`.
        The fork server itself runs with `base_env` (the agents' environment less the job's own) and
        is restarted once if it has exited or does not answer."""
        request = json.dumps({"argv": argv, "env": env, "log": str(log)}).encode() + b"\n"
        with self._lock:
            for attempt in range(2):
                if self._proc is None or self._proc.poll() is not None or self._env != base_env:
                    self._start(base_env, server_dir, server_log)
                assert self._channel is not None and self._reader is not None
                try:
                    self._channel.sendall(request)
                    line = self._reader.readline()
                except OSError:
                    line = b""
                if line:
                    break
                self._stop()
                if attempt:
                    raise ForkServerError(f"the agents' fork server exited (see {server_log})")
        answer = json.loads(line)
        if "error" in answer:
            raise ForkServerError(f"the agents' fork server could not start an agent: {answer['error']}")
        return int(answer["pid"]), float(answer["create_time"])

    def _start(self, base_env: dict[str, str], server_dir: Path, server_log: Path) -> None:
        self._stop()
        ours, theirs = socket.socketpair()
        with theirs, open(server_log, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "dstack.agent.forkserver", str(server_dir)], stdin=theirs, stdout=log,
                stderr=subprocess.STDOUT, env=base_env, close_fds=True,
                # Not in the server's process group: a terminal's Ctrl-C is the server's to handle;
                # the fork server ends when its channel closes.
                start_new_session=True,
            )
        self._channel, self._reader, self._env = ours, ours.makefile("rb"), dict(base_env)

    def _stop(self) -> None:
        if self._channel is not None:
            self._reader.close()  # type: ignore[union-attr]
            self._channel.close()  # EOF: it exits
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = self._channel = self._reader = None


FORK_SERVER = ForkServer()
"""One per server process (launches come from worker threads; the lock orders them)."""
