"""One JSON GET with the standard library's HTTP client, for `dstack ps` (see dstack/cli/ps.py):
httpx costs ~0.1 s to import, more than the whole request. Plain http only; https goes through the
httpx client, which checks certificates the way every other command does."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any

from dstack.api.errors import error_for, no_answer, unreachable


def get_json(url: str, token: str, path: str, params: dict[str, str], *, timeout: float = 60) -> Any:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"plain http only, not {url}")
    target = parts.path.rstrip("/") + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", target, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
        response = conn.getresponse()
        body = response.read()
    except TimeoutError:
        raise no_answer(url) from None
    except OSError:  # refused, unreachable, no such host, reset
        raise unreachable(url) from None
    finally:
        conn.close()
    if response.status >= 400:
        raise error_for(response.status, body)
    return json.loads(body)
