"""The `dstack` command. `dstack ps` with plain options is answered without typer, httpx or the
models (dstack/cli/ps.py), and `dstack server` with plain options starts without typer
(dstack/cli/server.py); everything else goes to the typer app (dstack/cli/commands.py)."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["ps"]:
        from dstack.cli.ps import quick_ps

        if quick_ps(sys.argv[2:]):
            return
    elif sys.argv[1:2] == ["server"]:
        from dstack.cli.server import quick_server

        if quick_server(sys.argv[2:]):
            return
    from dstack.cli.commands import main as run_command

    run_command()


if __name__ == "__main__":
    main()
