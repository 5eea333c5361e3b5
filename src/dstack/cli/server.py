"""`dstack server`: migrate, bootstrap, serve."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dstack.core.errors import DstackError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3000
DEFAULT_LOG_LEVEL = "warning"
LOG_LEVELS = ("debug", "info", "warning", "error")


def plain_options(argv: list[str]) -> dict[str, Any] | None:
    """`server`'s options as {host, port, log_level} when they are plain (`--host H`, `--port N`,
    `--log-level L`, or with `=`); None for anything else (`--help`, a typo, a bad value), which typer
    answers."""
    options: dict[str, Any] = {"host": DEFAULT_HOST, "port": DEFAULT_PORT, "log_level": DEFAULT_LOG_LEVEL}
    args = iter(argv)
    for arg in args:
        name, eq, value = arg.partition("=")
        if name not in ("--host", "--port", "--log-level"):
            return None
        value = value if eq else next(args, "")
        if not value or value.startswith("-"):
            return None
        if name == "--port":
            if not value.isdigit():
                return None
            options["port"] = int(value)
        elif name == "--log-level":
            options["log_level"] = value
        else:
            options["host"] = value
    return options


def quick_server(argv: list[str]) -> bool:
    """Run `dstack server ARGV` without the typer app (about 20 ms of start-up) if its options are
    plain; False to leave it to the typer command (help, errors)."""
    options = plain_options(argv)
    if options is None:
        return False
    run_server(**options)
    return True


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DstackError(f"port {port} on {host} is already in use",
                                  fix="Stop whatever uses it, or pass another one with --port") from None
            raise DstackError(f"cannot listen on {host}:{port}: {exc.strerror}",
                              fix="Check --host and --port") from None


async def _prepare(settings: object, url: str, show_token: Callable[[str], None]) -> None:
    """First-start bootstrap and the server's config file, before serving: errors are one line."""
    from dstack.server import config_file
    from dstack.server.bootstrap import bootstrap
    from dstack.server.context import ServerContext
    from dstack.server.db import Database

    ctx = ServerContext(settings=settings, db=Database(settings))  # type: ignore[arg-type]
    try:
        token = await bootstrap(ctx, url=url)
        if token:
            show_token(token)  # now: even if the config file below is wrong, the token is not lost
        await config_file.apply(ctx)
    finally:
        await ctx.db.close()


def make_private(server_dir: Path) -> None:
    """The server's state is its own: directories 0700, files 0600 (new ones by the umask; the DB, key
    and config an older version left are fixed here; the 0700 directory guards everything else)."""
    os.umask(0o077)
    server_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(server_dir, 0o700)
    for dirpath, _dirnames, filenames in os.walk(server_dir / "data"):
        os.chmod(dirpath, 0o700)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o600)
    for name in os.listdir(server_dir):
        path = server_dir / name
        os.chmod(path, 0o700 if path.is_dir() else 0o600)


# The server's two lines need no console library (rich: ~15 ms of every start).
def _bold(text: str) -> str:
    return f"\033[1m{text}\033[0m" if sys.stdout.isatty() and not os.environ.get("NO_COLOR") else text


def _say(line: str) -> None:
    print(line, flush=True)


def run_server(*, host: str, port: int, log_level: str) -> None:
    import uvicorn

    from dstack.server.app import create_app
    from dstack.server.memory import limit_arenas
    from dstack.server.migrate import upgrade
    from dstack.server.settings import Settings

    if log_level.lower() not in LOG_LEVELS:
        raise DstackError(f"--log-level: {log_level!r} is not a log level", fix=f"Use one of {', '.join(LOG_LEVELS)}")
    limit_arenas()  # before any thread starts
    settings = Settings(listen_port=port)
    _check_port(host, port)
    make_private(settings.server_dir)
    try:
        upgrade(settings)
    except Exception as exc:  # the DB is unreachable or the URL is wrong
        where = settings.database_url or str(settings.server_dir / "data" / "sqlite.db")
        raise DstackError(f"cannot open the database {where}: {str(exc).splitlines()[0]}",
                          fix="Check DSTACK_DATABASE_URL and that the database is running") from None
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"http://{url_host}:{port}"

    def show_token(token: str) -> None:
        from dstack.api.config import config_path

        _say(f"The admin token is {_bold(token)} (shown once; it is also in {config_path()})")

    asyncio.run(_prepare(settings, url, show_token))

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per proxied request or probe would drown the server's own log.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    app = create_app(settings)
    # Everything loaded so far lives as long as the server: kept out of the cyclic collector's passes
    # from now on (each would walk it all again), which is turned back on here (see cli/main.py).
    gc.freeze()
    gc.enable()
    _say(f"The dstack server is running at {_bold(url)} (API docs at {url}/docs). Press Ctrl+C to stop.")
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
