"""`dstack ps`: the runs table, made from the server's JSON as it comes (no models).

`ps` is the command run most often, and in loops (`watch dstack ps`, scripts): `quick_ps` answers it
with the standard library's HTTP client and this table, without typer, httpx or pydantic, which are
most of what a command costs to start. Options it does not know as plain (`--help`, `-w`, a typo)
go to the typer command (dstack/cli/commands.py), which shows the same table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dstack.core.pretty import instance_resources_text, resources_spec_text, status_text

STATUS_STYLE = {"done": "green", "failed": "red", "running": "cyan", "stopped": "yellow", "terminated": "yellow"}
PAGE = 500
# GET path and query -> the decoded JSON answer (errors raised as DstackError).
GetJSON = Callable[[str, dict[str, str]], Any]


def one_line(text: str, width: int = 60) -> str:
    """A reason for a table cell: one line, at most `width` characters (`dstack ps -v` shows it all)."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1].rstrip() + "…"


def fetch_runs(get_json: GetJSON, project: str, *, all: bool, last: int | None) -> list[dict[str, Any]]:
    """Active runs and the latest finished one; with `all` or `last`, every run (or the last N),
    newest first, a page at a time."""
    path = f"/api/projects/{project}/runs"
    if not (all or last):
        return get_json(path, {"all": "false", "limit": "1000"})
    return list(_pages(get_json, path, last))


def _pages(get_json: GetJSON, path: str, last: int | None) -> Iterator[dict[str, Any]]:
    before, seen = None, 0
    while last is None or seen < last:
        size = min(PAGE, last - seen) if last else PAGE
        runs = get_json(path, {"all": "true", "limit": str(size), **({"before": before} if before else {})})
        yield from runs
        seen += len(runs)
        if len(runs) < PAGE:
            return
        before = runs[-1]["submitted_at"]


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def master_job(run: dict[str, Any]) -> dict[str, Any] | None:
    """The run's job: the master node's (a service: replica 0's), of its latest submission (as
    `Run.job`)."""
    jobs = run.get("jobs") or []
    first = [j for j in jobs if j.get("job_num", 0) == 0] or jobs
    return max(first, key=lambda j: j["submission"]) if first else None


def duration_seconds(job: dict[str, Any] | None, now: datetime) -> float | None:
    started = _time(job.get("started_at")) if job else None
    if job is None or started is None:
        return None
    return max(0.0, ((_time(job.get("finished_at")) or now) - started).total_seconds())


def _offer_cells(offer: dict[str, Any] | None) -> list[str]:
    """BACKEND, INSTANCE, RESOURCES and PRICE of a job's offer (blank without one)."""
    if not offer:
        return ["", "", "", ""]
    return [f"{offer['backend']} ({offer['region']})", offer["instance_type"],
            instance_resources_text(offer["resources"]), f"${offer['price']:.4f}"]


def runs_table(runs: list[dict[str, Any]], *, verbose: bool = False) -> Any:
    from rich.markup import escape
    from rich.table import Table

    from dstack.cli.ui import ago, duration

    now = datetime.now(UTC)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("NAME", "USER", "BACKEND", "INSTANCE", "RESOURCES", "PRICE", "STATUS", "SUBMITTED", "DURATION"):
        table.add_column(column, no_wrap=column not in ("RESOURCES", "STATUS"), overflow="fold")
    for run in runs:
        job = master_job(run)
        offer = job.get("offer") if job else None
        reason = run.get("reason")
        reason = reason if verbose or not reason else one_line(reason)
        status = escape(status_text(run["status"], reason, run.get("exit_code")))
        style = STATUS_STYLE.get(run["status"], "")
        backend, instance, resources, price = _offer_cells(offer)
        table.add_row(
            escape(run["name"]), escape(run["user"]), backend, instance,
            resources or resources_spec_text(run["spec"]["configuration"]["resources"]), price,
            f"[{style}]{status}[/]" if style else status,
            ago(_time(run["submitted_at"])),  # type: ignore[arg-type]
            duration(duration_seconds(job, now)),
        )
        if run.get("service") is not None:  # a service: a row per replica, as upstream's `dstack ps` shows them
            jobs = {j["name"]: j for j in run.get("jobs") or []}
            for replica in run["service"].get("replicas") or []:
                rjob = jobs.get(replica["job"])
                state = replica["status"] + (" · ready" if replica.get("ready") else "")
                if replica["deployment"] != run.get("deployment", 0):
                    state += f" · deployment {replica['deployment']}"
                table.add_row(f"  replica {replica['replica']}", "",
                              *_offer_cells(rjob.get("offer") if rjob else None), escape(state),
                              ago(_time(rjob["submitted_at"])) if rjob else "", "")  # type: ignore[arg-type]
        if verbose and job:
            for attempt in job.get("attempts") or []:
                mark = "launched" if attempt["ok"] else f"failed: {attempt.get('reason')}"
                table.add_row("  attempt", "", f"{attempt['backend']} ({attempt['region']})",
                              attempt["instance_type"], "", f"${attempt['price']:.4f}", escape(mark),
                              ago(_time(attempt["at"])), "")  # type: ignore[arg-type]
            for event in job.get("history") or []:
                if event.get("reason") and event["status"] == "provisioning":  # e.g. an image pull's progress
                    table.add_row("  event", "", "", "", "", "", escape(event["reason"]),
                                  ago(_time(event["at"])), "")  # type: ignore[arg-type]
    return table


def plain_options(argv: list[str]) -> dict[str, Any] | None:
    """`ps`'s options as {all, last, verbose, project} when they are plain (-a, -v, -n N, -P NAME and
    their long forms); None for anything else (`--help`, `-w`, a typo), which typer answers."""
    options: dict[str, Any] = {"all": False, "last": None, "verbose": False, "project": None}
    args = iter(argv)
    for arg in args:
        name, eq, value = arg.partition("=")
        if arg in ("-a", "--all"):
            options["all"] = True
        elif arg in ("-v", "--verbose"):
            options["verbose"] = True
        elif name in ("-n", "--last", "-P", "--project"):
            value = value if eq else next(args, "")
            key = "last" if name in ("-n", "--last") else "project"
            if key == "last":
                if not value.isdigit() or int(value) < 1:
                    return None  # typer says what is wrong with it
                options["last"] = int(value)
            elif value and not value.startswith("-"):
                options["project"] = value
            else:
                return None
        else:
            return None
    return options


def quick_ps(argv: list[str]) -> bool:
    """Answer `dstack ps ARGV` here if its options are plain and the server is plain http; False to
    leave it to the typer command."""
    options = plain_options(argv)
    if options is None:
        return False
    from dstack.api.config import load_config

    config = load_config()
    project = options["project"]
    if project is None:
        repo = config.repo_for(Path.cwd())
        project = repo.project if repo else None
    entry = config.project(project)
    if not entry.url.startswith("http://"):
        return False  # https: certificates as httpx checks them, in the typer command
    from dstack.api.plain_http import get_json

    def get(path: str, params: dict[str, str]) -> Any:
        return get_json(entry.url, entry.token, path, params)

    runs = fetch_runs(get, entry.name, all=options["all"], last=options["last"])
    from dstack.cli.ui import console

    console.print(runs_table(runs, verbose=options["verbose"]))
    return True
