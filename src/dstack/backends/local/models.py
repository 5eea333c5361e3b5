from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class LocalBackendConfig(BaseModel):
    """The local backend has no settings: it runs jobs on the server's own machine."""

    model_config = ConfigDict(extra="forbid", title="Local")

    type: Literal["local"] = "local"


CONFIG_MODEL = LocalBackendConfig
