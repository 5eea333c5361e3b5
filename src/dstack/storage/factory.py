from __future__ import annotations

from urllib.parse import unquote, urlparse

from dstack.storage.base import Storage


def storage_from_url(url: str) -> Storage:
    """`file:///path` -> DirectoryStorage. Cloud backends add their schemes here."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from dstack.storage.local import DirectoryStorage

        return DirectoryStorage(unquote(parsed.path))
    raise ValueError(f"unsupported storage URL {url!r}")
