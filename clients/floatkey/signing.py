"""Ed25519 keys as floatkey stores and names them.

Three kinds of key pair use this module: the vendor's (signs product keys), the
server identity (signs everything the daemon publishes) and admin keys (sign admin
commands). They share one text form for public keys, ``ed25519:<base64url>``, one key
id (``kid``: 16 hex digits of SHA-256 of the raw public key) and one private key file
format (unencrypted PKCS#8 PEM, created with mode 0600 and never overwritten).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from floatkey.errors import KeyFileError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "PUBLIC_KEY_PREFIX",
    "b64url_decode",
    "b64url_encode",
    "create_private_key_file",
    "key_id",
    "load_private_key",
    "parse_public_key",
    "public_key_text",
    "raw_public_key",
    "verify_signature",
]

PUBLIC_KEY_PREFIX = "ed25519:"


def b64url_encode(data: bytes) -> str:
    """Encode ``data`` as base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url; raise ``ValueError`` on anything else."""
    if not text.isascii() or "=" in text:
        raise ValueError("not unpadded base64url")
    try:
        # validate=True: refuse characters outside the alphabet instead of skipping them.
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except binascii.Error as exc:
        raise ValueError("not unpadded base64url") from exc


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    """Return the 32 raw bytes of ``key``."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(key: Ed25519PublicKey) -> str:
    """Return ``key`` in the text form configuration files take: ``ed25519:<base64url>``."""
    return PUBLIC_KEY_PREFIX + b64url_encode(raw_public_key(key))


def parse_public_key(text: str) -> Ed25519PublicKey:
    """Parse the ``ed25519:<base64url>`` text form; raise ``ValueError`` with a reason."""
    text = text.strip()
    if not text.startswith(PUBLIC_KEY_PREFIX):
        raise ValueError(f"a public key must start with {PUBLIC_KEY_PREFIX!r}")
    raw = b64url_decode(text.removeprefix(PUBLIC_KEY_PREFIX))
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def key_id(key: Ed25519PublicKey) -> str:
    """Return the key id: the first 8 bytes of SHA-256 of the raw public key, as hex."""
    return hashlib.sha256(raw_public_key(key)).digest()[:8].hex()


def verify_signature(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """Return whether ``signature`` is ``key``'s signature over ``message``."""
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def create_private_key_file(path: Path) -> Ed25519PrivateKey:
    """Create a new key pair; write the private key to ``path`` (0600) and ``path.pub``.

    Refuses to overwrite either file: losing a vendor or server key is not undoable.
    Raises ``KeyFileError``.
    """
    public_path = path.with_name(path.name + ".pub")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if public_path.exists():
        raise KeyFileError(f"{public_path} already exists; refusing to overwrite a key.")
    try:
        # O_EXCL: refuse to overwrite; mode 0600 from the start, not chmod afterwards,
        # so the private key is never readable by others, not even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key.") from None
    except OSError as exc:
        raise KeyFileError(f"Cannot create {path}: {exc.strerror}.") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public_path.write_text(public_key_text(key.public_key()) + "\n", encoding="ascii")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from a PKCS#8 PEM file. Raises ``KeyFileError``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"Cannot read the key file {path}: {exc.strerror}.") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path} is not an unencrypted PEM private key.") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a private key, but not an Ed25519 one.")
    return key
