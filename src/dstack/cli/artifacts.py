"""`dstack artifacts list RUN` and `dstack artifacts download RUN [PATH] [-o DIR]`: a run's saved
`artifacts`, from the project's bucket through the server."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Annotated

import typer

from dstack.cli.options import ProjectOption

artifacts_app = typer.Typer(no_args_is_help=True, help="List and download a run's artifacts.")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@artifacts_app.command("list")
def list_artifacts(run: Annotated[str, typer.Argument(help="run name")], project: ProjectOption = None) -> None:
    """List a run's artifacts (path and size)."""
    from rich.markup import escape
    from rich.table import Table

    from dstack.cli.runs import client_for
    from dstack.cli.ui import console

    items = client_for(project).runs.artifacts(run)
    if not items:
        console.print(f"{escape(run)} saved no artifacts (a run saves the paths in its `artifacts` when it ends)")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("PATH")
    table.add_column("SIZE", justify="right")
    for item in items:
        table.add_row(escape(item.path), _size(item.size))
    console.print(table)


@artifacts_app.command("download")
def download(
    run: Annotated[str, typer.Argument(help="run name")],
    path: Annotated[str | None, typer.Argument(help="an artifact, or a directory of them (default: all)")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="directory to save them in")] = Path("."),
    project: ProjectOption = None,
) -> None:
    """Download a run's artifacts into a directory, keeping their paths (`out/a.txt` → DIR/out/a.txt)."""
    from dstack.cli.runs import client_for
    from dstack.cli.ui import console
    from dstack.core.errors import ResourceNotFoundError

    client = client_for(project)
    wanted = str(PurePosixPath(path)).strip("/") if path else ""
    items = [a for a in client.runs.artifacts(run)
             if not wanted or a.path == wanted or a.path.startswith(wanted + "/")]
    if not items:
        raise ResourceNotFoundError(f"run {run!r} has no artifact {wanted!r}" if wanted else
                                    f"run {run!r} saved no artifacts", field="path",
                                    fix=f"See `dstack artifacts list {run}`")
    root = output.resolve()
    total = 0
    for item in items:
        target = (root / item.path).resolve()
        if not target.is_relative_to(root):  # a path that would climb out of the directory
            raise ResourceNotFoundError(f"artifact path {item.path!r} leaves the output directory", field="path")
        total += client.runs.save_artifact(run, item.path, target)
        console.print(f"{item.path} → {target}", soft_wrap=True, highlight=False, markup=False)
    console.print(f"{len(items)} file{'s' if len(items) != 1 else ''}, {_size(total)}")
