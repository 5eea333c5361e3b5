"""httpx, loaded without its command-line tool.

`import httpx` imports httpx's own command-line tool, and with it click, pygments and rich's syntax
highlighting, whenever click is installed (uvicorn brings it): about 50 ms of every `dstack` command,
for a tool we never call. Its module is stood in for before httpx loads (nothing changes if httpx
was imported already, or stops importing it).
"""

from __future__ import annotations

import sys
import types

if "httpx" not in sys.modules:
    _stand_in = types.ModuleType("httpx._main")

    def _main() -> None:
        raise SystemExit("httpx's command line is not loaded in this process (see dstack.api.http)")

    _stand_in.main = _main  # type: ignore[attr-defined]
    sys.modules.setdefault("httpx._main", _stand_in)

import httpx  # noqa: E402

__all__ = ["httpx"]
