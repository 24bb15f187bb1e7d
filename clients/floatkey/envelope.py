r"""Signed envelopes: how the daemon and administrators sign what they publish.

::

    {"v": 1, "kid": "<16 hex>", "body": "<base64url body>", "sig": "<base64url signature>"}

The signature is Ed25519 over ``b"floatkey/v1\\n" + topic + b"\\n" + body``: the topic is
inside what is signed, so a genuine message replayed on another topic (another client's
reply topic, say) fails. Receivers open the envelope, and only then decode the body.
"""

from __future__ import annotations

import binascii
from functools import lru_cache
from typing import TYPE_CHECKING

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from floatkey.signing import b64url_decode, key_id, verify_signature

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["ENVELOPE_VERSION", "EnvelopeError", "Signer", "open_envelope", "peek", "peek_kid"]

ENVELOPE_VERSION = 1
_CONTEXT = b"floatkey/v1\n"


class _Envelope(msgspec.Struct, forbid_unknown_fields=True):
    v: int
    kid: str
    body: str
    sig: str


_decoder = msgspec.json.Decoder(_Envelope)


class EnvelopeError(Exception):
    """An envelope was refused. ``reason`` says why, for the drop log and counters.

    Reasons: ``not_envelope``, ``unknown_version``, ``unknown_key``, ``bad_signature``.
    These are dropped silently on the wire (a forger learns nothing), so this is not a
    ``FloatkeyError`` meant for people.
    """

    def __init__(self, reason: str, kid: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kid = kid


def _signed_bytes(topic: str, body: bytes) -> bytes:
    return _CONTEXT + topic.encode() + b"\n" + body


_URL_ALPHABET = bytes.maketrans(b"+/", b"-_")


def _b64url(data: bytes) -> bytes:
    """``floatkey.signing.b64url_encode`` as bytes: base64url without padding."""
    return binascii.b2a_base64(data, newline=False).translate(_URL_ALPHABET).rstrip(b"=")


class Signer:
    """Signs bodies for topics with one private key, computing its key id once."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_key = key.public_key()
        self.kid = key_id(self.public_key)
        # What msgspec writes for an _Envelope up to the body (the key id is 16 hex digits).
        self._head = b'{"v":%d,"kid":"%s","body":"' % (ENVELOPE_VERSION, self.kid.encode())

    def sign(self, message: bytes) -> bytes:
        """A bare Ed25519 signature of ``message`` (callers prefix their own context)."""
        return self._key.sign(message)

    def seal(self, topic: str, body: bytes) -> bytes:
        """Return the envelope carrying ``body`` for publication on ``topic``.

        The same bytes as encoding an ``_Envelope`` (tests/test_envelope.py compares them),
        put together directly: base64url needs no JSON escaping, and a reply is sealed for
        every renewal (docs/PERFORMANCE.md).
        """
        signature = self._key.sign(_signed_bytes(topic, body))
        return b"".join((self._head, _b64url(body), b'","sig":"', _b64url(signature), b'"}'))


def peek_kid(payload: bytes) -> str | None:
    """Return the key id an envelope claims, without trusting it (for refusal messages)."""
    peeked = peek(payload)
    return peeked[0] if peeked else None


def peek(payload: bytes) -> tuple[str, bytes] | None:
    """Return the key id and body an envelope claims, WITHOUT verifying the signature.

    Only to tell what someone else published (never to act on it); ``None`` when the
    payload is not an envelope.
    """
    try:
        envelope = _decoder.decode(payload)
        return envelope.kid, b64url_decode(envelope.body)
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError):
        return None


def open_envelope(payload: bytes, topic: str, trusted: Mapping[str, Ed25519PublicKey]) -> bytes:
    """Verify an envelope received on ``topic``; return the body bytes.

    ``trusted`` maps key ids to the public keys whose signatures are accepted.
    Raises ``EnvelopeError``.
    """
    try:
        envelope = _decoder.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise EnvelopeError("not_envelope") from None
    if envelope.v != ENVELOPE_VERSION:
        raise EnvelopeError("unknown_version", envelope.kid)
    key = trusted.get(envelope.kid)
    if key is None:
        raise EnvelopeError("unknown_key", envelope.kid)
    try:
        body = b64url_decode(envelope.body)
        signature = b64url_decode(envelope.sig)
    except ValueError:
        raise EnvelopeError("not_envelope", envelope.kid) from None
    if len(signature) != 64 or not _verified(
        key.public_bytes_raw(), signature, _signed_bytes(topic, body)
    ):
        raise EnvelopeError("bad_signature", envelope.kid)
    return body


@lru_cache(maxsize=256)
def _verified(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Ed25519 verification, remembered for the same key, signature and message.

    A pure function of its arguments, so caching it changes no outcome. It matters where
    many agents share one process (a terminal server, the benchmarks): every one of them
    receives the same signed event, and a verification costs ~0.1-0.2 ms of CPU.
    """
    return verify_signature(Ed25519PublicKey.from_public_bytes(public_key), signature, message)
