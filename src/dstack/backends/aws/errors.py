"""AWS errors as one readable line: the error code, the action, the message without XML or
encoded blobs; for a denied action, the fix, tied to the seed's least-privilege policy."""

from __future__ import annotations

import functools
import re
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from dstack.backends.aws.iam_policy import policy

AUTH_ERRORS = {"InvalidClientTokenId", "SignatureDoesNotMatch", "InvalidAccessKeyId", "AuthFailure",
               "UnrecognizedClientException", "InvalidToken", "ExpiredToken"}
DENIED_ERRORS = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403", "Forbidden"}

_XML_FIELD = re.compile(r"<(Code|Message)>(.*?)</\1>", re.S)
_ENCODED = re.compile(r"\s*Encoded authorization failure message:\s*\S+", re.I)
MAX_LENGTH = 300


@functools.cache
def _services() -> dict[str, str]:
    """Operation → service, for every action the seed's policy names (`RunInstances` → `ec2`)."""
    found: dict[str, str] = {}
    for statement in policy("bucket")["Statement"]:
        for action in statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]:
            service, _, operation = action.partition(":")
            found.setdefault(operation, service)
    return found


def service_of(exc: ClientError) -> str | None:
    return _services().get(getattr(exc, "operation_name", "") or "")


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def clean_message(message: str) -> str:
    """One line: XML bodies reduced to their code and message, encoded blobs dropped, shortened."""
    fields = dict((k, v) for k, v in _XML_FIELD.findall(message))
    if message.lstrip().startswith("<") and fields:
        message = fields.get("Message") or fields.get("Code") or ""
    elif message.lstrip().startswith("<"):
        message = re.sub(r"<[^>]+>", " ", message)
    message = _ENCODED.sub("", message)
    line = " ".join(message.split())
    return line if len(line) <= MAX_LENGTH else line[: MAX_LENGTH - 1] + "…"


def describe(exc: BaseException, *, service: str | None = None) -> str:
    """`UnauthorizedOperation (ec2:RunInstances): You are not authorized to perform this operation.`"""
    if isinstance(exc, ClientError):
        err: dict[str, Any] = exc.response.get("Error", {})
        code = str(err.get("Code") or "")
        message = str(err.get("Message") or "")
        if not code and message.lstrip().startswith("<"):
            code = dict(_XML_FIELD.findall(message)).get("Code", "")
        operation = getattr(exc, "operation_name", None)
        service = service or service_of(exc)
        action = f"{service}:{operation}" if service and operation else operation
        head = f"{code or 'error'} ({action})" if action else (code or "error")
        text = clean_message(message)
        return f"{head}: {text}" if text else head
    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials"
    if isinstance(exc, BotoCoreError):
        return clean_message(str(exc))
    return clean_message(str(exc))


def is_denied(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and error_code(exc) in DENIED_ERRORS | AUTH_ERRORS


def denied_fix(exc: ClientError, *, bucket: str, service: str | None = None) -> str:
    """What to do about a denied call: the credentials are wrong, or their policy lacks the action
    that the seed's policy has (which statement), or the action is outside the seed's policy."""
    if error_code(exc) in AUTH_ERRORS:
        return "The backend's AWS credentials are not valid (wrong, deleted or expired keys): update them"
    operation = getattr(exc, "operation_name", "") or ""
    action = f"{service or service_of(exc) or '?'}:{operation}"
    for number, statement in enumerate(policy(bucket)["Statement"], start=1):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if action in actions:
            return (f"The credentials' IAM policy lacks {action}, which statement {number} of dstack's policy "
                    f"allows: attach the output of `dstack aws iam-policy --bucket {bucket}` to them")
    return f"The credentials' IAM policy does not allow {action}"
