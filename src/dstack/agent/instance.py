"""The agent of a fleet instance: it stays on the machine between jobs and runs each job the
server assigns to it, through the bucket like everything else.

    {instance}/machine.json     what the machine has (agent writes once)
    {instance}/host_keys.json   the machine's SSH host keys and default user (agent writes once)
    {instance}/heartbeat.json   last sign of life (agent writes)
    {instance}/jobs/{job}.json  a job assigned to it: {"id", "prefix"} (server writes, deletes when done)
    {instance}/shutdown.json    stop taking jobs and exit once they end (server writes)

Each job runs exactly as on an instance of its own (runner.JobRunner, its own prefix, status and
heartbeats), in a thread of this process; the instance outlives it.

Usage: python -m dstack.agent --storage URL --instance PREFIX --workdir DIR
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dstack.agent.machine import probe
from dstack.agent.runner import JobRunner
from dstack.agent.ssh import authorize_jump_keys, instance_host_keys
from dstack.storage import Storage

POLL_INTERVAL = 1.0


class InstanceAgent:
    def __init__(self, storage: Storage, prefix: str, workdir: Path) -> None:
        self.storage = storage
        self.prefix = prefix
        self.workdir = workdir
        self.runners: dict[str, JobRunner] = {}
        self.threads: dict[str, threading.Thread] = {}
        self._stop = threading.Event()
        self._beat = 0

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def log(self, message: str) -> None:
        print(f"dstack agent (instance): {message}", file=sys.stderr, flush=True)

    def run(self) -> int:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.put_json(self._key("machine.json"), {**probe(os.environ.get("DSTACK_CONTAINER_RUNTIME")),
                                                          "t": time.time()})
        self.storage.put_json(self._key("host_keys.json"), {
            "keys": instance_host_keys(), "ssh_user": os.environ.get("DSTACK_INSTANCE_SSH_USER") or None,
            "t": time.time()})
        self.log(f"waiting for jobs at {self.prefix}")
        failures = 0
        while not self._stop.is_set():
            try:
                self._turn()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the bucket may fail for a while: keep going
                failures += 1
                if failures in (1, 10, 100):
                    self.log(f"bucket call failed ({failures}x), retrying: {type(exc).__name__}: {exc}")
            self._stop.wait(POLL_INTERVAL if not failures else min(10.0, POLL_INTERVAL * 2 ** failures))
        for thread in self.threads.values():
            thread.join()
        return 0

    def _turn(self) -> None:
        self._beat += 1
        running = sorted(job_id for job_id, thread in self.threads.items() if thread.is_alive())
        self.storage.put_json(self._key("heartbeat.json"), {"seq": self._beat, "t": time.time(), "running": running})
        for key in self.storage.list(self._key("jobs/")):
            job_id = key.rsplit("/", 1)[-1].removesuffix(".json")
            if job_id in self.threads:
                continue  # started once (running, or done and not yet released)
            job = self.storage.get_json(key)
            if job is not None:
                self._start(job["id"], job["prefix"])
        if self.storage.get_json(self._key("shutdown.json")) is not None and not running:
            self.log("shutdown requested and no job runs: exiting")
            self._stop.set()

    def _start(self, job_id: str, prefix: str) -> None:
        runner = JobRunner(self.storage, prefix, self.workdir / "jobs" / job_id)
        runner.workdir.mkdir(parents=True, exist_ok=True)

        def run() -> None:
            spec: dict[str, Any] = self.storage.get_json(f"{prefix}/spec.json") or {}
            ssh = spec.get("ssh") or {}
            if ssh.get("listen") == "127.0.0.1":  # reached by jumping through this machine's sshd
                try:
                    authorize_jump_keys(list(ssh.get("keys") or []), int(ssh["port"]),
                                        os.environ.get("DSTACK_INSTANCE_SSH_USER"))
                except OSError as exc:
                    self.log(f"cannot authorize the keys of job {job_id}: {exc}")
            runner.run()

        self.runners[job_id] = runner
        self.threads[job_id] = threading.Thread(target=run, name=f"job-{job_id[:8]}", daemon=True)
        self.threads[job_id].start()
        self.log(f"started job {job_id}")

    def terminate(self) -> None:
        """SIGTERM: every job is stopped as if the server had asked, then the agent exits."""
        for runner in self.runners.values():
            runner.stop({"reason": "agent terminated"})
        self._stop.set()
