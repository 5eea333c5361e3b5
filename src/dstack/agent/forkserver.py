"""The local backend's fork server: one long-lived process with the agent's modules imported, which
forks an agent for each job. A new interpreter costs a job ~40–50 ms of CPU before it does anything
(start-up and imports: half of what a one-line job costs the machine); a fork of this one ~2 ms.

    python -m dstack.agent.forkserver SERVER_DIR   (started by the server: backends/local/forkserver.py)

SERVER_DIR only labels it (and, as a fork has the same command line, its agents) for `ps`; an agent's
process name (`ps -e`, `top`) is `dstack-agent`.

Its stdin is one end of a socket pair whose other end only the server holds. Each request is a line
of JSON, `{"argv": [...], "env": {...}, "log": "/path"}` (an agent's command line, its whole
environment, the file for its output); each answer a line, `{"pid": N, "create_time": T}` or
`{"error": "..."}`. At EOF (the server stopped or died) it exits; the agents it started run on, each
in a session of its own, as agents started by the server itself do.

It holds nothing of the server's: the server starts it with the clean environment an agent gets, and
it reads no file of the server's, so a forked agent inherits no secret but its own job's.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import gzip  # noqa: F401 - imported by `tarfile` when a job's code archive is opened: once, here
import json
import os
import signal
import socket
import sys
import traceback
from typing import Any, NoReturn

# Imported once here so that every fork has them; what a job needs beyond (a container runtime's
# client, AWS) is still imported by the agent that needs it.
from dstack.agent import main as agent_main
from dstack.agent import runner  # noqa: F401
from dstack.agent.process import create_time
from dstack.storage import local  # noqa: F401

_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_NAME = 15


def _reap(*_: Any) -> None:
    """Collects every agent that has exited (they are this process's children, not the server's)."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _agent(request: dict[str, Any]) -> NoReturn:
    """In the forked child: become the agent of `request` and never return."""
    code = 1
    try:
        os.setsid()  # a session of its own: it outlives this process and the server
        _LIBC.prctl(_PR_SET_NAME, b"dstack-agent", 0, 0, 0)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the agent waits for its own children
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # in place of the channel: the agent cannot talk to the server's end
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 1 << 20)  # nothing of this process's but stdio (as close_fds)
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["python -m dstack.agent", *request["argv"]]
        code = agent_main.main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the agent's log says why; nothing may reach the server's loop
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # exiting anyway
                stream.flush()
        os._exit(code)


def serve(channel: socket.socket) -> int:
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the server, which closes our stdin
    for line in channel.makefile("rb"):
        try:
            request = json.loads(line)
            # SIGCHLD held until the new agent's start time is read: a job that exits at once must not
            # be reaped (and its pid perhaps reused) before then.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
            try:
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _agent(request)
                answer: dict[str, Any] = {"pid": pid, "create_time": create_time(pid)}
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        except Exception as exc:  # noqa: BLE001 - a bad request is answered, not fatal
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        channel.sendall(json.dumps(answer).encode() + b"\n")
    return 0


def main() -> int:
    # argparse compiles its patterns at the first parse and keeps them in `re`'s cache: parsed once
    # here, so that each agent finds them compiled.
    agent_main.PARSER.parse_args(["--job", "j", "--storage", "file:///", "--workdir", "/"])
    # What every agent inherits (the modules above) is frozen out of the cyclic collector: a forked
    # agent's collections do not walk it, nor touch (and so copy) its pages.
    gc.freeze()
    return serve(socket.socket(fileno=0))


if __name__ == "__main__":
    sys.exit(main())
