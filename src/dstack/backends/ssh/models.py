from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SSHJumpHost(BaseModel):
    hostname: str
    port: int = 22
    user: str


class SSHHostData(BaseModel):
    """How the server reaches one host of an SSH fleet (kept in the instance's data)."""

    model_config = ConfigDict(extra="ignore")

    hostname: str
    port: int = 22
    user: str
    proxy_jump: SSHJumpHost | None = None
    internal_ip: str | None = None
    # Where the agent lives on the host, and the Unix socket the server's tunnel forwards to the bucket.
    agent_dir: str
    socket: str


class SSHFleetConfig(BaseModel):
    """SSH fleets have no backend settings: each fleet brings its hosts and keys."""

    model_config = ConfigDict(extra="forbid", title="SSH")


CONFIG_MODEL = SSHFleetConfig
