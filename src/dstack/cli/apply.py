"""`dstack apply`: plan, confirm, upload, submit, stream logs, exit with the job's code."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from rich.table import Table

from dstack.api.client import Client
from dstack.api.config import load_config
from dstack.cli.attach import Session, wait_attach_info
from dstack.cli.overrides import Overrides
from dstack.cli.ui import console, duration, offers_table
from dstack.core.errors import ConfigurationError, DstackError, NoOffersError
from dstack.core.runs import JobStatus, Run, RunPlan, RunSpec, status_text

OFFERS_SHOWN = 3


def apply_configuration(*, file: str, yes: bool, detach: bool, force: bool, project: str | None,
                        overrides: Overrides | None = None) -> int:
    if not Path(file).is_file():
        raise ConfigurationError(f"configuration file {file} not found", field="file",
                                 fix="Pass the right path with -f (relative to this directory), or create .dstack.yml")
    kind = _configuration_type(file)
    if kind == "fleet":  # no repo, no code: the fleet's own flow
        from dstack.cli.fleets import apply_fleet

        return apply_fleet(file=file, yes=yes, detach=detach, project=project)
    if kind == "volume":
        from dstack.cli.volumes import apply_volume

        return apply_volume(file=file, yes=yes, detach=detach, project=project)
    repo = load_config().repo_for(Path.cwd())
    if repo is None:
        raise DstackError(f"{Path.cwd()} is not in a dstack repo",
                          fix="Run `dstack init` in the directory whose code the runs get")
    client = Client.from_config(project or repo.project)
    # The code is the repo's (the directory `dstack init` ran in), also from a subdirectory of it.
    run_spec = client.runs.prepare(file, repo_dir=Path(repo.path), upload=False)
    if overrides is not None:
        run_spec = run_spec.model_copy(update={"configuration": overrides.apply(run_spec.configuration)})
    run_spec = _resolve_env(run_spec)
    # The code goes up while the server plans and the active run is looked up: by the time the plan
    # is confirmed it is there (an archive of the same content is stored once, even if not confirmed).
    with ThreadPoolExecutor(max_workers=2) as pool:
        uploading = pool.submit(client.runs.upload_sources, run_spec, repo_dir=Path(repo.path))
        looking_up = pool.submit(_active_run, client, run_spec.configuration.name)
        return _plan_confirm_submit(client, run_spec, uploading=uploading, looking_up=looking_up, yes=yes,
                                    force=force, detach=detach)


def _plan_confirm_submit(client: Client, run_spec: RunSpec, *, uploading: Future[RunSpec],
                         looking_up: Future[Run | None], yes: bool, force: bool, detach: bool) -> int:
    retry = run_spec.configuration.retry
    try:
        plan = client.runs.plan(run_spec)
        _print_plan(plan, client)
    except NoOffersError as exc:
        if not (retry and "no-capacity" in retry.on_events):
            raise
        # As upstream: with retry on no-capacity, the run is queued until capacity appears.
        console.print(f"No offers now ({exc}); the run waits for capacity (retry on no-capacity)", soft_wrap=True)
    active = looking_up.result()
    if active is not None and not force and \
            active.spec.configuration.model_dump() == run_spec.configuration.model_dump():
        # As upstream: re-applying what runs changes nothing, unless --force restarts it.
        console.print(f"Run {active.name} is {active.status.value} with this configuration already; nothing to "
                      "do (--force restarts it)")
        return 0
    # A service changes in place: its replicas roll over to the new configuration, no request fails.
    rolling = active is not None and active.spec.configuration.type == "service" and \
        run_spec.configuration.type == "service"
    if rolling and not yes:
        _confirm(f"Service {active.name} is {active.status.value}. Roll its replicas over to the new configuration?")
    elif active is not None and not yes:
        _confirm(f"Run {active.name} is {active.status.value}. Stop it and submit the new one?")
    elif not yes:
        _confirm("Submit the run?")
    if active is not None and not rolling:
        client.runs.stop(active.name)
        _wait_finished(client, active.name)
        console.print(f"Stopped the active run {active.name}")
    if not uploading.done():
        with console.status("Uploading code…"):
            uploading.result()
    run_spec = uploading.result()
    run = client.runs.submit(run_spec)
    if run.spec.configuration.type == "service":
        from dstack.cli.services import follow_service

        return follow_service(client, run, rolled=rolling, detach=detach)
    console.print(f"Run [bold]{run.name}[/] submitted")
    if run.status == JobStatus.SUBMITTED and run.reason and run.reason.startswith("scheduled"):
        console.print(f"{run.name}: {run.reason}. It runs on its schedule until `dstack stop {run.name}`")
        return 0
    if detach:
        console.print(f"Detached. Follow it with `dstack logs -f {run.name}`, stop it with `dstack stop {run.name}`")
        return 0
    return attach(client, run)


def _configuration_type(file: str) -> str | None:
    """The `type:` of a configuration file, read without validating the rest (that comes next)."""
    import yaml

    try:
        data = yaml.safe_load(Path(file).read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return None  # the full parse reports it, with the line
    return data.get("type") if isinstance(data, dict) else None


def _confirm(question: str) -> None:
    if not sys.stdin.isatty():
        raise DstackError("cannot ask for confirmation: standard input is not a terminal",
                          fix="Pass -y to submit without asking")
    import typer

    if not typer.confirm(question, default=True):
        console.print("Run not submitted")
        raise typer.Exit(0)


def _active_run(client: Client, name: str | None) -> Run | None:
    if name is None:
        return None
    try:
        run = client.runs.get(name)
    except DstackError:
        return None
    return None if run.status.finished else run


def _resolve_env(run_spec: RunSpec) -> RunSpec:
    """`env: [HF_TOKEN]` (no value) takes the value from this shell."""
    env = dict(run_spec.configuration.env)
    for key, value in env.items():
        if value is None:
            if key not in os.environ:
                raise ConfigurationError(f"env: {key} has no value and is not set in this shell",
                                         field=f"env.{key}", fix=f"export {key}=... or give it a value")
            env[key] = os.environ[key]
    configuration = run_spec.configuration.model_copy(update={"env": env})
    return run_spec.model_copy(update={"configuration": configuration})


def _print_plan(plan: RunPlan, client: Client) -> None:
    conf = plan.run_spec.configuration
    props = Table(box=None, show_header=False, pad_edge=False)
    props.add_column(style="bold")
    props.add_column()
    props.add_row("Project", plan.project)
    props.add_row("User", plan.user)
    props.add_row("Configuration", plan.run_spec.configuration_path)
    props.add_row("Type", conf.type)
    props.add_row("Resources", conf.resources.pretty())
    props.add_row("Spot policy", conf.spot_policy)
    props.add_row("Max price", f"${conf.max_price:g}" if conf.max_price else "off")
    props.add_row("Max duration", duration(conf.max_duration) if conf.max_duration else "off")
    console.print(props)
    console.print()
    console.print(offers_table(plan.offers[:OFFERS_SHOWN]))
    if plan.total_offers > OFFERS_SHOWN:
        console.print(f"Shown {OFFERS_SHOWN} of {plan.total_offers} offers, "
                      f"${plan.max_price:g} max")
    console.print()


def attach(client: Client, run: Run) -> int:
    try:
        with console.status(f"Waiting for {run.name} to start…") as status:
            while True:
                run = client.runs.get(run.name)
                if run.status not in (JobStatus.SUBMITTED, JobStatus.PROVISIONING):
                    break
                # The job's first lines may come before the server has seen it running: show them then.
                if client.runs.logs(run.name).events:
                    break
                status.update(f"{run.name}: {run.status.value}{f' ({run.reason})' if run.reason else ''}…")
                time.sleep(0.2)
        session = _ssh_session(client, run)
        try:
            for event in client.runs.follow_logs(run.name):
                sys.stdout.write(event.message + "\n")
                sys.stdout.flush()
        finally:
            if session is not None:
                session.close()
    except KeyboardInterrupt:
        return _interrupted(client, run)
    run = _wait_finished(client, run.name)
    console.print(f"\n{run.name}: {status_text(run.status, run.reason, run.exit_code)}. "
                  f"See {client.url}/projects/{client.project}/runs/{run.name}", soft_wrap=True)
    return exit_code_of(run)


def _ssh_session(client: Client, run: Run) -> Session | None:
    """A dev environment, or a task with `ports`: attached over SSH (config entry, IDE link, forwards)
    while its logs stream, as upstream's `dstack apply` is."""
    conf = run.spec.configuration
    if conf.type != "dev-environment" and not getattr(conf, "ports", None):
        return None
    try:
        info = wait_attach_info(client, run.name, timeout=30)
    except DstackError as exc:
        console.print(f"Not attached: {exc}", soft_wrap=True)
        return None
    session = Session(client, run.name, info, ask=True).start()
    for line in session.describe():
        console.print(line, soft_wrap=True)
    return session


def _wait_finished(client: Client, name: str) -> Run:
    while True:
        run = client.runs.get(name)
        if run.status.finished:
            return run
        time.sleep(0.2)


def exit_code_of(run: Run) -> int:
    if run.status == JobStatus.DONE:
        return 0
    if run.exit_code not in (None, 0):
        return int(run.exit_code)
    return 1


def _interrupted(client: Client, run: Run) -> int:
    import typer

    console.print()
    try:
        stop = sys.stdin.isatty() and typer.confirm(f"Stop the run {run.name} before detaching?", default=False)
    except (KeyboardInterrupt, typer.Abort):
        stop = False
    if stop:
        client.runs.stop(run.name)
        run = _wait_finished(client, run.name)
        console.print(f"{run.name}: {status_text(run.status, run.reason, run.exit_code)}")
        return exit_code_of(run)
    console.print(f"Detached; {run.name} goes on. Reattach with `dstack logs -f {run.name}`")
    return 130
