"""The Python SDK: a typed HTTP client for the dstack server (the CLI is built on it)."""

from dstack.api.client import Client

__all__ = ["Client"]
