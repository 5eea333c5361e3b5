"""Options every command shares, described once."""

from __future__ import annotations

from typing import Annotated

import typer

# The project this directory was initialized with, else the config's default.
ProjectOption = Annotated[str | None, typer.Option(
    "-P", "--project", help="the project (default: this directory's, from `dstack init`, else the config's default)")]
