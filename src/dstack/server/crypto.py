"""Encryption at rest for backend credentials and secrets (Fernet: AES-128-CBC + HMAC-SHA256).

The key comes from DSTACK_SERVER_ENCRYPTION_KEY, or is generated once into
{server_dir}/data/encryption.key (mode 0600). Replicas must share the key.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

_PREFIX = "enc:v1:"


class Encryptor:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    def encrypt(self, text: str) -> str:
        return _PREFIX + self._fernet.encrypt(text.encode()).decode()

    def decrypt(self, value: str) -> str:
        if not value.startswith(_PREFIX):
            raise ValueError("value is not encrypted")
        try:
            return self._fernet.decrypt(value[len(_PREFIX):].encode()).decode()
        except InvalidToken:
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
            f.write(Fernet.generate_key())
    return Encryptor(path.read_bytes().strip())
