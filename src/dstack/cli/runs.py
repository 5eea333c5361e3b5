"""`dstack init`, `ps`, `logs`, `stop`, `config`."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from dstack.api.client import Client
from dstack.api.config import ProjectConfig, RepoConfig, load_config, save_config
from dstack.cli.ui import console


def client_for(project: str | None) -> Client:
    """The client for `project`, or for the project this directory was initialized with."""
    if project is None:
        repo = load_config().repo_for(Path.cwd())
        project = repo.project if repo else None
    return Client.from_config(project)


def init_repo(project: str | None) -> None:
    from dstack.api.code import repo_id_for

    client = Client.from_config(project)
    path = Path.cwd().resolve()
    repo_id = repo_id_for(path)
    is_git = (path / ".git").exists()
    client.repos.init(repo_id, {"path": str(path), "git": is_git})
    config = load_config()
    config.set_repo(RepoConfig(path=str(path), repo_id=repo_id, project=client.project))
    save_config(config)
    console.print(f"OK: {path} is a dstack repo of project [bold]{client.project}[/] ({client.url})")


def configure(*, url: str, token: str, project: str, default: bool) -> None:
    from dstack.core.errors import AuthenticationError

    client = Client(url=url, token=token, project=project)
    try:
        client.projects.get(project)  # checks the URL, the token and the membership before saving
    except AuthenticationError as exc:
        raise AuthenticationError(f"the server at {url} does not accept this token", field="token",
                                  fix="Copy your token again: the server prints the admin's at its first start; "
                                      "the UI's Users page issues new ones") from exc
    config = load_config()
    config.set_project(ProjectConfig(name=project, url=url, token=token, default=default))
    save_config(config)
    console.print(f"OK: project [bold]{project}[/] at {url} saved in the config")


def show_runs(*, all: bool, last: int | None, watch: bool, verbose: bool, project: str | None) -> None:
    from dstack.cli.ps import fetch_runs, runs_table

    client = client_for(project)

    def fetch() -> list[dict[str, Any]]:
        return fetch_runs(lambda path, params: client.json("GET", path, params=params), client.project,
                          all=all, last=last)

    if not watch:
        console.print(runs_table(fetch(), verbose=verbose))
        return
    from rich.live import Live

    try:
        with Live(runs_table(fetch(), verbose=verbose), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(2)
                live.update(runs_table(fetch(), verbose=verbose), refresh=True)
    except KeyboardInterrupt:
        pass


def print_logs(run_name: str, *, follow: bool, project: str | None, job: int | None = None,
               replica: int = 0) -> None:
    client = client_for(project)
    run = client.runs.get(run_name)  # a clear "does not exist" before anything else
    if run.spec.configuration.type == "service":
        job = replica if job is None else job  # a service's jobs are its replicas
    elif replica:  # tasks and dev environments have one replica
        from dstack.core.errors import ResourceNotFoundError

        raise ResourceNotFoundError(f"run {run_name!r} has no replica {replica} (it has 1)", field="replica",
                                    fix=f"Drop --replica, or see the nodes with `dstack logs {run_name} --job N`")
    try:
        for event in client.runs.follow_logs(run_name, follow=follow, job=job):
            sys.stdout.write(event.message + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


def attach_run(run_name: str, *, command: str | None, project: str | None) -> int:
    """Write the run's SSH config entry (pinned host key), then run `command` there, or forward its
    ports and keep the connection until the run ends or Ctrl-C."""
    import subprocess

    from dstack.cli.attach import Session, ssh_command, wait_attach_info

    client = client_for(project)
    info = wait_attach_info(client, run_name)
    session = Session(client, run_name, info, ask=command is None)
    if command:
        return subprocess.call(ssh_command(run_name, "-o", "BatchMode=yes", command=command))
    session.start()
    for line in session.describe():
        console.print(line, soft_wrap=True)
    console.print(f"Attached to {run_name}; Ctrl-C detaches (the run goes on)")
    try:
        while session.alive():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
    run = client.runs.get(run_name)
    if run.status.finished:
        console.print(f"{run_name}: {run.status_line()}")
    return 0


def stop_run(run_name: str, *, abort: bool, project: str | None) -> None:
    client = client_for(project)
    client.runs.stop(run_name, abort=abort)
    console.print(f"Stopping [bold]{run_name}[/]…")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = client.runs.get(run_name)
        if run.status.finished:
            console.print(f"{run_name}: {run.status_line()}")
            return
        time.sleep(0.3)
    console.print(f"{run_name} is still stopping; see `dstack ps`")


def delete_configuration(*, file: str, yes: bool, project: str | None) -> None:
    """What `dstack delete -f` does with each configuration type."""
    from dstack.core.config_parser import parse_configuration
    from dstack.core.configurations import RUN_TYPES
    from dstack.core.errors import ConfigurationError, DstackError
    from dstack.core.infra_configurations import infra_not_supported

    path = Path(file)
    if not path.is_file():
        raise DstackError(f"configuration file {path} not found", fix="Pass the right path with -f")
    conf = parse_configuration(path.read_text(), str(path))
    if conf.type == "fleet":
        if conf.name is None:
            raise ConfigurationError(f"{path}: has no `name`, so it names no fleet to delete", field="name",
                                     fix="Delete a fleet by its name with `dstack delete NAME` (see `dstack fleet`)")
        from dstack.cli.fleets import delete_fleet

        delete_fleet(name=conf.name, yes=yes, project=project)
        return
    if conf.type == "volume":
        if conf.name is None:
            raise ConfigurationError(f"{path}: has no `name`, so it names no volume to delete", field="name",
                                     fix="Delete a volume by its name with `dstack volume delete NAME`")
        from dstack.cli.volumes import delete_volume

        delete_volume(name=conf.name, yes=yes, project=project)
        return
    if conf.type not in RUN_TYPES:
        raise ConfigurationError(f"{path}: not supported yet: {infra_not_supported(conf)[0]}", field="type")
    if conf.name is None:
        raise ConfigurationError(f"{path}: has no `name`, so it defines no run to delete",
                                 field="name", fix="Stop a run by its name with `dstack stop NAME`")
    client = client_for(project)
    run = client.runs.get(conf.name)
    if run.status.finished:
        console.print(f"Run {run.name} has already finished ({run.status.value}); nothing to delete")
        return
    if not yes:
        import typer

        if not sys.stdin.isatty():
            raise DstackError("cannot ask for confirmation: standard input is not a terminal", fix="Pass -y")
        if not typer.confirm(f"Stop the run {run.name}?", default=True):
            return
    client.runs.stop(run.name)
    console.print(f"Stopping {run.name}")


def metrics_table(run: str, metrics: object) -> Table:
    from dstack.core.runs import RunMetrics

    assert isinstance(metrics, RunMetrics)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("RUN", "CPU", "MEMORY", "GPU", "GPU UTIL", "GPU MEMORY"):
        table.add_column(column)
    sample = metrics.samples[-1] if metrics.samples else None
    if sample is None:
        table.add_row(run, "-", "-", "-", "-", "-")
        return table
    cpu = f"{sample.cpu_percent:g}%" if sample.cpu_percent is not None else "-"
    memory = f"{(sample.memory_used_mb or 0) / 1024:.1f}/{(sample.memory_total_mb or 0) / 1024:.1f} GB" \
        if sample.memory_total_mb else "-"
    if not sample.gpus:
        table.add_row(run, cpu, memory, "-", "-", "-")
    for i, gpu in enumerate(sample.gpus):
        gpu_memory = f"{(gpu.memory_used_mb or 0) / 1024:.1f}/{(gpu.memory_total_mb or 0) / 1024:.1f} GB" \
            if gpu.memory_total_mb else "-"
        table.add_row(run if i == 0 else "", cpu if i == 0 else "", memory if i == 0 else "", str(i),
                      f"{gpu.util:g}%" if gpu.util is not None else "-", gpu_memory)
    return table


def show_metrics(name: str, *, watch: bool, project: str | None) -> None:
    client = client_for(project)
    if not watch:
        console.print(metrics_table(name, client.runs.metrics(name)))
        return
    from rich.live import Live

    with Live(console=console, auto_refresh=False) as live:
        while True:
            live.update(metrics_table(name, client.runs.metrics(name)), refresh=True)
            if client.runs.get(name).status.finished:
                return
            time.sleep(2)


def register_repo_credentials(*, project: str | None, url: str | None, token: str | None, username: str | None,
                              git_identity: str | None) -> None:
    """Credentials for cloning a private repo URL. An SSH identity goes with the host keys this machine
    already trusts for that host (~/.ssh/known_hosts): the instance pins them, never accepts blindly."""
    import subprocess

    from dstack.core.errors import ConfigurationError

    if url is None:
        origin = subprocess.run(["git", "config", "--get", "remote.origin.url"], capture_output=True, text=True)
        url = origin.stdout.strip()
        if origin.returncode != 0 or not url:
            raise ConfigurationError("--repo: this directory has no git origin", field="repo",
                                     fix="Give the repo URL with --repo")
    private_key, known_hosts = None, []
    if git_identity:
        private_key = Path(git_identity).expanduser().read_text()
        host = url.split("@", 1)[-1].split(":", 1)[0] if "://" not in url else url.split("://", 1)[1].split("/")[0]
        host = host.split("@")[-1]
        found = subprocess.run(["ssh-keygen", "-F", host.split(":")[0]], capture_output=True, text=True)
        known_hosts = [line for line in found.stdout.splitlines() if line and not line.startswith("#")]
        if not known_hosts:
            raise ConfigurationError(f"--git-identity: {host} is not in ~/.ssh/known_hosts, so its host key cannot "
                                     "be pinned", field="git_identity", fix=f"Connect once: ssh -T git@{host}")
    client = client_for(project)
    client.repos.set_credentials(url, token=token, username=username, private_key=private_key,
                                 known_hosts=known_hosts)
    console.print(f"OK: credentials for {url} saved in project [bold]{client.project}[/]")
