"""An SSH session's way into its job: sshd's ForceCommand for the job's sshd (see ssh.py).

Usage: python enter.py WORKDIR   (the command, if any, is in SSH_ORIGINAL_COMMAND)

Reads WORKDIR/ssh/session.json (how to reach the job: its container, its sandbox's process, or the
host) and WORKDIR/ssh/session-env.json (the job's environment, secrets included; 0600, the agent's),
then replaces itself with the job's shell there: `docker exec` / `podman exec` into the container,
`nsenter` into the sandbox's namespaces as the job's user, or the shell itself for a bare host job.
Stdlib only, run by path: sshd gives the session a clean environment.
"""

from __future__ import annotations

import json
import os
import sys


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def argv_for(session: dict, env: dict, command: str | None, tty: bool) -> list[str]:
    shell = session.get("shell") or "/bin/sh"
    # A command runs in the job's shell; an interactive session gets bash where the job has it.
    run = [shell, "-c", command] if command else \
        ["/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi"]
    cwd = session.get("cwd") or "/"
    if session["kind"] == "container":
        args = [session["runtime"], "exec", "-i", "-w", cwd]
        if tty:
            args.append("-t")
        if session.get("user"):
            args += ["-u", session["user"]]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        return [*args, session["name"], *run]
    if session["kind"] == "sandbox":
        # bwrap's monitor is outside the sandbox; its child is the sandbox's first process.
        inner = (_children(int(session["pid"])) or [int(session["pid"])])[0]
        args = ["nsenter", "-t", str(inner), "-U", "-m", "-p", "-i", "-u", f"--wdns={cwd}"]
        if session.get("uid") is not None:
            args += ["-S", str(session["uid"]), "-G", str(session["gid"])]
        return [*args, "env", "-i", *[f"{k}={v}" for k, v in env.items()], *run]
    return ["env", "-i", *[f"{k}={v}" for k, v in env.items()], "sh", "-c", 'cd "$1" && shift && exec "$@"',
            "enter", cwd, *run]


def main(argv: list[str]) -> int:
    workdir = argv[1]
    try:
        with open(os.path.join(workdir, "ssh", "session.json")) as f:
            session = json.load(f)
        with open(os.path.join(workdir, "ssh", "session-env.json")) as f:
            env = json.load(f)
    except (OSError, ValueError):
        print("dstack: the job is not running (yet)", file=sys.stderr)
        return 1
    command = os.environ.get("SSH_ORIGINAL_COMMAND") or None
    args = argv_for(session, env, command, tty=sys.stdin.isatty())
    try:
        os.execvp(args[0], args)
    except OSError as exc:
        print(f"dstack: cannot enter the job: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
