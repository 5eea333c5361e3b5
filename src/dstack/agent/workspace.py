"""The job's files on the instance: its code (or a cloned repo) and the `files` entries, and where
each appears to the job.

A container or a sandboxed job sees them through bind mounts (host path -> job path); a bare host
job (an admin's, where the machine cannot isolate jobs) only has /workflow (its code directory) and
its HOME, so its `files` must land under one of them.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import posixpath
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Callable

from dstack.agent.volumes import VolumeError, mount_all

WORKFLOW_DIR = "/workflow"
REPO_CREDENTIALS = "__dstack_repo_credentials"  # the reserved secret name the clone's credentials travel as


class WorkspaceError(Exception):
    """The job cannot start: a repo that cannot be cloned, a file with nowhere to go."""


class Workspace:
    def __init__(self, workdir: Path, *, home: str | None, bare_host: bool) -> None:
        self.workdir = workdir
        self.home = home  # the job's HOME as the job sees it (None: unknown, `~` targets refused)
        self.bare_host = bare_host
        self.code_dir = workdir / "repo"
        self.mounts: list[tuple[str, str]] = []  # (host path, job path)
        # Mounts that are the machine's own directories (instance volumes): never chowned to the job.
        self.keep_owner: set[str] = set()
        self.read_only: tuple[str, ...] = ()

    def job_path(self, target: str) -> str:
        if target == "~" or target.startswith("~/"):
            if self.home is None:
                raise WorkspaceError(f"{target}: the container runs as another user, whose home is unknown "
                                     "here; give an absolute path")
            return posixpath.normpath(self.home + target[1:])
        return posixpath.normpath(target)

    def host_path(self, target: str) -> Path | None:
        """Where a job path lies on this machine, if it is inside one of the mounts."""
        path = self.job_path(target)
        best: tuple[str, str] | None = None
        for host, job in self.mounts:
            if (path == job or path.startswith(job.rstrip("/") + "/")) and (best is None or len(job) > len(best[1])):
                best = (host, job)
        if best is None:
            return None
        rel = posixpath.relpath(path, best[1])
        return Path(best[0]) if rel == "." else Path(best[0]) / rel

    def sorted_mounts(self) -> list[tuple[str, str]]:
        """Parents before children, as bind mounts must be made."""
        return sorted(self.mounts, key=lambda m: (m[1].count("/"), m[1]))


def prepare(spec: dict[str, Any], *, workdir: Path, home: str | None, home_host: Path | None, bare_host: bool,
            fetch: Callable[[str], bytes | None], unpack: Callable[[bytes, Path], None],
            credentials: dict[str, str] | None, event: Callable[[str], None],
            read_only: tuple[str, ...] = ()) -> Workspace:
    """`read_only`: the job's system directories, where nothing can be placed (the sandbox's)."""
    ws = Workspace(workdir, home=home, bare_host=bare_host)
    ws.read_only = read_only
    if ws.code_dir.exists():
        shutil.rmtree(ws.code_dir)
    ws.code_dir.mkdir(parents=True)
    code_key = spec.get("code_key")
    if code_key:
        data = fetch(code_key)
        if data is None:
            raise WorkspaceError(f"code archive {code_key} is missing from the bucket")
        unpack(data, ws.code_dir)
    clone = spec.get("repo_clone")
    if clone:
        clone_repo(clone, ws.code_dir, credentials=credentials, event=event)
    code_target = posixpath.normpath(spec.get("code_target") or WORKFLOW_DIR)
    if bare_host and code_target != WORKFLOW_DIR:
        raise WorkspaceError(f"repos: the path {code_target} needs `image` (or a machine that can sandbox jobs): "
                             "this job runs directly on the host, where only /workflow is its own")
    ws.mounts.append((str(ws.code_dir), code_target))
    if code_target != WORKFLOW_DIR:  # the default working directory still exists, empty
        (workdir / "workflow").mkdir(exist_ok=True)
        ws.mounts.append((str(workdir / "workflow"), WORKFLOW_DIR))
    if home_host is not None and home is not None:  # the job's own HOME (host jobs): `~` files land in it
        home_host.mkdir(exist_ok=True)
        ws.mounts.append((str(home_host), home))
    _place_files(spec, ws, fetch=fetch, unpack=unpack)
    _mount_instance_volumes(spec, ws)
    _mount_network_volumes(spec, ws, event)
    hostfile = spec.get("mpi_hostfile")
    if hostfile:  # a multi-node task's nodes, as MPI reads them (DSTACK_MPI_HOSTFILE)
        (workdir / "mpi").mkdir(exist_ok=True)
        (workdir / "mpi" / "hostfile").write_text(hostfile["content"])
        os.chmod(workdir / "mpi", 0o755)
        ws.mounts.append((str(workdir / "mpi"), posixpath.dirname(hostfile["path"])))
    return ws


def _place_files(spec: dict[str, Any], ws: Workspace, *, fetch: Callable[[str], bytes | None],
                 unpack: Callable[[bytes, Path], None]) -> None:
    entries = spec.get("files") or []
    if not entries:
        return
    data = fetch(spec["files_key"])
    if data is None:
        raise WorkspaceError(f"files archive {spec['files_key']} is missing from the bucket")
    files_dir = ws.workdir / "files"
    if files_dir.exists():
        shutil.rmtree(files_dir)
    files_dir.mkdir()
    os.chmod(files_dir, 0o711)  # traversable by the job's user, who owns the entries bound from it
    unpack(data, files_dir)
    for index, entry in enumerate(entries):
        source = files_dir / str(index)
        target = ws.job_path(entry["path"])
        inside = ws.host_path(target)
        if inside is not None:  # under the code or another mount: copy it there
            inside.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, inside, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(source, inside)
        elif ws.bare_host:
            raise WorkspaceError(f"files: {entry['path']} needs `image` (or a machine that can sandbox jobs): "
                                 "this job runs directly on the host, where only /workflow and ~ are its own")
        elif any(target == d or target.startswith(d + "/") for d in ws.read_only):
            raise WorkspaceError(f"files: {entry['path']} is in one of this machine's system directories, which a "
                                 f"job without `image` sees read-only ({', '.join(ws.read_only)}); choose "
                                 "another path, or use `image`")
        else:
            ws.mounts.append((str(source), target))


def _mount_instance_volumes(spec: dict[str, Any], ws: Workspace) -> None:
    """`volumes: [/instance/path:/path]`: a directory of this machine in the job, kept between runs
    (created when missing; an `optional` one that cannot be is skipped)."""
    for volume in spec.get("instance_volumes") or []:
        source, target = volume["instance_path"], volume["path"]
        if ws.bare_host:
            raise WorkspaceError(f"volumes: {source}:{target} needs `image` (or a machine that can sandbox jobs): "
                                 "this job runs directly on the host")
        try:
            if not os.path.isdir(source):
                os.makedirs(source)
                os.chmod(source, 0o1777)  # whichever user the job runs as may write (a sandbox's: nobody)
        except OSError as exc:
            if volume.get("optional"):
                continue
            raise WorkspaceError(f"volumes: cannot create {source} on this machine: {exc.strerror}") from None
        ws.mounts.append((source, target))
        ws.keep_owner.add(source)


def _mount_network_volumes(spec: dict[str, Any], ws: Workspace, event: Callable[[str], None]) -> None:
    volumes = spec.get("network_volumes") or []
    if not volumes:
        return
    if ws.bare_host:
        raise WorkspaceError("volumes: network volumes need `image` (the job runs in a container)")
    try:
        for host, job in mount_all(volumes, event=event):
            ws.mounts.append((host, job))
            ws.keep_owner.add(host)  # the volume's files keep their owners
    except VolumeError as exc:
        raise WorkspaceError(str(exc)) from None


def clone_repo(clone: dict[str, Any], dest: Path, *, credentials: dict[str, str] | None,
               event: Callable[[str], None]) -> None:
    """`git clone` the run's repo URL (branch, single branch, then the commit asked for)."""
    git = shutil.which("git")
    if git is None:
        raise WorkspaceError("repos: git is not installed on this machine, so the repo cannot be cloned")
    url = clone["url"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(dest.parent),
           "GIT_TERMINAL_PROMPT": "0", "LANG": "C.UTF-8"}
    key_file = None
    try:
        if credentials and credentials.get("token") and url.startswith(("http://", "https://")):
            # In git's config from the environment: never in argv (which `ps` shows) or the URL.
            basic = base64.b64encode(f"{credentials.get('username') or 'oauth2'}:{credentials['token']}".encode())
            env.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic.decode()}"})
        elif credentials and credentials.get("private_key"):
            fd, key_file = tempfile.mkstemp(prefix=".git-identity-", dir=str(dest.parent))
            with os.fdopen(fd, "w") as f:
                f.write(credentials["private_key"].rstrip("\n") + "\n")
            known = os.path.join(str(dest.parent), ".git-known-hosts")
            with open(known, "w") as f:  # the host keys the user pinned when registering the identity
                f.write("\n".join(credentials.get("known_hosts") or []) + "\n")
            env["GIT_SSH_COMMAND"] = (f"ssh -i {key_file} -o IdentitiesOnly=yes -o BatchMode=yes "
                                      f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes")
        args = [git, "clone", "--quiet"]
        if clone.get("branch"):
            args += ["--branch", clone["branch"]]
        if clone.get("single_branch"):
            args.append("--single-branch")
        event(f"cloning {url}" + (f" ({clone['branch']})" if clone.get("branch") else ""))
        result = subprocess.run([*args, "--", url, str(dest)], env=env, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise WorkspaceError(f"repos: cannot clone {url}: {_last_line(result.stderr)}")
        if clone.get("hash"):
            result = subprocess.run([git, "-C", str(dest), "checkout", "--quiet", clone["hash"]], env=env,
                                    capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                raise WorkspaceError(f"repos: cannot check out {clone['hash']}: {_last_line(result.stderr)}")
    finally:
        if key_file:
            os.unlink(key_file)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no reason given"


def unpack(data: bytes, target: Path) -> None:
    """A code archive (tar.gz) into `target`; no entry may land outside it or be a link or device."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        try:
            tar.extractall(target, filter="data")
        except TypeError:  # Python < 3.9.17 (e.g. Debian bullseye's 3.9.2): no filters; check by hand
            root = target.resolve()
            for member in tar.getmembers():
                dest = (target / member.name).resolve()
                if not (member.isfile() or member.isdir()) or (dest != root and root not in dest.parents):
                    raise RuntimeError(f"the code archive holds an unsafe entry: {member.name}") from None
            tar.extractall(target)


# What a job's working directory keeps after its agent cleaned it (`clean`): the agent's own log, and
# what the local backend reads until the job's instance is terminated (the agent's end, the job's
# sshd's pid file).
WORKDIR_KEPT = frozenset({"agent.log", "exited", "ssh"})


def clean(workdir: Path) -> None:
    """What the job left in its working directory (its code, HOME, container env file), removed by
    the agent as it ends: nobody needs it any more; on a fleet instance nobody else would remove it,
    and on the local backend the server would, in its own process. What the machine's backend reads
    until the server has seen the end (WORKDIR_KEPT) stays; the server removes it with the directory.
    Links are removed, never followed."""
    try:
        entries = list(os.scandir(workdir))
    except OSError:
        return
    for entry in entries:
        if entry.name in WORKDIR_KEPT:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
