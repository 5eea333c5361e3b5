"""What checking a backend's config form returns (shared by backends, the server and clients)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from dstack.core.base import CoreModel


class FieldError(CoreModel):
    field: str | None
    message: str


class BackendCheck(CoreModel):
    """Errors by field, and choices for fields (a field whose choices are null is typed in by hand)."""

    ok: bool
    errors: list[FieldError] = Field(default_factory=list)
    choices: dict[str, list[Any] | None] = Field(default_factory=dict)
    notes: list[dict[str, Any]] = Field(default_factory=list, description="help shown beside the form")
