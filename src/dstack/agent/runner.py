"""Runs one job: fetch spec and code, run the commands, stream logs, save artifacts, report status.

Usage (main.py): python -m dstack.agent --storage URL --job PREFIX --workdir DIR
       python -m dstack.agent --storage URL --instance PREFIX --workdir DIR   (a fleet instance: instance.py)
       python -m dstack.agent --probe                                        (what this machine has)
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dstack.agent import workspace
from dstack.agent.cloud import fetch_secrets, terminate_own_instance
from dstack.agent.container import PullError, Runtime, env_file, find_runtime, machine_has_nvidia_gpus
from dstack.agent.container import spec_from as container_spec
from dstack.agent.logs import LogWriter, bucket_sink, cloudwatch_sink
from dstack.agent.metadata_guard import GuardError, guard_metadata
from dstack.agent.metrics import Sampler
from dstack.agent.process import create_time, kill_tree
from dstack.agent.sandbox import JOB_HOME, SYSTEM_DIRS, Sandbox, host_job_env, host_python
from dstack.agent.sandbox import prepare as sandbox_prepare
from dstack.agent.ssh import SSHServer, instance_host_keys, start_job_sshd
from dstack.agent.volumes import unmount_all
from dstack.agent.workspace import REPO_CREDENTIALS, WORKFLOW_DIR, WorkspaceError
from dstack.storage import Storage
from dstack.storage.layout import artifact_key

# How long a node waits for the others' addresses (they are launched one after another).
NODES_TIMEOUT = 1800.0


class StoppedBeforeStart(Exception):
    """A stop request arrived before the job's process started."""


class JobRunner:
    def __init__(self, storage: Storage, prefix: str, workdir: Path) -> None:
        self.storage = storage
        self.prefix = prefix
        self.workdir = workdir
        self.spec: dict[str, Any] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.stop_request: dict[str, Any] | None = None
        self._done = threading.Event()
        self.container: tuple[Runtime, str] | None = None
        self.events: list[dict[str, Any]] = []
        self.log_events: int | None = None
        self.started_at: float | None = None  # when the job's process started
        self.last_output = time.monotonic()  # when the job's output last gave a line
        self.ssh: SSHServer | None = None
        self._beat = 0

    # --- bucket I/O -------------------------------------------------------------------------
    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def write_status(self, status: str, **extra: Any) -> None:
        """The job's state for the server, with the run's events so far (an image pull's progress):
        the server may read only some of the writes, so each carries the latest events. A final one
        says how many log lines were written, so readers know when they have them all."""
        if self.log_events is not None:
            extra = {"log_events": self.log_events, **extra}
        if self.started_at is not None:
            extra = {"started_at": self.started_at, **extra}
        self.storage.put_json(self._key("status.json"), {"status": status, "t": time.time(),
                                                         "events": self.events[-20:], **extra})

    def heartbeat(self) -> None:
        self._beat += 1
        self.storage.put_json(self._key("heartbeat.json"), {"seq": self._beat, "t": time.time()})

    def write_runner_info(self) -> None:
        info: dict[str, Any] = {
            "agent_pid": os.getpid(),
            "agent_create_time": create_time(os.getpid()),
            "hostname": socket.gethostname(),
        }
        if self.container is not None:
            info["container"] = {"runtime": self.container[0].binary, "name": self.container[1]}
        if self.proc is not None:
            info["job_pid"] = self.proc.pid
            info["job_create_time"] = create_time(self.proc.pid)
        self.storage.put_json(self._key("runner.json"), info)

    def publish_host_keys(self) -> None:
        """The instance's SSH host keys, through the bucket, so that the server and `dstack attach`
        pin them before their first connection instead of trusting whatever answers; with the
        image's default user, whose sshd is the jump host to the job's (see bootstrap.py)."""
        self.storage.put_json(self._key("host_keys.json"), {
            "keys": instance_host_keys(), "ssh_user": os.environ.get("DSTACK_INSTANCE_SSH_USER") or None,
            "t": time.time()})

    # --- lifecycle --------------------------------------------------------------------------
    def event(self, message: str) -> None:
        """The agent's own log (where the backend has a place for it: CloudWatch on AWS)."""
        print(f"dstack agent: {message}", file=sys.stderr, flush=True)
        target = self.spec.get("runner_logs")
        if target and target.get("type") == "cloudwatch":
            try:
                cloudwatch_sink(target["group"], target["stream"], target["region"])(
                    0, [{"t": time.time(), "m": message}])
            except Exception as exc:  # diagnostics must never fail the job
                print(f"dstack agent: cannot write the runner log: {exc}", file=sys.stderr)

    def run(self) -> int:
        self.write_runner_info()
        self.heartbeat()
        spec = self.storage.get_json(self._key("spec.json"))
        if not isinstance(spec, dict):
            self.write_status("failed", reason="job spec is missing from the bucket")
            return 1
        self.spec = spec
        if spec.get("publish_host_keys"):
            self.publish_host_keys()
        self.event(f"started on {socket.gethostname()} (pid {os.getpid()}, Python {platform.python_version()})")
        watcher = threading.Thread(target=self._watch, name="heartbeat", daemon=True)
        watcher.start()
        try:
            return self._run_job()
        except Exception as exc:  # the job must end with a status, whatever happened
            self.event(f"error: {exc!r}")
            self.write_status("failed", reason=f"agent error: {exc}")
            return 1
        finally:
            self._done.set()
            if self.ssh is not None:
                self.ssh.stop()
            self.event("finished")
            self.finish()
            workspace.clean(self.workdir)  # what the job left: its code, HOME, env file

    def _run_job(self) -> int:
        image = self.spec.get("image")
        secrets = self._secrets()
        # The clone's git credentials: for the agent only, never in the job's environment.
        reserved = [k for k in secrets if k.startswith(REPO_CREDENTIALS)]
        credentials = json.loads(secrets.pop(reserved[0])) if reserved else None
        for key in reserved[1:]:
            secrets.pop(key)
        sandbox = Sandbox.from_spec(self.spec.get("sandbox"))
        try:
            python = None if image else host_python(self.spec, self.workdir, sandbox)
        except RuntimeError as exc:
            self.write_status("failed", reason=str(exc))
            return 1
        if self.stop_request is not None:
            self.write_status("stopped")
            return 0
        if self.spec.get("nodes_pending") and not self._wait_for_nodes():
            return 0 if self.stop_request is not None else 1
        if self.spec.get("start_gate") and not self._wait_for("start.json", "the other nodes to start first"):
            return 0 if self.stop_request is not None else 1
        logs = LogWriter(self._log_sink(), secrets=list(secrets.values()))
        try:
            ws = self._workspace(image=image, sandbox=sandbox, credentials=credentials, logs=logs)
            cwd_job = ws.job_path(self.spec.get("working_dir") or WORKFLOW_DIR)
        except WorkspaceError as exc:
            logs.close()
            self.write_status("failed", reason=str(exc))
            return 1
        shell = self.spec.get("shell") or "/bin/bash"
        command = [shell, "-e", "-c", "\n".join(self.spec["commands"])]
        prepared = None
        cwd_host = ws.host_path(cwd_job)
        session_env: dict[str, str] = {}  # what an SSH session into the job gets (a container's: its own)
        if image and self.spec.get("network") == "host" and self.spec.get("metadata_guard"):
            try:
                guard_metadata()
            except GuardError as exc:
                logs.close()
                self.write_status("failed", reason=str(exc))
                return 1
        if image:
            try:
                popen_kwargs = self._container_command(ws, cwd_job, secrets, logs)
            except StoppedBeforeStart:
                logs.close()
                self.write_status("stopped")
                return 0
            except (RuntimeError, PullError) as exc:
                logs.close()
                self.write_status("failed", reason=str(exc))
                return 1
        elif sandbox is not None:
            env = session_env = {**host_job_env(self.spec, self.workdir, sandboxed=True, cwd=cwd_job), **secrets}
            prepared = sandbox_prepare(sandbox, command=command, env=env, workdir=self.workdir, cwd=cwd_job,
                                       python=python, mounts=ws.sorted_mounts(), keep_owner=frozenset(ws.keep_owner))
            popen_kwargs = prepared.popen_kwargs()
        else:
            if cwd_host is None:
                logs.close()
                self.write_status("failed", reason=f"working_dir: {cwd_job} needs `image` (or a machine that can "
                                                   "sandbox jobs): a bare host job runs under /workflow or ~")
                return 1
            cwd_host.mkdir(parents=True, exist_ok=True)
            env = session_env = {**host_job_env(self.spec, self.workdir, sandboxed=False, cwd=str(cwd_host)), **secrets}
            popen_kwargs = {"args": command, "cwd": cwd_host, "env": env}
        try:
            self.proc = subprocess.Popen(
                **popen_kwargs,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop kills the whole tree
            )
        finally:
            if prepared is not None:
                prepared.close()
        self.started_at = time.time()
        if self.spec.get("ssh"):
            self._start_ssh(self.spec["ssh"], sandbox=sandbox, cwd=cwd_job if cwd_host is None or image or sandbox
                            else str(cwd_host), env=session_env)
        self.write_runner_info()
        self.write_status("running")
        self.event(f"job running (pid {self.proc.pid})")
        assert self.proc.stdout is not None
        if self.container is not None:  # the log follower ends when the daemon notices the exit: ask it
            threading.Thread(target=self._poll_container, daemon=True).start()
        for raw in iter(self.proc.stdout.readline, b""):
            self.last_output = time.monotonic()
            logs.write(raw.decode("utf-8", "replace").rstrip("\r\n"))
        exit_code = self._container_exit_code(cwd_job if cwd_host is None else None) \
            if self.container is not None else self.proc.wait()
        logs.close()
        self.log_events = logs.written
        if logs.errors and logs.written < logs.total:
            self.event(f"{logs.total - logs.written} log lines could not be written: {logs.last_error}")
        if self.stop_request is None or not self.stop_request.get("abort"):
            artifacts_dir = cwd_host if cwd_host is not None else self.workdir / "copied-out"
            self._upload_artifacts(artifacts_dir)
        for failure in unmount_all(self.spec.get("network_volumes") or []):  # before the server detaches them
            self.event(f"could not unmount volume {failure}")
        if self.stop_request is not None:
            self.write_status("stopped", exit_code=exit_code)
        elif exit_code == 0:
            self.write_status("done", exit_code=0)
        else:
            self.write_status("failed", exit_code=exit_code, reason=f"exit code {exit_code}")
        return 0

    def _start_ssh(self, ssh: dict[str, Any], *, sandbox: Sandbox | None, cwd: str, env: dict[str, str]) -> None:
        """The job's sshd (see ssh.py), in the background: the job's logs do not wait for it. Its
        address and host key go to the bucket once it listens."""
        def start() -> None:
            container = (self.container[0], self.container[1]) if self.container is not None else None
            try:
                server, published = start_job_sshd(
                    self.workdir, ssh, container=container, sandbox=sandbox,
                    job_pid=self.proc.pid if self.proc is not None else None, cwd=cwd,
                    shell=self.spec.get("shell") or "/bin/sh", user=self.spec.get("user"), env=env)
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # the job runs on without SSH
                self.event(f"cannot start sshd for the job: {exc}")
                return
            self.ssh = server
            if self._done.is_set():  # the job ended meanwhile
                server.stop()
                return
            self.storage.put_json(self._key("ssh.json"), {**published, "t": time.time()})

        threading.Thread(target=start, name="sshd", daemon=True).start()

    def _wait_for_nodes(self) -> bool:
        """A multi-node task's node launched before the others: their addresses come in nodes.json
        (the server writes it once every node has an instance). False: stopped, or never came."""
        nodes = self._wait_for("nodes.json", "the other nodes' addresses")
        if nodes is None:
            return False
        self.spec["env"] = {**(self.spec.get("env") or {}), **nodes["env"]}
        if nodes.get("mpi_hostfile"):
            self.spec["mpi_hostfile"] = nodes["mpi_hostfile"]
        return True

    def _wait_for(self, name: str, what: str) -> dict[str, Any] | None:
        """An object the server writes in the job's prefix when the job may go on (a multi-node
        task's: the nodes' addresses, its `startup_order`); None: stopped, or it never came."""
        self.event(f"waiting for {what}")
        deadline = time.monotonic() + NODES_TIMEOUT
        while time.monotonic() < deadline:
            if self.stop_request is not None:
                self.write_status("stopped")
                return None
            found = self.storage.get_json(self._key(name))
            if isinstance(found, dict):
                return found
            time.sleep(1.0)
        self.write_status("failed", reason=f"waited {NODES_TIMEOUT:.0f} s for {what} in vain")
        return None

    def _workspace(self, *, image: str | None, sandbox: Sandbox | None, credentials: dict[str, str] | None,
                   logs: LogWriter) -> workspace.Workspace:
        """The code (or the cloned repo) and the `files`, and where the job sees them."""
        if image:
            user = str(self.spec.get("user") or "root").split(":")[0]
            home, home_host = ("/root" if user in ("root", "0") else None), None
        elif sandbox is not None:
            home, home_host = JOB_HOME, self.workdir / "home"
        else:  # a bare host job: its HOME is a directory of its own on this machine
            home_host = self.workdir / "home"
            home = str(home_host)

        def event(message: str) -> None:
            logs.write(f"dstack: {message}")
            self.events.append({"t": time.time(), "message": message})

        return workspace.prepare(self.spec, workdir=self.workdir, home=home, home_host=home_host,
                                 bare_host=not image and sandbox is None, fetch=self.storage.get,
                                 unpack=workspace.unpack,
                                 credentials=credentials, event=event,
                                 read_only=tuple(f"/{d}" for d in SYSTEM_DIRS) if sandbox is not None else ())

    def _secrets(self) -> dict[str, str]:
        """Project secrets: from a file the launcher left (read once) or the cloud's secret store."""
        secrets: dict[str, str] = {}
        secrets_file = os.environ.get("DSTACK_AGENT_SECRETS_FILE")
        if secrets_file and os.path.exists(secrets_file):
            with open(secrets_file) as f:
                secrets.update(json.load(f))
            os.unlink(secrets_file)  # read once; nothing left on disk
        source = self.spec.get("secrets_source")
        if source and source.get("type") == "server":  # an SSH fleet host: through the server's tunnel
            secrets.update(self.storage.job_secrets(self.prefix.rsplit("/", 1)[-1]))  # type: ignore[attr-defined]
        elif source:
            secrets.update(fetch_secrets(source))
        return secrets

    def _log_sink(self):  # noqa: ANN202
        logs = self.spec.get("logs") or {"type": "bucket"}
        if logs["type"] == "cloudwatch":
            return cloudwatch_sink(logs["group"], logs["stream"], logs["region"])
        return bucket_sink(self.storage, self.prefix)

    def finish(self) -> None:
        """Tear down our own instance where the backend asks for it, so a dead server leaks no cost."""
        terminate = self.spec.get("terminate")
        if terminate:
            info = self.storage.get_json(self._key("instance.json")) or {}
            if info.get("instance_id"):
                terminate_own_instance(terminate, info["instance_id"])

    def _container_command(self, ws: workspace.Workspace, cwd: str, secrets: dict[str, str],
                           logs: LogWriter) -> dict[str, Any]:
        """Pull the image (progress as `dstack:` lines of the job's log) and build its `run` command."""
        # The local backend's server has probed its runtime already (same machine): no second probe.
        named = self.spec.get("container_runtime")
        binary = named if named and shutil.which(named) else find_runtime()
        if binary is None:
            raise RuntimeError("`image` needs Docker or Podman on this machine and neither is installed")
        runtime = Runtime(binary)
        # Extra `run` arguments this machine's runtime needs: from the backend, else the instance's setting.
        run_args = self.spec.get("container_run_args") or shlex.split(os.environ.get("DSTACK_CONTAINER_RUN_ARGS", ""))
        spec = container_spec(self.spec, f"dstack-{self.prefix.rsplit('/', 1)[-1]}", list(run_args),
                              working_dir=cwd, mounts=ws.sorted_mounts())
        if spec.gpus and not machine_has_nvidia_gpus():
            logs.write("dstack: this machine has no NVIDIA GPU device: the container gets none")
            spec.gpus = None

        def pulling(message: str) -> None:  # in the job's log, and the run's events (through the status)
            logs.write(f"dstack: {message}")
            self.events.append({"t": time.time(), "message": message})
            self.write_status("pulling")

        runtime.pull(spec, pulling)
        if self.stop_request is not None:  # stopped while pulling: nothing to start
            raise StoppedBeforeStart
        # Exactly the job's variables: the image brings its own PATH and HOME.
        env = {k: v for k, v in (self.spec.get("env") or {}).items() if v is not None}
        env.update({"PYTHONUNBUFFERED": "1", **secrets})
        self.container = (runtime, spec.name)
        env_path = env_file(env, str(self.workdir))
        try:
            runtime.remove(spec.name)  # a container of an earlier attempt of this agent
            runtime.start(spec, env_file=env_path)
        finally:
            os.unlink(env_path)  # read by the runtime's client: the secrets stay on disk no longer
        return {"args": runtime.logs_command(spec.name)}

    def _container_exit_code(self, copy_out: str | None) -> int:
        """Once the container stops: its exit code (the log follower's ends with it), then remove it.
        A working directory of the image's own (not a dstack mount) is copied out first, for artifacts."""
        assert self.container is not None and self.proc is not None
        runtime, name = self.container
        running, code = runtime.state(name)
        while running:
            time.sleep(0.5)
            running, code = runtime.state(name)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if copy_out and self.spec.get("artifacts"):
            runtime.copy_out(name, copy_out.rstrip("/") + "/.", str(self.workdir / "copied-out"))
        runtime.remove(name)
        return code if code is not None else 137

    def _poll_container(self) -> None:
        assert self.container is not None and self.proc is not None
        runtime, name = self.container
        while self.proc.poll() is None and runtime.state(name)[0]:
            time.sleep(1.0)
        # The container stopped: its follower ends once it has passed on the rest of the output.
        # Only a follower that stays silent (a daemon that missed the exit) is stopped; one that is
        # still delivering lines is left to finish, however long the rest takes to read.
        stopped_at = time.monotonic()
        while self.proc.poll() is None:
            if time.monotonic() - max(self.last_output, stopped_at) > 10:
                self.proc.terminate()
                return
            time.sleep(0.5)

    def _upload_artifacts(self, cwd: Path) -> None:
        for rel in self.spec.get("artifacts") or []:
            source = cwd / rel
            paths = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
            for path in paths:
                self.storage.put_file(artifact_key(self.prefix, path.relative_to(cwd).as_posix()), str(path))

    def _watch(self) -> None:
        """Heartbeats, and stop requests from the server, until the job ends. Every call is remote: a
        failed one (network, throttling, a 5xx) is tried again on the next turn and never ends the
        loop, or the server would declare a healthy instance lost."""
        interval = float(self.spec.get("heartbeat_interval", 2.0))
        metrics_interval = float(self.spec.get("metrics_interval", 10.0))
        sampler = Sampler(min_gpu_utilization=self.spec.get("utilization_floor"))
        next_beat = time.monotonic() + interval
        next_sample = time.monotonic() + min(metrics_interval, 1.0)
        failures = 0
        while not self._done.wait(0.25 if not failures else min(5.0, 0.25 * 2 ** failures)):
            try:
                if time.monotonic() >= next_beat:
                    self.heartbeat()
                    next_beat = time.monotonic() + interval
                if time.monotonic() >= next_sample:
                    next_sample = time.monotonic() + metrics_interval
                    report = sampler.sample()
                    if self.ssh is not None:  # for `inactivity_duration`
                        report["ssh_inactive_for"] = self.ssh.inactive_for()
                    self.storage.put_json(self._key("metrics.json"), report)
                if self.stop_request is None:
                    request = self.storage.get_json(self._key("stop.json"))
                    if request is not None:
                        self.stop(request)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - transient: the next turn tries again
                failures += 1
                if failures in (1, 10, 100):
                    self.event(f"bucket call failed ({failures}x), retrying: {type(exc).__name__}: {exc}")

    def stop(self, request: dict[str, Any]) -> None:
        self.stop_request = request
        if self.proc is not None and self.proc.poll() is None:
            grace = 0.0 if request.get("abort") else float(self.spec.get("stop_grace", 10))
            if self.container is not None:  # the runtime's stop: SIGTERM to the container, SIGKILL after grace
                runtime, name = self.container
                threading.Thread(target=runtime.stop, args=(name, grace), daemon=True).start()
            else:
                threading.Thread(target=kill_tree, args=(self.proc.pid,), kwargs={"grace": grace}, daemon=True).start()

