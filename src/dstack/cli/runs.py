"""`dstack init`, `ps`, `logs`, `stop`, `config`."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.table import Table

from dstack.api.client import Client
from dstack.api.config import ProjectConfig, RepoConfig, load_config, save_config
from dstack.cli.ui import ago, console, duration
from dstack.core.runs import Run, status_text

STATUS_STYLE = {"done": "green", "failed": "red", "running": "cyan", "stopped": "yellow", "terminated": "yellow"}


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
    client = Client(url=url, token=token, project=project)
    client.projects.get(project)  # checks the URL, the token and the membership before saving
    config = load_config()
    config.set_project(ProjectConfig(name=project, url=url, token=token, default=default))
    save_config(config)
    console.print(f"OK: project [bold]{project}[/] at {url} saved in the config")


def runs_table(runs: list[Run], *, verbose: bool = False) -> Table:
    now = datetime.now(UTC)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("NAME", "BACKEND", "INSTANCE", "RESOURCES", "PRICE", "STATUS", "SUBMITTED", "DURATION"):
        table.add_column(column, no_wrap=column != "RESOURCES")
    for run in runs:
        job = run.job
        offer = job.offer if job else None
        status = status_text(run.status, run.reason, run.exit_code)
        style = STATUS_STYLE.get(run.status.value, "")
        table.add_row(
            run.name,
            offer.backend if offer else "",
            offer.instance_type if offer else "",
            offer.resources.pretty() if offer else run.spec.configuration.resources.pretty(),
            f"${offer.price:.4f}" if offer else "",
            f"[{style}]{status}[/]" if style else status,
            ago(run.submitted_at),
            duration(run.duration_seconds(now)),
        )
        if verbose and job:
            for attempt in job.attempts:
                mark = "launched" if attempt.ok else f"failed: {attempt.reason}"
                table.add_row("  attempt", attempt.backend, attempt.instance_type, attempt.region,
                              f"${attempt.price:.4f}", mark, ago(attempt.at), "")
            for event in job.history:
                if event.reason and event.status.value == "provisioning":  # e.g. an image pull's progress
                    table.add_row("  event", "", "", "", "", event.reason, ago(event.at), "")
    return table


def show_runs(*, all: bool, watch: bool, verbose: bool, project: str | None) -> None:
    client = client_for(project)
    if not watch:
        console.print(runs_table(client.runs.list(all=all), verbose=verbose))
        return
    from rich.live import Live

    try:
        with Live(runs_table(client.runs.list(all=all), verbose=verbose), console=console,
                  auto_refresh=False) as live:
            while True:
                time.sleep(2)
                live.update(runs_table(client.runs.list(all=all), verbose=verbose), refresh=True)
    except KeyboardInterrupt:
        pass


def print_logs(run_name: str, *, follow: bool, project: str | None) -> None:
    client = client_for(project)
    client.runs.get(run_name)  # a clear "does not exist" before anything else
    try:
        for event in client.runs.follow_logs(run_name, follow=follow):
            sys.stdout.write(event.message + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


def attach_run(run_name: str, *, command: str | None, project: str | None) -> int:
    import subprocess

    from dstack.core.hostkeys import pinned_ssh_options, write_known_hosts
    from dstack.core.sshkeys import user_key

    info = client_for(project).runs.attach_info(run_name)
    key, _ = user_key()
    # Exactly the host keys the instance's agent published through the bucket: a changed key is refused.
    known_hosts = write_known_hosts(Path.home() / ".dstack" / "ssh" / f"known_hosts-{run_name}", info["host"],
                                    int(info["port"]), list(info.get("host_keys") or []))
    args = ["ssh", "-i", str(key), "-p", str(info["port"]), *pinned_ssh_options(known_hosts),
            "-o", "IdentitiesOnly=yes", f"{info['user']}@{info['host']}"]
    if command:
        args += ["-o", "BatchMode=yes", command]
    return subprocess.call(args)


def stop_run(run_name: str, *, abort: bool, project: str | None) -> None:
    client = client_for(project)
    client.runs.stop(run_name, abort=abort)
    console.print(f"Stopping [bold]{run_name}[/]…")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = client.runs.get(run_name)
        if run.status.finished:
            console.print(f"{run_name}: {status_text(run.status, run.reason, run.exit_code)}")
            return
        time.sleep(0.3)
    console.print(f"{run_name} is still stopping; see `dstack ps`")
