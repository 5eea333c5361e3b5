"""The server's error answers as the typed errors, for the httpx client and for the standard-library
GET of `dstack ps` alike."""

from __future__ import annotations

import json

from dstack.core.errors import AuthenticationError, DstackError, error_from_dict


def error_for(status: int, body: bytes) -> DstackError:
    try:
        data = json.loads(body)
    except ValueError:
        data = {}
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = error_from_dict(data["error"])
        if isinstance(err, AuthenticationError):
            from dstack.api.config import config_path

            err.fix = (f"Check the token in {config_path()}, or set it again with "
                       "`dstack config --url URL --token TOKEN`")
        return err
    return DstackError(f"the server answered {status}: {body.decode(errors='replace')[:200]}")


def unreachable(url: str) -> DstackError:
    return DstackError(f"cannot reach the dstack server at {url}",
                       fix="Is `dstack server` running? Start it, or fix the URL in ~/.dstack/config.yml")


def no_answer(url: str) -> DstackError:
    return DstackError(f"the dstack server at {url} did not answer in time")
