"""`dstack offer`: what the project's backends offer for a configuration, or for flags alone."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from dstack.cli.overrides import Overrides
from dstack.cli.runs import client_for
from dstack.cli.ui import console
from dstack.core.configurations import TaskConfiguration
from dstack.core.runs import RunSpec


def show_offers(*, file: str | None, overrides: Overrides, max_offers: int, json_output: bool,
                project: str | None) -> None:
    client = client_for(project)
    if file is not None:
        run_spec = client.runs.prepare(file, repo_dir=Path.cwd(), upload=False)
    else:  # the flags alone: a task asking for just that
        run_spec = RunSpec(configuration=TaskConfiguration(type="task", commands=[":"]), repo_id="offer",
                           configuration_path="(flags)")
    conf = overrides.apply(run_spec.configuration)
    plan = client.runs.plan(run_spec.model_copy(update={"configuration": conf}))
    offers = plan.offers[:max_offers]
    if json_output:
        print(json.dumps({"project": plan.project, "resources": conf.resources.pretty(),
                          "total_offers": plan.total_offers,
                          "offers": [o.model_dump(mode="json") for o in offers]}, indent=2))
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("#", "BACKEND", "REGION", "INSTANCE TYPE", "RESOURCES", "SPOT", "PRICE"):
        table.add_column(column)
    for i, offer in enumerate(offers, start=1):
        table.add_row(str(i), offer.backend, offer.region, offer.instance_type, offer.resources.pretty(),
                      "yes" if offer.spot else "no", f"${offer.price:.4f}")
    console.print(f"Project {plan.project}, resources {conf.resources.pretty()}")
    console.print(table)
    if plan.total_offers > len(offers):
        console.print(f"Shown {len(offers)} of {plan.total_offers} offers (--max-offers to see more)")
