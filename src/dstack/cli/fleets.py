"""`dstack apply -f fleet.yml`, `dstack fleet` (list, delete) and `dstack delete FLEET`."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from dstack.cli.options import ProjectOption
from dstack.cli.ui import ago, console, duration, offers_table
from dstack.core.errors import DstackError

fleet_app = typer.Typer(help="Fleets: instances kept for runs to reuse.", invoke_without_command=True,
                        no_args_is_help=False)
WAIT_TIMEOUT = 1800.0


def _client(project: str | None) -> Any:
    from dstack.cli.runs import client_for

    return client_for(project)


def apply_fleet(*, file: str, yes: bool, detach: bool, project: str | None) -> int:
    client = _client(project)
    spec = client.fleets.spec(file)
    plan = client.fleets.plan(spec)
    _print_plan(plan)
    if plan.current is not None and _same(plan.current.spec.configuration, spec.configuration):
        # As upstream: applying what exists changes nothing.
        console.print(f"Fleet {plan.current.name} exists with this configuration; nothing to do "
                      f"(`dstack fleet` shows it, `dstack delete {plan.current.name}` deletes it)")
        return 0
    if plan.current is not None:
        raise DstackError(f"fleet {plan.current.name!r} already exists ({plan.current.status.value})",
                          fix=f"Delete it first with `dstack delete {plan.current.name}`, or choose another name")
    if not yes:
        if not sys.stdin.isatty():
            raise DstackError("cannot ask for confirmation: standard input is not a terminal",
                              fix="Pass -y to create the fleet without asking")
        if not typer.confirm("Create the fleet?", default=True):
            console.print("Fleet not created")
            return 0
    fleet = client.fleets.apply(spec)
    console.print(f"Fleet [bold]{fleet.name}[/] created: {len(fleet.instances)} instance(s) provisioning"
                  + (" (installing the agent on each host)" if spec.configuration.ssh_config else ""))
    if detach or not fleet.instances:
        console.print(f"See it with `dstack fleet`; delete it with `dstack delete {fleet.name}`")
        return 0
    deadline = time.monotonic() + WAIT_TIMEOUT
    with console.status("Provisioning…") as status:
        while time.monotonic() < deadline:
            fleet = client.fleets.get(fleet.name)
            states = [i.status.value for i in fleet.instances]
            status.update(f"Provisioning… {', '.join(f'{i.name}: {i.status.value}' for i in fleet.instances)}")
            if all(s in ("idle", "busy", "terminated") for s in states):
                break
            time.sleep(1)
    console.print(fleet_table([fleet], verbose=True))
    failed = [i for i in fleet.instances if i.status.value == "terminated"]
    for instance in failed:
        console.print(f"[red]{instance.name}[/]: {instance.reason}", soft_wrap=True)
    return 1 if failed else 0


def _same(current: Any, new: Any) -> bool:
    """The same fleet configuration, keys aside (the server never gives them back)."""
    def plain(conf: Any) -> Any:
        data = conf.model_dump(mode="json", exclude_none=True)
        ssh = data.get("ssh_config")
        if ssh:
            ssh.pop("ssh_key", None)
            for host in ssh.get("hosts", []):
                host.pop("ssh_key", None)
            if ssh.get("proxy_jump"):
                ssh["proxy_jump"].pop("ssh_key", None)
        return data

    return plain(current) == plain(new)


def _print_plan(plan: Any) -> None:
    conf = plan.spec.configuration
    props = Table(box=None, show_header=False, pad_edge=False)
    props.add_column(style="bold")
    props.add_column()
    props.add_row("Project", plan.project)
    props.add_row("User", plan.user)
    props.add_row("Configuration", plan.spec.configuration_path)
    props.add_row("Type", "fleet")
    props.add_row("Nodes", str(plan.nodes))
    if conf.ssh_config is not None:  # the team's own hosts: what they have is found over SSH
        console.print(props)
        console.print()
        hosts = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("#", "HOST", "USER", "PORT", "PROXY JUMP"):
            hosts.add_column(column)
        ssh = conf.ssh_config
        for i, host in enumerate(ssh.hosts, start=1):
            jump = host.proxy_jump or ssh.proxy_jump
            hosts.add_row(str(i), host.hostname, host.user or ssh.user or "-", str(host.port or ssh.port or 22),
                          jump.hostname if jump else "-")
        console.print(hosts)
        console.print()
        return
    props.add_row("Resources", conf.resources.pretty() if conf.resources else "default")
    props.add_row("Spot policy", conf.spot_policy or "on-demand")
    idle = conf.idle_duration
    props.add_row("Idle duration", "3d" if idle is None else "off" if idle < 0 else duration(idle))
    console.print(props)
    console.print()
    console.print(offers_table(plan.offers[:3]))
    if plan.total_offers > 3:
        console.print(f"Shown 3 of {plan.total_offers} offers")
    console.print()


def fleet_table(fleets: list[Any], *, verbose: bool = False) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("FLEET", "INSTANCE", "BACKEND", "RESOURCES", "PRICE", "STATUS", "CREATED"):
        table.add_column(column)
    for fleet in fleets:
        live = [i for i in fleet.instances if verbose or i.status.value != "terminated"]
        if not live:
            table.add_row(fleet.name, "-", "-", "-", "-", fleet.status.value if fleet.status.value != "active"
                          else "no instances", ago(fleet.created_at))
        for n, instance in enumerate(live):
            where = f"{instance.backend} ({instance.region})" if instance.region else instance.backend or "-"
            status = instance.status.value
            if instance.runs:
                status += f" ({', '.join(instance.runs)})"
            elif instance.reason and (verbose or instance.status.value == "terminating"):
                status += f" ({instance.reason})"
            table.add_row(fleet.name if n == 0 else "", instance.name, where,
                          f"{instance.instance_type}: {instance.resources.pretty()}" if instance.resources else "-",
                          f"${instance.price:.4f}" if instance.price is not None else "-", status,
                          ago(instance.created_at))
    return table


@fleet_app.callback()
def _default(ctx: typer.Context, project: ProjectOption = None) -> None:
    """List the fleets (the same as `dstack fleet list`)."""
    if ctx.invoked_subcommand is None:
        list_fleets(project=project)


@fleet_app.command("list")
def list_fleets(
    all: Annotated[bool, typer.Option("-a", "--all", help="deleted fleets and terminated instances too")] = False,
    project: ProjectOption = None,
) -> None:
    """List the fleets with their instances: status (idle, busy with which run), backend, price."""
    client = _client(project)
    fleets = client.fleets.list(all=all)
    if not fleets:
        console.print("No fleets. Create one with `dstack apply -f fleet.dstack.yml` (`type: fleet`).")
        return
    console.print(fleet_table(fleets, verbose=all))


@fleet_app.command("delete")
def delete_fleet_command(
    name: Annotated[str, typer.Argument(help="the fleet's name")],
    yes: Annotated[bool, typer.Option("-y", "--yes", help="do not ask for confirmation")] = False,
    project: ProjectOption = None,
) -> None:
    """Terminate a fleet's instances and delete it (refused while an instance runs a job)."""
    delete_fleet(name=name, yes=yes, project=project)


def delete_fleet(*, name: str, yes: bool, project: str | None) -> None:
    client = _client(project)
    fleet = client.fleets.get(name)
    if not yes:
        if not sys.stdin.isatty():
            raise DstackError("cannot ask for confirmation: standard input is not a terminal", fix="Pass -y")
        if not typer.confirm(f"Delete the fleet {fleet.name} and terminate its instances?", default=True):
            return
    client.fleets.delete(name)
    console.print(f"Fleet {name} deleted: its instances are terminating")


def delete_by_name(*, name: str, yes: bool, project: str | None) -> None:
    """`dstack delete NAME`: the fleet of that name, else the volume."""
    from dstack.core.errors import ResourceNotFoundError

    client = _client(project)
    try:
        client.fleets.get(name)
    except ResourceNotFoundError:
        try:
            client.volumes.get(name)
        except ResourceNotFoundError:
            raise ResourceNotFoundError(f"no fleet or volume {name!r} in project {client.project!r}",
                                        fix="See `dstack fleet` and `dstack volume`") from None
        from dstack.cli.volumes import delete_volume

        delete_volume(name=name, yes=yes, project=project)
        return
    delete_fleet(name=name, yes=yes, project=project)
