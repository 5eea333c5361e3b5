"""The `dstack` command. `dstack ps` with plain options is answered without typer, httpx or the
models (dstack/cli/ps.py), and `dstack server` with plain options starts without typer
(dstack/cli/server.py); everything else goes to the typer app (dstack/cli/commands.py)."""

from __future__ import annotations

import gc
import sys


def main() -> None:
    # Start-up imports allocate a few hundred thousand objects that live as long as the process, and
    # the cyclic collector walks them again and again while they load (about a fifth of the server's
    # import time here). It is off while a command sets up: a short one (`ps`) ends without it, the
    # typer commands get it back once the app is imported, the server once its app is built, its
    # start-up objects frozen out of later collections (cli/server.py).
    gc.disable()
    from dstack.core.errors import DstackError

    try:
        _run(sys.argv[1:])
    except DstackError as exc:  # every command's errors: one line (what and the fix), no traceback
        from dstack.cli.ui import error

        error(str(exc))
        sys.exit(1)


def _run(argv: list[str]) -> None:
    if argv[:1] == ["ps"]:
        from dstack.cli.ps import quick_ps

        if quick_ps(argv[1:]):
            return
    elif argv[:1] == ["server"]:
        from dstack.cli.server import quick_server

        if quick_server(argv[1:]):
            return
    from dstack.cli.commands import app

    gc.enable()
    app(standalone_mode=True)


if __name__ == "__main__":
    main()
