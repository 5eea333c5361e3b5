"""Console output shared by the commands."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from rich.table import Table

    from dstack.core.runs import Offer

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def ago(moment: datetime) -> str:
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    if seconds < 60:
        return f"{max(seconds, 0)} sec ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"


def offers_table(offers: list[Offer]) -> Table:
    """The plan's offers, numbered, cheapest first; an idle fleet instance is marked `(idle)`."""
    from rich.table import Table  # noqa: PLC0415 - not on every command's path

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("#", "BACKEND", "REGION", "INSTANCE", "RESOURCES", "SPOT", "PRICE"):
        table.add_column(column)
    for i, offer in enumerate(offers, start=1):
        instance = f"{offer.instance_type} (idle)" if offer.availability == "idle" else offer.instance_type
        table.add_row(str(i), offer.backend, offer.region, instance, offer.resources.pretty(),
                      "yes" if offer.spot else "no", f"${offer.price:.4f}")
    return table
