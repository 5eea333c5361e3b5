"""Typed errors shared by the server, the SDK and the CLI.

Every error carries a machine-readable ``code`` and, where it belongs to an input field,
the dotted ``field`` path, so the CLI, the API and the web UI can all point at the same field.
"""

from __future__ import annotations

from typing import Any


class DstackError(Exception):
    """Base class: ``str(err)`` is one line a user can act on."""

    code = "error"
    http_status = 400

    def __init__(self, message: str, *, field: str | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.fix = fix

    def __str__(self) -> str:
        text = self.message
        if self.fix:
            text = f"{text}. {self.fix}" if not text.endswith(".") else f"{text} {self.fix}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": str(self), "field": self.field}


class ConfigurationError(DstackError):
    code = "invalid_configuration"
    http_status = 422


class ResourceNotFoundError(DstackError):
    code = "not_found"
    http_status = 404


class ResourceExistsError(DstackError):
    code = "already_exists"
    http_status = 409


class AuthenticationError(DstackError):
    code = "not_authenticated"
    http_status = 401


class ForbiddenError(DstackError):
    code = "forbidden"
    http_status = 403


class NoOffersError(DstackError):
    code = "no_offers"
    http_status = 400


class InvalidStateError(DstackError):
    code = "invalid_state"
    http_status = 409


class NotSupportedError(DstackError):
    """What this server cannot do (yet) for this backend or configuration."""

    code = "not_supported"
    http_status = 409


class PayloadTooLargeError(DstackError):
    code = "too_large"
    http_status = 413


class BackendError(DstackError):
    code = "backend_error"
    http_status = 502


ERRORS_BY_CODE: dict[str, type[DstackError]] = {
    cls.code: cls
    for cls in (
        DstackError,
        ConfigurationError,
        ResourceNotFoundError,
        ResourceExistsError,
        AuthenticationError,
        ForbiddenError,
        NoOffersError,
        InvalidStateError,
        NotSupportedError,
        PayloadTooLargeError,
        BackendError,
    )
}


def error_from_dict(data: dict[str, Any]) -> DstackError:
    cls = ERRORS_BY_CODE.get(str(data.get("code")), DstackError)
    return cls(str(data.get("message", "unknown error")), field=data.get("field"))
