"""Jobs with `image`: pulled and run by the machine's container runtime (Docker or Podman, the same
command line), started by the agent. The container holds only the job: its code at /workflow and
the environment the job defines; no file of the agent, no access of the agent.

Standard library only, like the rest of the agent.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable


class PullError(Exception):
    """The image cannot be had: the registry's reason, in one line."""


@functools.cache
def find_runtime(preferred: str | None = None) -> str | None:
    """`docker` or `podman` that answers (a Docker client without a daemon does not count), the
    preferred one first; None if neither works here."""
    for name in [preferred] if preferred else ["docker", "podman"]:
        if name and shutil.which(name):
            try:
                if subprocess.run([name, "info", "--format", "{{.Host.Arch}}" if name == "podman" else "{{.ID}}"],
                                  capture_output=True, timeout=30).returncode == 0:
                    return name
            except (OSError, subprocess.SubprocessError):
                continue
    return None


@dataclass
class ContainerSpec:
    image: str
    name: str
    commands: list[str] = field(default_factory=list)
    entrypoint: str | None = None
    working_dir: str | None = None
    working_dir_set: bool = False  # the configuration named it (else an image without commands keeps its own)
    user: str | None = None
    privileged: bool = False
    shm_size: str | None = None
    gpus: list[str] | None = None
    # "host": the machine's network (the nodes of a multi-node task reach each other at their hosts'
    # addresses); otherwise the runtime's bridge.
    network: str | None = None
    registry_auth: dict[str, str] | None = None
    shell: str = "/bin/sh"
    # (host path, path in the container): the code, a cloned repo, `files`; parents first.
    mounts: list[tuple[str, str]] = field(default_factory=list)
    # Extra arguments of `run` that this machine's runtime needs (DSTACK_CONTAINER_RUN_ARGS).
    run_args: list[str] = field(default_factory=list)


class Runtime:
    def __init__(self, binary: str) -> None:
        self.binary = binary

    def pull(self, spec: ContainerSpec, event: Callable[[str], None]) -> None:
        """Pull unless present; a missing image or refused credentials raise PullError at once.
        With Docker's API at hand, `event` gets the progress: "pulling image X (1.2 GB, 40%)"."""
        if subprocess.run([self.binary, "image", "inspect", spec.image], capture_output=True).returncode == 0:
            event(f"image {spec.image} is cached")
            return
        event(f"pulling image {spec.image}")
        api = docker_socket() if os.path.basename(self.binary) == "docker" else None
        if api is not None:
            api_pull(api, spec.image, spec.registry_auth, event)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                args = self._pull_args(spec, tmp)
                result = subprocess.run(args, capture_output=True, text=True, timeout=3600)
            if result.returncode != 0:
                raise PullError(pull_failure(spec.image, result.stderr + result.stdout))
        size = self.image_size(spec.image)
        event(f"pulled image {spec.image}" + (f" ({human_size(size)})" if size else ""))

    def _pull_args(self, spec: ContainerSpec, tmp: str) -> list[str]:
        """Registry credentials through a 0600 file, never on the command line (which `ps` shows)."""
        if not spec.registry_auth:
            return [self.binary, "pull", spec.image]
        host = registry_host(spec.image)
        token = base64.b64encode(f"{spec.registry_auth['username']}:{spec.registry_auth['password']}".encode())
        config = os.path.join(tmp, "config.json")
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"auths": {host: {"auth": token.decode()}}}, f)
        # Docker reads a config directory; Podman an auth file (both in the same JSON format).
        if os.path.basename(self.binary) == "docker":
            return [self.binary, "--config", tmp, "pull", spec.image]
        return [self.binary, "pull", "--authfile", config, spec.image]

    def image_size(self, image: str) -> int | None:
        out = subprocess.run([self.binary, "image", "inspect", "--format", "{{.Size}}", image],
                             capture_output=True, text=True)
        return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else None

    def address(self, name: str) -> str | None:
        """The container's IP on the runtime's bridge network (None with host networking): where the
        job's ports are, for `dstack attach`'s forwards. `inspect` can fail while another call holds
        the runtime's lock (Podman): tried again for a few seconds before giving up."""
        error = ""
        for attempt in range(20):
            out = subprocess.run([self.binary, "inspect", "--format",
                                  "{{json .NetworkSettings}}", name], capture_output=True, text=True, timeout=30)
            if out.returncode == 0:
                try:
                    settings = json.loads(out.stdout or "{}") or {}
                except ValueError:
                    settings = {}
                networks = settings.get("Networks") or {}
                if not networks or set(networks) == {"host"}:  # host networking: the machine's own address
                    return None
                found = next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), None)
                if found:
                    return found
            error = (out.stderr or out.stdout).strip()[-200:]
            time.sleep(min(0.05 * 2 ** attempt, 0.5))
        raise RuntimeError(f"cannot find the container's address: {error or 'no address on its network'}")

    def run_command(self, spec: ContainerSpec, *, env_file: str) -> list[str]:
        """`run -d`: the container starts detached, its output is followed with `logs -f` and its exit
        code read with `inspect` (see `start`). A foreground `run` would tie the job to one API
        connection's `wait`, which some daemons (Podman's Docker API) never answer."""
        args = [self.binary, "run", "-d", "--name", spec.name, "--env-file", env_file, "--init", *spec.run_args]
        for host, target in spec.mounts:
            args += ["-v", f"{host}:{target}"]
        # With `commands`, the working directory is the job's (created if missing); without, the image's
        # own unless the configuration names one.
        if spec.working_dir and (spec.commands or spec.working_dir_set):
            args += ["-w", spec.working_dir]
        if spec.user:
            args += ["--user", spec.user]
        if spec.privileged:
            args.append("--privileged")
        if spec.network == "host":
            args += ["--network", "host"]
        if spec.shm_size:
            args += ["--shm-size", spec.shm_size]
        if spec.gpus:  # only the GPUs the job was given: by index, or "all" of the instance's
            if os.path.basename(self.binary) == "docker":
                args += ["--gpus", "all" if spec.gpus == ["all"] else "device=" + ",".join(spec.gpus)]
            else:  # Podman: the NVIDIA toolkit's CDI devices
                args += [a for g in spec.gpus for a in ("--device", f"nvidia.com/gpu={g}")]
        if spec.commands:
            script = "\n".join(spec.commands)
            args += ["--entrypoint", spec.entrypoint or spec.shell, spec.image, "-c", script]
        elif spec.entrypoint:
            args += ["--entrypoint", spec.entrypoint, spec.image]
        else:
            args.append(spec.image)  # the image's own entrypoint and cmd
        return args

    def start(self, spec: ContainerSpec, *, env_file: str) -> None:
        """Create and start the container; the runtime's reason, in one line, if it cannot."""
        result = subprocess.run(self.run_command(spec, env_file=env_file),
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            lines = [line for line in (result.stderr + result.stdout).strip().splitlines() if line.strip()]
            raise RuntimeError(f"cannot start the container: {lines[-1][:300] if lines else 'no reason given'}")

    def logs_command(self, name: str) -> list[str]:
        """Everything the container wrote, from its start, until it ends."""
        return [self.binary, "logs", "-f", name]

    def state(self, name: str) -> tuple[bool, int | None]:
        """(running, exit code). Asking also makes a daemon notice an exit it missed."""
        out = subprocess.run([self.binary, "inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", name],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            return False, None  # gone
        running, _, code = out.stdout.strip().partition(" ")
        return running == "true", int(code) if code.lstrip("-").isdigit() else None

    def stop(self, name: str, grace: float) -> None:
        subprocess.run([self.binary, "stop", "-t", str(max(0, int(grace))), name], capture_output=True, timeout=120)

    def copy_out(self, name: str, path: str, dest: str) -> bool:
        """Copy a path out of a (stopped) container: artifacts of a working directory that is the
        image's own, not one of dstack's mounts."""
        result = subprocess.run([self.binary, "cp", f"{name}:{path}", dest], capture_output=True, timeout=600)
        return result.returncode == 0

    def remove(self, name: str) -> None:
        subprocess.run([self.binary, "rm", "-f", name], capture_output=True, timeout=120)


def registry_host(image: str) -> str:
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def pull_failure(image: str, output: str) -> str:
    text = output.lower()
    # Words only: a bare "401" would match registry ports such as 127.0.0.1:40121.
    if any(s in text for s in ("unauthorized", "authentication required", "incorrect username or password",
                               "denied: requested access")):
        return f"registry refused credentials for {registry_host(image)} (check registry_auth)"
    if any(s in text for s in ("manifest unknown", "not found", "name unknown", "does not exist")):
        return f"image not found: {image}"
    lines = [line for line in output.strip().splitlines() if line.strip()]
    last = re.sub(r'^time="[^"]*" level=\w+ msg=', "", lines[-1]) if lines else "the runtime gave no reason"
    return f"cannot pull {image}: {last[:300]}"


def human_size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


def docker_socket() -> str | None:
    """The Docker daemon's unix socket, where the `docker` client would find it."""
    host = os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        return None
    path = host[len("unix://"):] if host else "/var/run/docker.sock"
    return path if os.path.exists(path) else None


@functools.cache
def _unix_connection() -> type:
    """An HTTP connection over the daemon's unix socket (http.client imported with the first one: most
    agents never talk to Docker's API)."""
    import http.client

    class UnixConnection(http.client.HTTPConnection):
        def __init__(self, path: str, timeout: float) -> None:
            super().__init__("localhost", timeout=timeout)
            self.socket_path = path

        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(self.timeout)
            self.sock.connect(self.socket_path)

    return UnixConnection


def split_reference(image: str) -> tuple[str, str]:
    """(repository, tag or digest) of an image reference; the tag defaults to `latest`."""
    if "@" in image:
        repo, digest = image.split("@", 1)
        return repo, digest
    name, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return name, tag
    return image, "latest"


def api_pull(path: str, image: str, auth: dict[str, str] | None, event: Callable[[str], None],
             *, every: float = 2.0) -> None:
    """Pull through Docker's API (`POST /images/create`), whose stream carries each layer's bytes:
    progress goes to `event` at most every `every` seconds; the registry's error raises PullError."""
    repo, tag = split_reference(image)
    headers = {}
    if auth:
        token = json.dumps({"username": auth["username"], "password": auth["password"],
                            "serveraddress": registry_host(image)})
        headers["X-Registry-Auth"] = base64.urlsafe_b64encode(token.encode()).decode()
    conn = _unix_connection()(path, timeout=600)
    try:
        conn.request("POST", "/images/create?" + urllib.parse.urlencode({"fromImage": repo, "tag": tag}),
                     headers=headers)
        response = conn.getresponse()
        if response.status != 200:
            body = response.read().decode(errors="replace")
            with contextlib.suppress(ValueError):
                body = json.loads(body).get("message", body)
            raise PullError(pull_failure(image, body))
        progress = PullProgress(image, tag, every=every)
        for raw in response:
            try:
                item = json.loads(raw)
            except ValueError:
                continue
            if item.get("error") or item.get("errorDetail"):
                raise PullError(pull_failure(image, item.get("error") or item["errorDetail"].get("message", "")))
            message = progress.feed(item)
            if message:
                event(message)
    except OSError as exc:
        raise PullError(f"cannot pull {image}: the container runtime did not answer ({exc})") from exc
    finally:
        conn.close()


class PullProgress:
    """Reads Docker's pull stream: Docker reports each layer's bytes ("Downloading" with
    progressDetail current/total), Podman's Docker API only each layer's start and end. Says
    "pulling image X (1.2 GB, 40%)" at most every `every` seconds, or "(2 of 5 layers)" as layers end."""

    DONE = ("Download complete", "Pull complete", "Already exists")

    def __init__(self, image: str, tag: str, *, every: float = 2.0) -> None:
        self.image, self.tag, self.every = image, tag, every
        self.layers: dict[str, list[int]] = {}  # id -> [bytes done, bytes total]
        self.finished: set[str] = set()
        self.last = time.monotonic()

    def feed(self, item: dict[str, Any]) -> str | None:
        layer, status, detail = item.get("id"), item.get("status", ""), item.get("progressDetail") or {}
        if not layer or layer == self.tag:
            return None
        entry = self.layers.setdefault(layer, [0, 0])
        if detail.get("total"):
            entry[1] = int(detail["total"])
        if status == "Downloading" and detail.get("current"):
            entry[0] = int(detail["current"])
        newly_done = status in self.DONE and layer not in self.finished
        if status in self.DONE:
            entry[0] = entry[1]
            self.finished.add(layer)
        total = sum(e[1] for e in self.layers.values())
        if total and time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            done = sum(e[0] for e in self.layers.values())
            return f"pulling image {self.image} ({human_size(total)}, {min(100, int(done * 100 / total))}%)"
        if not total and newly_done:
            return f"pulling image {self.image} ({len(self.finished)} of {len(self.layers)} layers)"
        return None


def machine_has_nvidia_gpus() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def env_file(env: dict[str, str], directory: str) -> str:
    """The job's environment in a 0600 file for `--env-file` (values are single lines there)."""
    fd, path = tempfile.mkstemp(prefix=".env-", dir=directory)
    with os.fdopen(fd, "w") as f:
        for key, value in env.items():
            f.write(f"{key}={value.replace(chr(10), ' ')}\n")
    return path


def spec_from(job: dict[str, Any], name: str, run_args: list[str], *, working_dir: str,
              mounts: list[tuple[str, str]]) -> ContainerSpec:
    return ContainerSpec(
        image=job["image"], name=name, commands=list(job.get("commands") or []), entrypoint=job.get("entrypoint"),
        working_dir=working_dir, working_dir_set=bool(job.get("working_dir_set")), user=job.get("user"),
        privileged=bool(job.get("privileged")), shm_size=job.get("shm_size"), gpus=job.get("gpus"),
        registry_auth=job.get("registry_auth"), shell=job.get("shell") or "/bin/sh", mounts=mounts,
        run_args=run_args, network=job.get("network"))
