"""The API's routers. Imported before any of them: FastAPI asks, of every model a route names,
whether it is a `pydantic.v1` model, and imports `pydantic.v1` to ask (~80 ms of the server's start
on a small machine, for a module nothing here uses). Until something has imported `pydantic.v1`, no
class can be one of its models: the answer is no without the import. (Where FastAPI has no such
probe, nothing is changed.)"""

from __future__ import annotations

import sys
from typing import Any


def _skip_pydantic_v1_probe() -> None:
    try:
        from fastapi._compat import shared
    except ImportError:  # pragma: no cover - another FastAPI layout: its own way, unchanged
        return
    for name in ("is_pydantic_v1_model_class", "is_pydantic_v1_model_instance"):
        probe = getattr(shared, name, None)
        if probe is None:
            continue

        def without_import(obj: Any, _probe: Any = probe) -> bool:
            return "pydantic.v1" in sys.modules and _probe(obj)

        setattr(shared, name, without_import)


_skip_pydantic_v1_probe()
