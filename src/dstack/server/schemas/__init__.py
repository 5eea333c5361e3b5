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
    warning: str | None = Field(default=None, description="why it could not launch anything the last time "
                                "(denied, bad credentials), until it launches again or is saved")
    warning_at: datetime | None = None


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


class RepoCredentialsRequest(BaseModel):
    url: str = Field(max_length=1000, description="the repo URL (or an org's URL prefix)")
    token: str | None = Field(default=None, max_length=10000, description="for https URLs")
    username: str | None = Field(default=None, max_length=200)
    private_key: str | None = Field(default=None, max_length=20000, description="for ssh URLs")
    known_hosts: list[str] = Field(default_factory=list, max_length=50,
                                   description="the SSH host's keys, to pin (known_hosts lines)")


class SubmitRunRequest(BaseModel):
    run_spec: RunSpec


MAX_SECRET_BYTES = 64 * 1024


class SetSecretRequest(BaseModel):
    # Secrets become environment variables of jobs: one variable holds at most 128 KiB on Linux.
    value: str = Field(min_length=1, max_length=MAX_SECRET_BYTES, repr=False,
                       description="at most 65536 characters")


class StopRunRequest(BaseModel):
    abort: bool = False


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


_ERROR_STATUSES = {
    400: "invalid request, or nothing can serve it (code `no_offers`, `invalid_request`)",
    401: "no token, or an invalid one",
    403: "the token's user lacks the role this needs",
    404: "no such project (or not a member), run, secret or endpoint",
    409: "conflicts with the current state (exists already, still active, finished)",
    413: "the request body is over its documented limit",
    422: "a field is invalid; `field` names it",
    502: "the cloud answered with an error",
}
# Every API route documents every error status it can answer, all in the one error shape: a reference
# to it, not `"model": ErrorResponse`, for which FastAPI would build a validator per status and route
# (8 × 61 of them, ~⅓ of the app's import) that no response ever uses. `error_schemas` adds the shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text,
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    for status, text in _ERROR_STATUSES.items()}


def error_schemas() -> dict[str, Any]:
    """The OpenAPI components that ERROR_RESPONSES refers to (ErrorResponse and what it holds)."""
    schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
    return {**schema.pop("$defs", {}), "ErrorResponse": schema}
