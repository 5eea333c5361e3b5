"""SSH key pairs: the server's (registered with clouds that need one, e.g. Lambda; kept in
{server_dir}/data/ssh, which replicas share) and the CLI user's (for `dstack attach`)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

_LOCK = threading.Lock()


def generate_keypair() -> tuple[bytes, str]:
    """(OpenSSH private key, `ssh-ed25519 …` public key)."""
    # Imported here: only a new key needs it, and every `dstack attach` reads an existing one.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode()


def ensure_keypair(path: Path, comment: str) -> tuple[Path, str]:
    """The key at `path` (created, mode 0600, if missing) and its public line."""
    with _LOCK:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            private, public = generate_keypair()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(private)
            path.with_suffix(".pub").write_text(f"{public} {comment}\n")
        return path, path.with_suffix(".pub").read_text().strip()


def user_key() -> tuple[Path, str]:
    """The CLI user's key for `dstack attach`: beside the CLI's config (~/.dstack/ssh/id_ed25519, or
    next to $DSTACK_CONFIG, so that a separate config such as `make demo`'s leaves ~/.dstack alone)."""
    config = os.environ.get("DSTACK_CONFIG")
    base = Path(config).parent if config else Path.home() / ".dstack"
    return ensure_keypair(base / "ssh" / "id_ed25519", "dstack-user")


def server_key(server_dir: Path) -> tuple[Path, str]:
    return ensure_keypair(server_dir / "data" / "ssh" / "id_ed25519", "dstack-server")
