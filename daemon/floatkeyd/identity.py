"""The server identity: the Ed25519 key that signs everything the daemon publishes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from floatkey.errors import KeyFileError
from floatkey.signing import create_private_key_file, load_private_key

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["IDENTITY_FILE", "load_or_create_identity"]

IDENTITY_FILE = "server-identity.key"


def load_or_create_identity(state_dir: Path) -> tuple[Ed25519PrivateKey, bool]:
    """Return the server key, creating it (0600, in a 0700 directory) on first start.

    The boolean says whether it was created now. Raises ``KeyFileError``.
    """
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / IDENTITY_FILE
    if path.exists():
        return load_private_key(path), False
    try:
        return create_private_key_file(path), True
    except KeyFileError:
        # Another process created it between our check and our create: use theirs.
        return load_private_key(path), False
