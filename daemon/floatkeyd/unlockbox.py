"""Product keys sealed to the server for their trip over the broker.

An unlock command is signed, but a signature hides nothing: whoever may read the admin
topic (the daemon's broker login, a broker administrator, a packet capture where TLS is
not used) would read the product key, which is enough to activate another server. So
the administrator's tool seals the key to the server: an ephemeral X25519 key agreement
with the server's unlock key, HKDF-SHA256, and ChaCha20-Poly1305 with the command's
``request_id`` as associated data (a sealed key moved into another command fails).

The server's unlock public key reaches administrators in the signed ``admin.status``
answer, so it is as trustworthy as the server key that signs it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from floatkey.protocol import SealedKey
from floatkey.signing import b64url_decode, b64url_encode
from floatkeyd.errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = ["UNLOCK_KEY_FILE", "BoxError", "UnlockBox", "seal_product_key"]

UNLOCK_KEY_FILE = "unlock-box.key"
_PREFIX = "x25519:"
_INFO = b"floatkey/v1 unlock\n"


class BoxError(Exception):
    """A sealed key that cannot be opened (another server's, damaged, moved)."""


def _key(shared: bytes, epk: bytes, server: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + epk + server).derive(
        shared
    )


def _parse_public(text: str) -> X25519PublicKey:
    if not text.startswith(_PREFIX):
        msg = f"an unlock key starts with {_PREFIX!r}"
        raise ValueError(msg)
    return X25519PublicKey.from_public_bytes(b64url_decode(text.removeprefix(_PREFIX)))


def seal_product_key(unlock_key: str, request_id: str, key_text: str) -> SealedKey:
    """Seal ``key_text`` to the server whose unlock public key is ``unlock_key``.

    Raises ``ValueError`` when ``unlock_key`` is not an ``x25519:`` public key.
    """
    server = _parse_public(unlock_key)
    ephemeral = X25519PrivateKey.generate()
    epk = ephemeral.public_key().public_bytes_raw()
    key = _key(ephemeral.exchange(server), epk, server.public_bytes_raw())
    nonce = os.urandom(12)
    box = ChaCha20Poly1305(key).encrypt(nonce, key_text.encode(), request_id.encode())
    return SealedKey(epk=b64url_encode(epk), nonce=b64url_encode(nonce), box=b64url_encode(box))


class UnlockBox:
    """The server's X25519 unlock key: opens product keys sealed to it."""

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self._public = private.public_key().public_bytes_raw()
        #: ``x25519:<base64url>``, as ``admin.status`` reports it.
        self.public_text = _PREFIX + b64url_encode(self._public)

    @classmethod
    def load_or_create(cls, path: Path, write: Callable[[Path, str], None]) -> UnlockBox:
        """The key in ``path``, made with ``write`` (0600, atomic) on first use.

        Raises ``StoreError`` when the file holds something else, ``OSError``.
        """
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        if not text:
            private = X25519PrivateKey.generate()
            write(path, b64url_encode(private.private_bytes_raw()) + "\n")
            return cls(private)
        try:
            return cls(X25519PrivateKey.from_private_bytes(b64url_decode(text)))
        except ValueError:
            raise StoreError(
                f"{path} is not an unlock key. Move it away: floatkeyd makes a new one at "
                "its next start (administrators' tools learn it from the server)."
            ) from None

    def open(self, sealed: SealedKey, request_id: str) -> str:
        """The product key text sealed in ``sealed`` for ``request_id``. Raises ``BoxError``."""
        try:
            epk = b64url_decode(sealed.epk)
            peer = X25519PublicKey.from_public_bytes(epk)
            key = _key(self._private.exchange(peer), epk, self._public)
            plain = ChaCha20Poly1305(key).decrypt(
                b64url_decode(sealed.nonce), b64url_decode(sealed.box), request_id.encode()
            )
            return plain.decode()
        except (ValueError, InvalidTag, UnicodeDecodeError) as exc:
            raise BoxError(type(exc).__name__) from None
