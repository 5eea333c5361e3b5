"""`dstack apply -f volume.yml`, `dstack volume` (list, delete)."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from dstack.cli.options import ProjectOption
from dstack.cli.ui import ago, console
from dstack.core.errors import DstackError

volume_app = typer.Typer(help="Network volumes: disks that outlive runs.", invoke_without_command=True,
                         no_args_is_help=False)
WAIT_TIMEOUT = 600.0


def _client(project: str | None) -> Any:
    from dstack.cli.runs import client_for

    return client_for(project)


def apply_volume(*, file: str, yes: bool, detach: bool, project: str | None) -> int:
    client = _client(project)
    spec = client.volumes.spec(file)
    conf = spec.configuration
    props = Table(box=None, show_header=False, pad_edge=False)
    props.add_column(style="bold")
    props.add_column()
    props.add_row("Project", client.project)
    props.add_row("Configuration", spec.configuration_path)
    props.add_row("Type", "volume")
    zone = f", {conf.availability_zone}" if conf.availability_zone else ""
    props.add_row("Backend", f"{conf.backend} ({conf.region}{zone})")
    props.add_row("Volume", f"existing {conf.volume_id} (registered; deleting it in dstack keeps it)" if conf.volume_id
                  else f"new, {conf.size.min:g} GB" if conf.size else "new (it grows as it fills)")
    console.print(props)
    console.print()
    if not yes:
        if not sys.stdin.isatty():
            raise DstackError("cannot ask for confirmation: standard input is not a terminal",
                              fix="Pass -y to create the volume without asking")
        if not typer.confirm("Create the volume?", default=True):
            console.print("Volume not created")
            return 0
    volume = client.volumes.apply(spec)
    if detach:
        console.print(f"Volume [bold]{volume.name}[/] is {volume.status.value}; see it with `dstack volume`")
        return 0
    deadline = time.monotonic() + WAIT_TIMEOUT
    with console.status("Provisioning…"):
        while volume.status.value in ("submitted", "provisioning") and time.monotonic() < deadline:
            time.sleep(1)
            volume = client.volumes.get(volume.name)
    console.print(volume_table([volume]))
    if volume.status.value == "failed":
        console.print(f"[red]{volume.name}[/]: {volume.reason}", soft_wrap=True)
        return 1
    return 0


def volume_table(volumes: list[Any]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("NAME", "BACKEND", "REGION", "SIZE", "VOLUME ID", "STATUS", "CREATED"):
        table.add_column(column)
    for v in volumes:
        where = v.region + (f" ({v.availability_zone})" if v.availability_zone else "")
        status = v.status.value
        if v.attached_to:
            status = f"attached ({', '.join(v.attached_to)})"
        elif v.reason and v.status.value == "failed":
            status += f" ({v.reason})"
        table.add_row(v.name, v.backend, where, f"{v.size_gb:g} GB" if v.size_gb else "-",
                      (v.volume_id or "-") + (" (registered)" if v.external else ""), status, ago(v.created_at))
    return table


@volume_app.callback()
def _default(ctx: typer.Context, project: ProjectOption = None) -> None:
    """List the volumes (the same as `dstack volume list`)."""
    if ctx.invoked_subcommand is None:
        list_volumes(project=project)


@volume_app.command("list")
def list_volumes(
    all: Annotated[bool, typer.Option("-a", "--all", help="deleted volumes too")] = False,
    project: ProjectOption = None,
) -> None:
    """List the volumes: backend, region, size, status, the runs they are attached to."""
    volumes = _client(project).volumes.list(all=all)
    if not volumes:
        console.print("No volumes. Create one with `dstack apply -f volume.dstack.yml` (`type: volume`).")
        return
    console.print(volume_table(volumes))


@volume_app.command("delete")
def delete_volume_command(
    name: Annotated[str, typer.Argument(help="the volume's name")],
    yes: Annotated[bool, typer.Option("-y", "--yes", help="do not ask for confirmation")] = False,
    project: ProjectOption = None,
) -> None:
    """Delete a volume and its data (refused while a run uses it; a registered one is only forgotten)."""
    delete_volume(name=name, yes=yes, project=project)


def delete_volume(*, name: str, yes: bool, project: str | None) -> None:
    client = _client(project)
    volume = client.volumes.get(name)
    if not yes:
        if not sys.stdin.isatty():
            raise DstackError("cannot ask for confirmation: standard input is not a terminal", fix="Pass -y")
        what = "forget it (the volume itself stays)" if volume.external else "delete its data"
        if not typer.confirm(f"Delete the volume {volume.name} and {what}?", default=True):
            return
    client.volumes.delete(name)
    console.print(f"Volume {name} deleted" + (" (registered: the provider's volume stays)" if volume.external else ""))
