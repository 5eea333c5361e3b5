"""The Python SDK: a typed HTTP client for the dstack server (the CLI is built on it).

`from dstack.api import Client`. Imported on first use, so that the package's light modules
(config, plain_http) do not bring httpx with them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dstack.api.client import Client

__all__ = ["Client"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from dstack.api.client import Client

        return Client
    raise AttributeError(f"module 'dstack.api' has no attribute {name!r}")
