"""Encryption at rest for backend credentials and secrets (Fernet: AES-128-CBC + HMAC-SHA256).

The key comes from DSTACK_SERVER_ENCRYPTION_KEY, or is generated once into
{server_dir}/data/encryption.key (mode 0600). Replicas must share the key.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

_PREFIX = "enc:v1:"


class Encryptor:
    def __init__(self, key: bytes) -> None:
        # Checked here as Fernet checks it (a bad key stops the server at start), but `cryptography`
        # is imported at the first secret (~40 ms of a server's start, before it answers).
        try:
            valid = len(base64.urlsafe_b64decode(key)) == 32
        except (binascii.Error, ValueError):
            valid = False
        if not valid:
            raise ValueError("Fernet key must be 32 url-safe base64-encoded bytes.")
        self._key = key

    @functools.cached_property
    def _fernet(self) -> Fernet:
        from cryptography.fernet import Fernet

        return Fernet(self._key)

    def encrypt(self, text: str) -> str:
        return _PREFIX + self._fernet.encrypt(text.encode()).decode()

    def decrypt(self, value: str) -> str:
        if not value.startswith(_PREFIX):
            raise ValueError("value is not encrypted")
        try:
            return self._fernet.decrypt(value[len(_PREFIX):].encode()).decode()
        except _invalid_token():
            raise ValueError(
                "cannot decrypt a stored secret: the server's encryption key changed "
                "(set DSTACK_SERVER_ENCRYPTION_KEY to the key the data was written with)"
            ) from None


def load_encryptor(server_dir: Path) -> Encryptor:
    key = os.environ.get("DSTACK_SERVER_ENCRYPTION_KEY")
    if key:
        return Encryptor(key.encode())
    path = server_dir / "data" / "encryption.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.urlsafe_b64encode(os.urandom(32)))  # as Fernet.generate_key()
    return Encryptor(path.read_bytes().strip())


def _invalid_token() -> type[Exception]:
    from cryptography.fernet import InvalidToken

    return InvalidToken
