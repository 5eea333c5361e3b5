"""`dstack backend …`, `dstack secrets …` and `dstack aws iam-policy`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dstack.cli.options import ProjectOption

backend_app = typer.Typer(no_args_is_help=True, help="Manage the project's backends.")
secrets_app = typer.Typer(no_args_is_help=True, help="Manage the project's secrets (injected into jobs as env vars).")
aws_app = typer.Typer(no_args_is_help=True, help="AWS helpers.")

ProjectOpt = ProjectOption
FileOpt = Annotated[Path, typer.Option("-f", "--file", help="YAML file with the backend's fields")]


def _read_config(file: Path) -> dict[str, Any]:
    import yaml

    from dstack.core.errors import ConfigurationError

    try:
        data = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"{file} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{file}: invalid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{file}: expected a mapping of the backend's fields, with `type`")
    return data


def _print_check(result: Any) -> None:
    from dstack.cli.ui import console

    for err in result.errors:
        console.print(f"[red]✗[/] {err.field or 'config'}: {err.message}", soft_wrap=True)
    for field, choices in result.choices.items():
        if choices is None:
            console.print(f"  {field}: (type it in: it cannot be listed with these credentials)")
        elif choices:
            shown = [c["value"] if isinstance(c, dict) else c for c in choices]
            console.print(f"  {field}: {', '.join(shown[:12])}{' …' if len(shown) > 12 else ''}", soft_wrap=True)
    if result.ok:
        console.print("[green]✓[/] the backend's settings work")


@backend_app.command("check")
def check(file: FileOpt, project: ProjectOpt = None) -> None:
    """Check a backend's settings against the cloud and list the choices for its fields."""
    from dstack.cli.runs import client_for

    result = client_for(project).backends.check(_read_config(file))
    _print_check(result)
    if not result.ok:
        raise typer.Exit(1)


@backend_app.command("add")
def add(file: FileOpt, project: ProjectOpt = None,
        update: Annotated[bool, typer.Option(help="replace the backend of that type")] = False) -> None:
    """Add (or with --update, replace) a backend from a YAML file of its fields."""
    from dstack.cli.runs import client_for
    from dstack.cli.ui import console
    from dstack.core.errors import ResourceExistsError

    client = client_for(project)
    config = _read_config(file)
    try:
        (client.backends.update if update else client.backends.add)(config)
    except ResourceExistsError as exc:
        exc.fix = f"Replace it with `dstack backend add -f {file} --update`, or delete it first"
        raise
    console.print(f"OK: project {client.project} has the {config.get('type')} backend")


@backend_app.command("list")
def list_backends(project: ProjectOpt = None) -> None:
    """List the project's backends (secrets masked)."""
    import yaml

    from dstack.cli.runs import client_for
    from dstack.cli.ui import console

    for backend in client_for(project).backends.list():
        console.print(yaml.safe_dump(backend["config"], sort_keys=False).rstrip() + "\n")


@backend_app.command("delete")
def delete(backend_type: Annotated[str, typer.Argument(help="local, aws, …")], project: ProjectOpt = None) -> None:
    """Delete the project's backend of that type."""
    from dstack.cli.runs import client_for
    from dstack.cli.ui import console

    client_for(project).backends.delete(backend_type)
    console.print(f"OK: the {backend_type} backend is deleted")


@secrets_app.command("set")
def set_secret(name: str, value: Annotated[str | None, typer.Argument(help="the value (asked if omitted)")] = None,
               project: ProjectOpt = None) -> None:
    """Set a secret; jobs get it as the env var NAME. The value is never shown back."""
    from dstack.cli.runs import client_for
    from dstack.cli.ui import console

    if value is None:
        import sys

        if sys.stdin.isatty():
            value = typer.prompt(f"Value of {name}", hide_input=True)
        else:  # piped in (`echo "$TOKEN" | dstack secrets set NAME`): one line, without its newline
            value = sys.stdin.readline().rstrip("\r\n")
            if not value:
                raise typer.BadParameter("the value read from standard input is empty", param_hint="VALUE")
    client_for(project).secrets.set(name, value)
    console.print(f"OK: secret {name} is set")


@secrets_app.command("list")
def list_secrets(project: ProjectOpt = None) -> None:
    """List secret names (never values)."""
    from dstack.cli.runs import client_for
    from dstack.cli.ui import console

    for name in client_for(project).secrets.list():
        console.print(name)


@secrets_app.command("delete")
def delete_secret(name: str, project: ProjectOpt = None) -> None:
    """Delete a secret; later jobs no longer get it."""
    from dstack.cli.runs import client_for
    from dstack.cli.ui import console

    client_for(project).secrets.delete(name)
    console.print(f"OK: secret {name} is deleted")


@aws_app.command("iam-policy")
def iam_policy(bucket: Annotated[str, typer.Option(help="the S3 bucket of the backend")],
               with_: Annotated[str | None, typer.Option(
                   "--with", help="optional features to grant too, comma-separated: volumes, clusters, "
                                  "reservations")] = None,
               ) -> None:
    """Print the least-privilege IAM policy for the AWS backend, filled in for BUCKET (with
    `--with`, plus the optional statements of those features)."""
    import json

    from dstack.backends.aws.iam_policy import OPTIONAL_ACTIONS, policy, render
    from dstack.cli.ui import error

    if not with_:
        print(render(bucket), end="")  # the seed's template, byte for byte
        return
    features = [f.strip() for f in with_.split(",") if f.strip()]
    unknown = [f for f in features if f not in OPTIONAL_ACTIONS]
    if unknown:
        error(f"--with: unknown feature {', '.join(unknown)}; choose from {', '.join(OPTIONAL_ACTIONS)}")
        raise typer.Exit(2)
    print(json.dumps(policy(bucket, features), indent=4))
