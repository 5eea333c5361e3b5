"""The base of dstack's models."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class CoreModel(BaseModel):
    # Validators and serializers are built at a model's first use, not when its module is imported:
    # a CLI command pays only for the models it uses.
    model_config = ConfigDict(defer_build=True)
