"""How a host job (the local backend, no `image`) is kept away from the machine it runs on.

The job runs under bubblewrap (`bwrap`) in its own user, PID, IPC, UTS and mount namespaces:
- a root of its own (tmpfs) with only the system's directories bound read-only (SYSTEM_DIRS): no
  /root, /home, /var, /srv or /mnt, so neither the server's state nor anybody's HOME; /tmp and /run
  empty; the server's paths hidden even where they lie inside a system directory;
- its own code at /workflow (read-write), a HOME of its own at /home/dstack, and the Python it
  asked for (bound back read-only where it lives outside the system directories, e.g. pyenv);
- only its own processes in /proc, so no other environment or PID can be read or signalled;
- as an unprivileged user (`nobody`) when the server runs as root, with no capabilities;
- an environment that is exactly the job's: the variables are handed to bwrap through a file
  descriptor, never through argv (which every local user can read) or one huge env string.

Network is shared with the host: a job can reach what any local program can (see docs/server.md).
"""

from __future__ import annotations

import functools
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

WORKFLOW_DIR = "/workflow"
JOB_HOME = "/home/dstack"
SHIM_DIR = "/run/dstack/bin"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What a sandboxed job sees of the host (read-only); everything else is absent.
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "opt", "sys")
DEFAULT_USER = "nobody"


@dataclass
class Sandbox:
    """What one job's sandbox shows: paths to hide and the user to run as (root servers only)."""

    hide: list[str] = field(default_factory=list)
    user: str = DEFAULT_USER

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> Sandbox | None:
        if not spec or spec.get("type") != "bwrap":
            return None
        return cls(hide=list(spec.get("hide") or []), user=str(spec.get("user") or DEFAULT_USER))

    def uid_gid(self) -> tuple[int, int] | None:
        """The unprivileged user to switch to; None when the server is not root (it runs as itself)."""
        if os.geteuid() != 0:
            return None
        entry = pwd.getpwnam(self.user)
        return entry.pw_uid, entry.pw_gid


@dataclass
class Prepared:
    argv: list[str]
    cwd: str
    env: dict[str, str]
    pass_fds: tuple[int, ...]
    user: int | None
    group: int | None
    _files: list[IO[bytes]]

    def popen_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"args": self.argv, "cwd": self.cwd, "env": self.env, "pass_fds": self.pass_fds}
        if self.user is not None:
            kwargs.update(user=self.user, group=self.group, extra_groups=[])
        return kwargs

    def close(self) -> None:
        for f in self._files:
            f.close()


def _gpu_devices() -> list[str]:
    """/dev/nvidia* and /dev/dri (read with a listing, not a glob: no pattern compiled per job)."""
    try:
        names = os.listdir("/dev")
    except OSError:
        return []
    return [f"/dev/{name}" for name in sorted(names) if name.startswith("nvidia")] + \
        (["/dev/dri"] if "dri" in names else [])


def prepare(sandbox: Sandbox, *, command: list[str], env: dict[str, str], workdir: Path, cwd: str,
            python: PythonInstall | None, mounts: list[tuple[str, str]], keep_owner: frozenset[str] = frozenset()
            ) -> Prepared:
    """The bwrap command that runs `command` with exactly `env`, in `cwd` (a path in the sandbox), with
    `mounts` (host path, sandbox path: the code at /workflow, HOME, a repo, `files`) bound read-write."""
    ids = sandbox.uid_gid()
    for name in ("home", "bin"):
        (workdir / name).mkdir(exist_ok=True)
        if ids is not None:
            _chown_tree(workdir / name, *ids)
    if ids is not None:
        for host, _ in mounts:
            if host not in keep_owner:  # the job's own files; a machine's directory keeps its owner
                _chown_tree(Path(host), *ids)
    # The root is bwrap's own tmpfs with the system's top-level directories bound read-only onto it
    # (not /root, /home, /var, /mnt, /media, /srv, /boot, /tmp, /run: nothing of anybody's data).
    args: list[str] = []
    for entry in sorted(os.listdir("/")):
        path = f"/{entry}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif entry in SYSTEM_DIRS and os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/run", "--dir", "/var/tmp",
             "--dir", "/home"]
    for dev in _gpu_devices():
        args += ["--dev-bind", dev, dev]  # GPUs the machine has
    for path in sorted(sandbox.hide, key=lambda p: (p.count("/"), p)):
        if os.path.isdir(path) and _under_any(path, [f"/{d}" for d in SYSTEM_DIRS]):
            args += ["--tmpfs", path]  # the server's state inside a system directory (e.g. /opt)
    if python is not None and not _under_any(python.prefix, [f"/{d}" for d in SYSTEM_DIRS]):
        args += ["--ro-bind", python.prefix, python.prefix]  # e.g. a pyenv Python under a HOME
    args += ["--ro-bind", str(workdir / "bin"), SHIM_DIR]
    for host, target in mounts:  # parents first (a file inside /workflow after /workflow); HOME among them
        args += ["--bind", host, target]
    args += ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
             "--hostname", "dstack-job", "--new-session", "--die-with-parent", "--cap-drop", "ALL",
             "--clearenv"]
    for key, value in env.items():
        args += ["--setenv", key, value]
    args += ["--dir", cwd, "--chdir", cwd]
    # The arguments (the job's environment, secrets included) travel through a file descriptor.
    args_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by Prepared.close
    args_file.write(b"\0".join(a.encode() for a in args) + b"\0")
    args_file.seek(0)
    os.set_inheritable(args_file.fileno(), True)
    argv = [_bwrap(), "--args", str(args_file.fileno()), "--", *command]
    return Prepared(argv=argv, cwd="/", env={"PATH": SYSTEM_PATH}, pass_fds=(args_file.fileno(),),
                    user=ids[0] if ids else None, group=ids[1] if ids else None, _files=[args_file])


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """The job's user owns its code (unpacked by the agent) and its home."""
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _under_any(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _bwrap() -> str:
    return shutil.which("bwrap") or "/usr/bin/bwrap"


@dataclass(frozen=True)
class PythonInstall:
    """A real interpreter (never a pyenv-style shim) and the prefix it needs."""

    executable: str
    prefix: str
    version: str


@functools.cache
def find_python(version: str | None, ids: tuple[int, int] | None = None) -> PythonInstall:
    """`python{version}` as installed here, checked by running it; RuntimeError if missing or wrong.

    Shims (pyenv and the like) choose the interpreter by the name they are called as, so the job gets
    a link to the real executable that the shim resolves to, never the shim itself. With `ids`, only
    interpreters that user (uid, gid) can run count."""
    name = f"python{version}" if version else "python3"
    search = os.pathsep.join([os.environ.get("PATH", ""), SYSTEM_PATH])
    candidates = [os.path.join(d, name) for d in search.split(os.pathsep) if d]
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(glob.glob(os.path.join(pyenv_root, "versions", "*", "bin", name)), reverse=True)
    probe = "import os, sys; print(os.path.realpath(sys.executable)); print(sys.base_prefix); " \
            "print('%d.%d' % sys.version_info[:2])"
    seen: set[str] = set()
    versions: list[str] = []
    unreachable: list[str] = []
    for candidate in candidates:
        if candidate in seen or not os.access(candidate, os.X_OK) or os.path.isdir(candidate):
            continue
        seen.add(candidate)
        try:
            out = subprocess.run([candidate, "-c", probe], capture_output=True, text=True, timeout=30,
                                 env={"PATH": search, "HOME": os.environ.get("HOME", "/")})
        except (OSError, subprocess.SubprocessError):
            continue
        lines = out.stdout.split("\n")
        if out.returncode != 0 or len(lines) < 3:
            continue  # e.g. a pyenv shim of a version that is not selected
        executable, prefix, actual = lines[0], lines[1], lines[2]
        if version and actual != version:
            versions.append(actual)
            continue
        if ids is not None and not _reachable(executable, *ids):
            unreachable.append(executable)
            continue
        return PythonInstall(executable=executable, prefix=prefix, version=actual)
    if unreachable:
        raise RuntimeError(f"{name} on this machine ({unreachable[0]}) is not usable by the unprivileged user "
                           f"that jobs run as; install it system-wide (e.g. under /usr/local)")
    if versions:
        raise RuntimeError(f"{name} on this machine is Python {versions[0]}, not {version}")
    raise RuntimeError(f"{name} is not installed on this machine")


def _reachable(path: str, uid: int, gid: int) -> bool:
    """Whether that user may run `path`: search permission on every directory above it."""
    import stat

    def allowed(st: os.stat_result, bit: int) -> bool:
        if st.st_uid == uid:
            return bool(st.st_mode & (bit << 6))
        if st.st_gid == gid:
            return bool(st.st_mode & (bit << 3))
        return bool(st.st_mode & bit)

    parts = Path(path).parts
    for i in range(1, len(parts)):
        if not allowed(os.stat(Path(*parts[:i])), stat.S_IXOTH):
            return False
    return allowed(os.stat(path), stat.S_IXOTH)


def make_shims(bin_dir: Path, python: PythonInstall) -> None:
    bin_dir.mkdir(exist_ok=True)
    for link_name in ("python", "python3", f"python{python.version}"):
        link = bin_dir / link_name
        link.unlink(missing_ok=True)
        link.symlink_to(python.executable)


@functools.cache
def available(user: str = DEFAULT_USER) -> str | None:
    """None if jobs can be sandboxed here, else why not (shown to users and in the server log)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed (e.g. `apt-get install bubblewrap`)"
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        (workdir / "repo").mkdir()
        try:
            prepared = prepare(Sandbox(user=user), command=["/bin/sh", "-c", "test -w /workflow"],
                               env={"PATH": SYSTEM_PATH}, workdir=workdir, cwd=WORKFLOW_DIR, python=None,
                               mounts=[(str(workdir / "repo"), WORKFLOW_DIR), (str(workdir / "home"), JOB_HOME)])
        except KeyError:
            return f"user {user!r} does not exist on this machine"
        try:
            result = subprocess.run(**prepared.popen_kwargs(), capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"bubblewrap cannot start: {exc}"
        finally:
            prepared.close()
        if result.returncode != 0:
            detail = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
            return f"bubblewrap cannot create a sandbox here ({detail}); unprivileged user namespaces may be off"
    return None


def host_python(spec: dict[str, Any], workdir: Path, sandbox: Sandbox | None) -> PythonInstall | None:
    """The interpreter a host job asked for (which must exist), else this machine's python3 if any;
    its shims (`python`, `python3`, `python3.X`) in the job's `bin`."""
    wanted = spec.get("python")
    resolved = spec.get("python_install")
    try:
        python = PythonInstall(**resolved) if resolved else find_python(wanted, sandbox.uid_gid() if sandbox else None)
    except RuntimeError:
        if wanted:
            raise
        return None
    make_shims(workdir / "bin", python)
    return python


def host_job_env(spec: dict[str, Any], workdir: Path, *, sandboxed: bool, cwd: str) -> dict[str, str]:
    """Exactly a host job's variables (the spec's, DSTACK_* included) plus PATH and HOME: nothing of
    the agent's or the server's own environment."""
    home = JOB_HOME if sandboxed else str(workdir / "home")
    bin_dir = SHIM_DIR if sandboxed else str(workdir / "bin")
    (workdir / "home").mkdir(exist_ok=True)
    env = {"PATH": f"{bin_dir}{os.pathsep}{SYSTEM_PATH}", "HOME": home, "LANG": "C.UTF-8",
           # so print() lines reach the logs as they happen
           "PYTHONUNBUFFERED": "1"}
    env.update({k: v for k, v in (spec.get("env") or {}).items() if v is not None})
    if not sandboxed:  # a bare host job: /workflow is its code directory on this machine
        env["DSTACK_WORKING_DIR"] = cwd
    gpus = spec.get("gpus")
    if gpus and gpus != ["all"]:  # the GPUs this job was given on a machine it shares
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env
