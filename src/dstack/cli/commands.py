"""`dstack`'s commands (typer). Heavy modules are imported inside commands to keep start-up fast."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from dstack.cli import server as server_defaults
from dstack.cli.options import ProjectOption

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="dstack: run ML tasks on your own machine, AWS or Lambda Cloud.")


@app.command()
def server(
    host: Annotated[str, typer.Option(help="address to listen on")] = server_defaults.DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="port to listen on")] = server_defaults.DEFAULT_PORT,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = server_defaults.DEFAULT_LOG_LEVEL,
) -> None:
    """Start the dstack server (state in ~/.dstack/server)."""
    from dstack.cli.server import run_server

    run_server(host=host, port=port, log_level=log_level)


@app.command()
def init(
    project: Annotated[str | None, typer.Option("-P", "--project", help="project to use (default: the config's)")
                       ] = None,
    repo: Annotated[str | None, typer.Option("--repo", help="a private repo URL to register credentials for "
                                                            "(default: this git repo's origin)")] = None,
    token: Annotated[str | None, typer.Option("--token", help="a token that can read the repo (https URLs)")
                     ] = None,
    username: Annotated[str | None, typer.Option("--username", help="the token's user (default: oauth2)")] = None,
    git_identity: Annotated[str | None, typer.Option("--git-identity", help="a private SSH key that can read the "
                                                                            "repo (ssh URLs)")] = None,
) -> None:
    """Make the current directory a dstack repo of the project; with --token or --git-identity, register
    the credentials that runs use to clone a private repo URL (`repos:`)."""
    from dstack.cli.runs import init_repo, register_repo_credentials

    init_repo(project)
    if token or git_identity:
        register_repo_credentials(project=project, url=repo, token=token, username=username,
                                  git_identity=git_identity)


def _overrides(*, env: list[str] | None, name: str | None, gpu: str | None, cpu: str | None, memory: str | None,
               disk: str | None, backend: list[str] | None, region: list[str] | None,
               instance_type: list[str] | None, max_price: float | None, max_duration: str | None, spot: bool,
               on_demand: bool, spot_auto: bool, spot_policy: str | None, retry: bool | None,
               retry_duration: str | None) -> object:
    from dstack.cli.overrides import Overrides, spot_policy_of

    return Overrides(env=env or [], name=name, gpu=gpu, cpu=cpu, memory=memory, disk=disk, backends=backend or [],
                     regions=region or [], instance_types=instance_type or [], max_price=max_price,
                     max_duration=max_duration, retry=retry, retry_duration=retry_duration,
                     spot_policy=spot_policy_of(spot=spot, on_demand=on_demand, spot_auto=spot_auto,
                                                spot_policy=spot_policy))


# Options `dstack apply` and `dstack offer` share (upstream's names).
GpuOpt = Annotated[str | None, typer.Option("--gpu", help="e.g. A100:2, 24GB.., nvidia:1..8")]
CpuOpt = Annotated[str | None, typer.Option("--cpu", help="e.g. 8, 4.., arm:8")]
MemoryOpt = Annotated[str | None, typer.Option("--memory", help="e.g. 32GB..")]
DiskOpt = Annotated[str | None, typer.Option("--disk", help="e.g. 200GB..")]
BackendOpt = Annotated[list[str] | None, typer.Option("-b", "--backend", help="only this backend (repeatable)")]
RegionOpt = Annotated[list[str] | None, typer.Option("-r", "--region", help="only this region (repeatable)")]
TypeOpt = Annotated[list[str] | None, typer.Option("--instance-type", help="only this type (repeatable)")]
PriceOpt = Annotated[float | None, typer.Option("--max-price", help="USD per hour")]
SpotOpt = Annotated[bool, typer.Option("--spot", help="spot instances only")]
OnDemandOpt = Annotated[bool, typer.Option("--on-demand", help="on-demand instances only")]
SpotAutoOpt = Annotated[bool, typer.Option("--spot-auto", help="spot if cheaper, else on-demand")]


@app.command()
def apply(
    file: Annotated[str, typer.Option("-f", "--file", help="configuration file")] = ".dstack.yml",
    yes: Annotated[bool, typer.Option("-y", "--yes", help="do not ask for confirmation")] = False,
    detach: Annotated[bool, typer.Option("-d", "--detach", help="submit and exit")] = False,
    force: Annotated[bool, typer.Option("--force", help="stop an active run of the same name and submit anew")
                     ] = False,
    name: Annotated[str | None, typer.Option("-n", "--name", help="the run name")] = None,
    env: Annotated[list[str] | None, typer.Option("-e", "--env", help="KEY=VALUE (or KEY, from this shell)")
                   ] = None,
    gpu: GpuOpt = None,
    cpu: CpuOpt = None,
    memory: MemoryOpt = None,
    disk: DiskOpt = None,
    backend: BackendOpt = None,
    region: RegionOpt = None,
    instance_type: TypeOpt = None,
    max_price: PriceOpt = None,
    max_duration: Annotated[str | None, typer.Option("--max-duration", help="e.g. 2h, off")] = None,
    spot: SpotOpt = False,
    on_demand: OnDemandOpt = False,
    spot_auto: SpotAutoOpt = False,
    spot_policy: Annotated[str | None, typer.Option("--spot-policy", help="spot, on-demand or auto")] = None,
    retry: Annotated[bool | None, typer.Option("--retry/--no-retry", help="resubmit on failure")] = None,
    retry_duration: Annotated[str | None, typer.Option("--retry-duration", help="e.g. 1h")] = None,
    project: ProjectOption = None,
) -> None:
    """Show the plan, submit the run and stream its logs."""
    from dstack.cli.apply import apply_configuration

    overrides = _overrides(env=env, name=name, gpu=gpu, cpu=cpu, memory=memory, disk=disk, backend=backend,
                           region=region, instance_type=instance_type, max_price=max_price,
                           max_duration=max_duration, spot=spot, on_demand=on_demand, spot_auto=spot_auto,
                           spot_policy=spot_policy, retry=retry, retry_duration=retry_duration)
    raise typer.Exit(apply_configuration(file=file, yes=yes, detach=detach, force=force, project=project,
                                         overrides=overrides))


@app.command()
def offer(
    file: Annotated[str | None, typer.Option("-f", "--file", help="a configuration (else the flags alone)")
                    ] = None,
    gpu: GpuOpt = None,
    cpu: CpuOpt = None,
    memory: MemoryOpt = None,
    disk: DiskOpt = None,
    backend: BackendOpt = None,
    region: RegionOpt = None,
    instance_type: TypeOpt = None,
    max_price: PriceOpt = None,
    spot: SpotOpt = False,
    on_demand: OnDemandOpt = False,
    spot_auto: SpotAutoOpt = False,
    max_offers: Annotated[int, typer.Option("--max-offers", help="how many to list")] = 50,
    json_output: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    project: ProjectOption = None,
) -> None:
    """List the offers (instances and prices) for a configuration or for resource flags alone."""
    from dstack.cli.offer import show_offers

    overrides = _overrides(env=None, name=None, gpu=gpu, cpu=cpu, memory=memory, disk=disk, backend=backend,
                           region=region, instance_type=instance_type, max_price=max_price, max_duration=None,
                           spot=spot, on_demand=on_demand, spot_auto=spot_auto, spot_policy=None, retry=None,
                           retry_duration=None)
    show_offers(file=file, overrides=overrides, max_offers=max_offers, json_output=json_output, project=project)


@app.command()
def delete(
    name: Annotated[str | None, typer.Argument(help="a fleet's or a volume's name (instead of -f)")] = None,
    file: Annotated[str, typer.Option("-f", "--file", help="configuration file")] = ".dstack.yml",
    yes: Annotated[bool, typer.Option("-y", "--yes", help="do not ask for confirmation")] = False,
    project: ProjectOption = None,
) -> None:
    """Delete a fleet or a volume by NAME, or what a configuration defines: a fleet is deleted (its
    instances terminated), a volume deleted, a run configuration's active run (by its `name`) stopped."""
    if name is not None:
        from dstack.cli.fleets import delete_by_name

        delete_by_name(name=name, yes=yes, project=project)
        return
    from dstack.cli.runs import delete_configuration

    delete_configuration(file=file, yes=yes, project=project)


@app.command()
def metrics(
    run: Annotated[str, typer.Argument(help="run name")],
    watch: Annotated[bool, typer.Option("-w", "--watch", help="refresh until the run ends")] = False,
    project: ProjectOption = None,
) -> None:
    """CPU, memory and GPU use of a run's machine (the agent's latest sample)."""
    from dstack.cli.runs import show_metrics

    show_metrics(run, watch=watch, project=project)


@app.command()
def ps(
    all: Annotated[bool, typer.Option("-a", "--all", help="show finished runs too")] = False,
    watch: Annotated[bool, typer.Option("-w", "--watch", help="refresh every 2 seconds")] = False,
    last: Annotated[int | None, typer.Option("-n", "--last", min=1, help="show only the last N runs (implies -a)")
                    ] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose",
                                          help="whole reasons, provisioning attempts and events")] = False,
    project: ProjectOption = None,
) -> None:
    """List runs: active ones and the latest finished one (-a: all of them)."""
    from dstack.cli.runs import show_runs

    show_runs(all=all, last=last, watch=watch, verbose=verbose, project=project)


@app.command()
def logs(
    run: Annotated[str, typer.Argument(help="run name")],
    follow: Annotated[bool, typer.Option("-f", "--follow", help="wait for new lines until the run ends")] = False,
    job: Annotated[int | None, typer.Option("--job", "-j", min=0, help="the node of a multi-node task "
                                                                      "(default: 0, the master)")] = None,
    replica: Annotated[int, typer.Option("--replica", min=0, help="the replica (upstream's option; a task "
                                                                  "has one, 0)")] = 0,
    project: ProjectOption = None,
) -> None:
    """Print a run's logs."""
    from dstack.cli.runs import print_logs

    print_logs(run, follow=follow, project=project, job=job, replica=replica)


@app.command()
def stop(
    run: Annotated[str, typer.Argument(help="run name")],
    abort: Annotated[bool, typer.Option("--abort", help="kill at once, without a grace period")] = False,
    project: ProjectOption = None,
) -> None:
    """Stop a run."""
    from dstack.cli.runs import stop_run

    stop_run(run, abort=abort, project=project)


@app.command()
def attach(
    run: Annotated[str, typer.Argument(help="run name")],
    command: Annotated[str | None, typer.Option("--command", "-c", help="run this instead of a shell")] = None,
    project: ProjectOption = None,
) -> None:
    """Attach to a run: `ssh RUN` into its job, its `ports` forwarded, the IDE link (docs/attach.md)."""
    from dstack.cli.runs import attach_run

    raise typer.Exit(attach_run(run, command=command, project=project))


@app.command()
def config(
    url: Annotated[str, typer.Option(help="server URL, e.g. http://127.0.0.1:3000")],
    token: Annotated[str, typer.Option(help="your user token")],
    project: Annotated[str, typer.Option(help="project name")] = "main",
    default: Annotated[bool, typer.Option(help="make it the default project")] = True,
) -> None:
    """Add a server project to ~/.dstack/config.yml."""
    from dstack.cli.runs import configure

    configure(url=url, token=token, project=project, default=default)


@app.command()
def schema() -> None:
    """Print the JSON schema of .dstack.yml (for editor completion and validation)."""
    import json

    from dstack.core.config_parser import configuration_json_schema

    print(json.dumps(configuration_json_schema(), indent=2))


def _version(value: bool) -> None:
    if value:
        from dstack import __version__

        print(f"dstack {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print the version and exit")] = False) -> None:
    """dstack: run ML tasks on your own machine, AWS or Lambda Cloud."""


# Command groups: (module, Typer app). A command line names at most one; only that one is imported
# (all of them for the top-level help, or a command line that names none we know).
GROUPS = {"backend": ("dstack.cli.backends", "backend_app"), "secrets": ("dstack.cli.backends", "secrets_app"),
          "aws": ("dstack.cli.backends", "aws_app"), "artifacts": ("dstack.cli.artifacts", "artifacts_app"),
          "fleet": ("dstack.cli.fleets", "fleet_app"), "volume": ("dstack.cli.volumes", "volume_app")}


def _add_groups(argv: list[str]) -> None:
    import importlib

    word = next((a for a in argv[1:] if not a.startswith("-")), None)
    commands = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    if word in commands:
        return
    for name, (module, attribute) in GROUPS.items():
        if word in GROUPS and name != word:
            continue
        app.add_typer(getattr(importlib.import_module(module), attribute), name=name)


_add_groups(sys.argv)
