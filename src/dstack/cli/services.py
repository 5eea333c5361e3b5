"""`dstack apply` of a service: where it is served, then its replicas coming up (or rolling over to a
new deployment), then replica 0's logs until Ctrl-C (the service goes on: `dstack stop` ends it)."""

from __future__ import annotations

import sys
import time

from dstack.api.client import Client
from dstack.cli.ui import console
from dstack.core.runs import Run


def service_urls(client: Client, run: Run) -> list[str]:
    info = run.service
    if info is None:
        return []
    lines = [f"Service {run.name} is served at {client.url}{info.url}" +
             ("" if info.auth else " (no token needed: auth: false)")]
    if info.model_url:
        lines.append(f"Model {info.model} is served at {client.url}{info.model_url} (OpenAI-compatible: "
                     f"POST …/chat/completions with \"model\": \"{info.model}\")")
    if info.auth:
        lines.append("Pass your dstack token: Authorization: Bearer TOKEN (any member of the project)")
    return lines


def follow_service(client: Client, run: Run, *, rolled: bool, detach: bool) -> int:
    what = f"updated: deployment {run.deployment}" if rolled else "submitted"
    console.print(f"Service [bold]{run.name}[/] {what}")
    for line in service_urls(client, run):
        console.print(line, soft_wrap=True)
    if detach:
        console.print(f"Detached. See it with `dstack ps`, its logs with `dstack logs {run.name} --replica N`, "
                      f"stop it with `dstack stop {run.name}`")
        return 0
    try:
        run = _wait_rolled_out(client, run)
        if run.status.finished:
            console.print(f"{run.name}: {run.status_line()}", soft_wrap=True)
            return 1
        if rolled or not run.jobs:
            return 0
        console.print(f"Replica 0's logs follow (Ctrl-C detaches; the service goes on until `dstack stop {run.name}`)")
        for event in client.runs.follow_logs(run.name):
            sys.stdout.write(event.message + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        console.print(f"\nDetached; {run.name} goes on. Stop it with `dstack stop {run.name}`")
        return 0
    run = client.runs.get(run.name)
    console.print(f"\n{run.name}: {run.status_line()}", soft_wrap=True)
    return 0 if not run.status.finished or run.status.value == "stopped" else 1


def _wait_rolled_out(client: Client, run: Run) -> Run:
    """Until every replica the service wants runs the latest deployment and is ready (or it ended)."""
    last = ""
    with console.status(f"Waiting for {run.name}'s replicas…") as status:
        while True:
            run = client.runs.get(run.name)
            info = run.service
            if run.status.finished or info is None:
                return run
            current = [r for r in info.replicas if r.deployment == run.deployment]
            ready = sum(r.ready for r in current)
            line = f"{run.name}: {ready}/{info.desired} replicas ready"
            if len(info.replicas) > len(current):
                line += f", {len(info.replicas) - len(current)} of the previous deployment"
            if info.desired == 0:
                console.print(f"{run.name}: scaled to zero; the first request starts a replica")
                return run
            if ready >= info.desired and len(info.replicas) == len(current):
                console.print(line)
                return run
            if line != last:
                status.update(line + (f" ({run.reason})" if run.reason else "") + "…")
                last = line
            time.sleep(0.5)
