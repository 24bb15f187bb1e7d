"""The license file: the signed seat an application can check for itself.

``floatkey-agent run`` hands its application the license in environment variables and
in a JSON file (``FLOATKEY_LICENSE_FILE``). Both are plain text anyone can write: run the
application with ``FLOATKEY_FEATURES=dataflow,workflow`` and no agent, and it believes
it. The file therefore also carries the daemon's own signed messages for the seat, as
the agent received and verified them::

    "signed": {"server_key": "ed25519:...", "topic": "floatkey/srv1/clients/app-host-1",
               "grant": "<the seat.granted envelope>",
               "renewal": "<the latest seat.renewed envelope of that lease, or null>"}

:func:`verify_license_file` checks them against the server key the *application* trusts
and returns the features they grant. An agent running on a borrowed seat writes no
``signed`` section but ``borrowed`` ``{"until", "token", "topic"}``: the daemon's signed
borrow token, checked the same way (and against this computer's identity).
docs/PROTOCOL.md ("The license file") gives the rule for other languages and says what
such a check can and cannot stop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec

from floatkey import protocol
from floatkey.envelope import EnvelopeError, open_envelope
from floatkey.errors import LicenseFileInvalid
from floatkey.hostid import host_identity
from floatkey.pinning import KnownServers
from floatkey.signing import key_id, parse_public_key, public_key_text

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from floatkey.config import LoadedAgentConfig

__all__ = ["SignedSeat", "VerifiedLicense", "trusted_server_key", "verify_license_file"]

# Two envelopes of at most MAX_PAYLOAD each, JSON-escaped, and a few short fields: a
# larger file is refused before it is parsed.
_MAX_FILE = 4 * protocol.MAX_PAYLOAD
_CLIENT_TOPIC = re.compile(
    r"[A-Za-z0-9._-]{1,64}/[A-Za-z0-9._-]{1,64}/clients/(?P<client>[A-Za-z0-9._:-]{1,128})"
)


@dataclass(frozen=True, slots=True)
class SignedSeat:
    """The daemon's signed messages for the seat an agent holds, as it received them.

    ``grant`` is the ``seat.granted`` envelope, ``renewal`` the latest ``seat.renewed``
    envelope of the same lease (``None`` before the first renewal), both the exact bytes
    the agent verified; ``topic`` is where they came (``ROOT/clients/{client}``), which
    their signatures cover; ``server_key`` the key that verified them (text form).
    """

    server_key: str
    topic: str
    grant: bytes
    renewal: bytes | None = None

    def section(self) -> dict[str, str | None]:
        """The license file's ``signed`` section."""
        # Envelopes are JSON that passed a strict UTF-8 decode: they are text already.
        return {
            "server_key": self.server_key,
            "topic": self.topic,
            "grant": self.grant.decode(),
            "renewal": self.renewal.decode() if self.renewal is not None else None,
        }


@dataclass(frozen=True, slots=True)
class VerifiedLicense:
    """What a verified license file grants: signed by the trusted key, lease not ended."""

    features: frozenset[str]
    #: The license generation the seat was granted under.
    generation: int
    #: The agent's client id, from the topic the grant was signed for.
    client_id: str
    #: When the lease ends unless renewed again (Unix ms, the license server's clock).
    expires_at: int


class _Signed(msgspec.Struct, forbid_unknown_fields=True):
    server_key: Annotated[str, msgspec.Meta(max_length=128)]
    topic: Annotated[str, msgspec.Meta(max_length=300)]
    grant: str
    renewal: str | None = None


class _Borrowed(msgspec.Struct):
    token: Annotated[str, msgspec.Meta(max_length=16_384)]
    topic: Annotated[str, msgspec.Meta(max_length=300)]


_BORROW_TOPIC = re.compile(
    r"[A-Za-z0-9._-]{1,64}/(?P<server>[A-Za-z0-9._-]{1,64})/borrows/"
    r"(?P<client>[A-Za-z0-9._:-]{1,128})"
)


class _LicenseFile(msgspec.Struct):
    # Unknown fields are allowed: the unsigned fields (status, licensee, ...) are a
    # convenience copy for applications that do not verify.
    signed: _Signed | None = None
    borrowed: _Borrowed | None = None
    features: list[str] | None = None
    generation: int | None = None


_file_decoder = msgspec.json.Decoder(_LicenseFile)


def verify_license_file(
    path: str | Path,
    server_key: str | Ed25519PublicKey,
    *,
    now_ms: int | None = None,
) -> VerifiedLicense:
    """Verify the license file at ``path``; return the features its signed seat grants.

    ``server_key`` is the license server's public key (``ed25519:...``) as the
    application knows it on its own: from the agent config it was deployed with
    (:func:`trusted_server_key`), never from the file. The file names a key too, but a
    file someone made up would name their own key, and verify against it.

    The file must hold a ``seat.granted`` signed by that key for the topic it names, a
    licensed one, and, if it holds a renewal, a ``seat.renewed`` of the same lease signed
    for the same topic; its unsigned ``features`` and ``generation``, when present, must be
    the signed ones; and the lease (the later of the grant's and the renewal's
    ``expires_at``) must not have ended at ``now_ms`` (Unix ms; default: now).

    Raises ``LicenseFileInvalid`` (its ``problem`` says which check failed) for a file
    that is missing, unreadable, malformed or fails any of these checks, and
    ``ValueError`` when ``server_key`` is not an Ed25519 public key.
    """
    key = parse_public_key(server_key) if isinstance(server_key, str) else server_key
    document = _read(Path(path))
    signed = document.signed
    if signed is None and document.borrowed is not None:
        return _verify_borrowed(document, document.borrowed, key, now_ms)
    if signed is None:
        raise LicenseFileInvalid(
            "The license file carries no signed seat: it was not written by a floatkey "
            "agent holding a seat.",
            problem="unsigned",
        )
    topic = _CLIENT_TOPIC.fullmatch(signed.topic)
    if topic is None:
        raise LicenseFileInvalid(
            f"The license file names {signed.topic[:128]!r}, which is not an agent's topic.",
            problem="malformed",
        )
    grant = _open(signed.grant, signed.topic, key, signed.server_key, "grant")
    if not isinstance(grant, protocol.SeatGranted):
        raise LicenseFileInvalid(
            f"The license file's grant is a {grant.__struct_config__.tag!r} message, "
            "not a seat grant.",
            problem="malformed",
        )
    if not grant.licensed:
        raise LicenseFileInvalid(
            "The license file holds an unlicensed session: the license server has no "
            "license yet, so no feature is enabled.",
            problem="unlicensed",
        )
    expires_at = grant.expires_at
    if signed.renewal is not None:
        renewal = _open(signed.renewal, signed.topic, key, signed.server_key, "renewal")
        if not isinstance(renewal, protocol.SeatRenewed):
            raise LicenseFileInvalid(
                f"The license file's renewal is a {renewal.__struct_config__.tag!r} message, "
                "not a seat renewal.",
                problem="malformed",
            )
        if renewal.lease != grant.lease:
            raise LicenseFileInvalid(
                "The license file's renewal is for another lease than its grant.",
                problem="other_lease",
            )
        expires_at = max(expires_at, renewal.expires_at)
    _check_unsigned_copy(document, grant)
    now = protocol.now_ms() if now_ms is None else now_ms
    if now > expires_at:
        raise LicenseFileInvalid(
            f"The license file's lease ended {(now - expires_at) / 1000:.0f} s ago: the "
            "agent that held it is gone, or the file is an old copy.",
            problem="lease_ended",
        )
    return VerifiedLicense(
        features=frozenset(grant.features),
        generation=grant.generation,
        client_id=topic["client"],
        expires_at=expires_at,
    )


def _verify_borrowed(
    document: _LicenseFile, borrowed: _Borrowed, key: Ed25519PublicKey, now_ms: int | None
) -> VerifiedLicense:
    """A license file of an agent running on a borrowed seat: its token must verify."""
    topic = _BORROW_TOPIC.fullmatch(borrowed.topic)
    if topic is None:
        raise LicenseFileInvalid(
            f"The license file names {borrowed.topic[:128]!r}, which is not a borrow's topic.",
            problem="malformed",
        )
    try:
        body = open_envelope(borrowed.token.encode(), borrowed.topic, {key_id(key): key})
        token = protocol.decode(body, protocol.BorrowToken)
    except (EnvelopeError, msgspec.DecodeError):
        raise LicenseFileInvalid(
            "The license file's borrow token does not carry the signature of the license "
            "server key this application trusts: it was changed, or comes from elsewhere.",
            problem="bad_signature",
        ) from None
    if token.server != topic["server"]:
        raise LicenseFileInvalid(
            f"The license file's borrow token was issued by the license server "
            f"{token.server[:64]!r}, not by {topic['server']!r} it names.",
            problem="other_server",
        )
    if token.client != topic["client"] or token.host_id != host_identity():
        raise LicenseFileInvalid(
            "The license file's borrow token was lent to another computer.",
            problem="other_host",
        )
    grant = protocol.SeatGranted(
        nonce="",
        lease=token.lease,
        generation=token.generation,
        licensed=True,
        features=token.features,
        expires_at=token.end,
        renew_after_s=0,
    )
    _check_unsigned_copy(document, grant)
    now = protocol.now_ms() if now_ms is None else now_ms
    if now > token.end:
        raise LicenseFileInvalid(
            "The license file's borrowed seat has ended.", problem="lease_ended"
        )
    return VerifiedLicense(
        features=frozenset(token.features),
        generation=token.generation,
        client_id=token.client,
        expires_at=token.end,
    )


def trusted_server_key(loaded: LoadedAgentConfig) -> str | None:
    """The server key an agent config trusts: its ``server_key``, or the key pinned on first use.

    ``None`` when the config pins none and no agent has pinned one in its ``state_file``
    yet. A key pinned on first use is only as safe as that state file: anyone who can
    write it can make the application trust their own server.
    """
    config = loaded.config
    if config.server_key:
        return config.server_key
    pinned = KnownServers(loaded.state_path()).key_of(config.topics.root)
    return public_key_text(pinned) if pinned is not None else None


def _read(path: Path) -> _LicenseFile:
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_FILE + 1)
    except OSError as exc:
        raise LicenseFileInvalid(
            f"Cannot read the license file {str(path)!r}: {exc.strerror or exc}.",
            problem="unreadable",
        ) from None
    if len(data) > _MAX_FILE:
        raise LicenseFileInvalid(
            f"The license file {str(path)!r} is larger than any license file.",
            problem="malformed",
        )
    try:
        return protocol.decode(data, _LicenseFile)
    except msgspec.DecodeError as exc:
        raise LicenseFileInvalid(
            f"The license file {str(path)!r} is not a license file: {str(exc)[:200]}.",
            problem="malformed",
        ) from None


def _open(
    envelope: str, topic: str, key: Ed25519PublicKey, named_key: str, what: str
) -> protocol.DaemonToClient:
    """Verify one envelope of the file for ``topic``; decode its body."""
    trusted_kid = key_id(key)
    try:
        body = open_envelope(envelope.encode(), topic, {trusted_kid: key})
    except EnvelopeError as exc:
        if exc.reason == "unknown_key":
            raise LicenseFileInvalid(
                f"The license file's {what} is signed by another key (key id {exc.kid}; the "
                f"file names {named_key[:60]}), not by the license server key this "
                f"application trusts (key id {trusted_kid}).",
                problem="other_key",
            ) from None
        if exc.reason == "bad_signature":
            raise LicenseFileInvalid(
                f"The license file's {what} does not match its signature for the topic "
                f"{topic!r}: it was changed, or moved from another topic.",
                problem="bad_signature",
            ) from None
        raise LicenseFileInvalid(
            f"The license file's {what} is not a floatkey signed envelope ({exc.reason}).",
            problem="malformed",
        ) from None
    try:
        return protocol.decode_to_client(body)
    except msgspec.DecodeError:
        # Signed by the server, yet not a body it sends: a newer protocol, or a bug.
        raise LicenseFileInvalid(
            f"The license file's {what} is signed but is not a message this release reads.",
            problem="malformed",
        ) from None


def _check_unsigned_copy(document: _LicenseFile, grant: protocol.SeatGranted) -> None:
    """Refuse a file whose plain fields say more than its signed grant."""
    if document.features is not None and sorted(document.features) != sorted(grant.features):
        shown = ", ".join(document.features)[:200] or "none"
        raise LicenseFileInvalid(
            f"The license file lists the features {shown}, but its signed grant lists "
            f"{', '.join(sorted(grant.features)) or 'none'}: the file was edited.",
            problem="edited",
        )
    if document.generation is not None and document.generation != grant.generation:
        raise LicenseFileInvalid(
            f"The license file says generation {document.generation}, but its signed grant "
            f"was made under generation {grant.generation}: the file was edited.",
            problem="edited",
        )
