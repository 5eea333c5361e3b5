"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from dstack.core.backends import BackendCheck, FieldError
from dstack.core.runs import RunSpec

__all__ = ["BackendCheck", "FieldError"]

ProjectRole = Literal["admin", "user", "read-only"]


class UserInfo(BaseModel):
    name: str
    global_role: Literal["admin", "user"]
    created_at: datetime


class UserWithToken(UserInfo):
    token: str = Field(description="shown once; only its hash is stored")


class CreateUserRequest(BaseModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,99}$")
    global_role: Literal["admin", "user"] = "user"


class Member(BaseModel):
    user: str
    role: ProjectRole


class BackendInfo(BaseModel):
    type: str
    config: dict[str, Any] = Field(description="the backend's settings, with secrets masked")


class ProjectInfo(BaseModel):
    name: str
    owner: str
    created_at: datetime
    members: list[Member]
    backends: list[BackendInfo]


class CreateProjectRequest(BaseModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,49}$", description="lowercase letters, digits, - and _")


class SetMemberRequest(BaseModel):
    user: str
    role: ProjectRole


class InitRepoRequest(BaseModel):
    repo_id: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,100}$")
    info: dict[str, Any] = Field(default_factory=dict)


class SubmitRunRequest(BaseModel):
    run_spec: RunSpec


class SetSecretRequest(BaseModel):
    value: str = Field(min_length=1, repr=False)


class StopRunRequest(BaseModel):
    abort: bool = False


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None
