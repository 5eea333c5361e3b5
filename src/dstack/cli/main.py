"""`dstack` command line. Heavy modules are imported inside commands to keep start-up fast."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="dstack: run ML tasks on your own machine, AWS or Lambda Cloud.")


@app.command()
def server(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 3000,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "warning",
) -> None:
    """Start the dstack server (state in ~/.dstack/server)."""
    from dstack.cli.server import run_server

    run_server(host=host, port=port, log_level=log_level)


@app.command()
def init(project: Annotated[str | None, typer.Option(help="project to use (default: the config's)")] = None) -> None:
    """Make the current directory a dstack repo of the project."""
    from dstack.cli.runs import init_repo

    init_repo(project)


@app.command()
def apply(
    file: Annotated[str, typer.Option("-f", "--file", help="configuration file")] = ".dstack.yml",
    yes: Annotated[bool, typer.Option("-y", "--yes", help="do not ask for confirmation")] = False,
    detach: Annotated[bool, typer.Option("-d", "--detach", help="submit and exit")] = False,
    project: Annotated[str | None, typer.Option(help="project (default: the repo's)")] = None,
) -> None:
    """Show the plan, submit the run and stream its logs."""
    from dstack.cli.apply import apply_configuration

    raise typer.Exit(apply_configuration(file=file, yes=yes, detach=detach, project=project))


@app.command()
def ps(
    all: Annotated[bool, typer.Option("-a", "--all", help="show finished runs too")] = False,
    watch: Annotated[bool, typer.Option("-w", "--watch", help="refresh every 2 seconds")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="show provisioning attempts")] = False,
    project: Annotated[str | None, typer.Option(help="project")] = None,
) -> None:
    """List runs."""
    from dstack.cli.runs import show_runs

    show_runs(all=all, watch=watch, verbose=verbose, project=project)


@app.command()
def logs(
    run: Annotated[str, typer.Argument(help="run name")],
    follow: Annotated[bool, typer.Option("-f", "--follow", help="wait for new lines until the run ends")] = False,
    project: Annotated[str | None, typer.Option(help="project")] = None,
) -> None:
    """Print a run's logs."""
    from dstack.cli.runs import print_logs

    print_logs(run, follow=follow, project=project)


@app.command()
def stop(
    run: Annotated[str, typer.Argument(help="run name")],
    abort: Annotated[bool, typer.Option("--abort", help="kill at once, without a grace period")] = False,
    project: Annotated[str | None, typer.Option(help="project")] = None,
) -> None:
    """Stop a run."""
    from dstack.cli.runs import stop_run

    stop_run(run, abort=abort, project=project)


@app.command()
def attach(
    run: Annotated[str, typer.Argument(help="run name")],
    command: Annotated[str | None, typer.Option("--command", "-c", help="run this instead of a shell")] = None,
    project: Annotated[str | None, typer.Option(help="project")] = None,
) -> None:
    """Open a shell on the run's instance over SSH (with your key, ~/.dstack/ssh/id_ed25519)."""
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


def _add_groups() -> None:
    from dstack.cli.backends import aws_app, backend_app, secrets_app

    app.add_typer(backend_app, name="backend")
    app.add_typer(secrets_app, name="secrets")
    app.add_typer(aws_app, name="aws")


_add_groups()


def main() -> None:
    from dstack.core.errors import DstackError

    try:
        app(standalone_mode=True)
    except DstackError as exc:
        from dstack.cli.ui import error

        error(str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
