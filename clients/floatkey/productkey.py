"""The product key: what a vendor sells, what an administrator enters.

A product key is a small binary record signed with the vendor's Ed25519 key and
written in a paste-friendly text form. docs/KEY_FORMAT.md describes it byte by byte.

Reading a key is two steps, so that each refusal has its own reason:

* :func:`parse_product_key` reads the text form and the record's layout
  (``KeyMalformed``, ``KeyMistyped``, ``UnknownKeyFormat``);
* :func:`verify_product_key` checks it against the vendor key and the server
  (``KeyNotIssuedByVendor``, ``WrongProductVersion``, ``LicenseeMismatch``,
  ``KeyExpired``, ``SeatsOutOfRange``).

Both are pure functions: refusing a key changes nothing anywhere.

Keys are issued in record format 2, whose licensee binding holds one digest for the
name and one for the organization, so that a refusal can say which of them does not
match. Format 1 keys (one digest over both) are still read and accepted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import struct
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

from floatkey import _keytext
from floatkey.errors import (
    KeyExpired,
    KeyMalformed,
    KeyNotIssuedByVendor,
    LicenseeMismatch,
    SeatsOutOfRange,
    UnknownKeyFormat,
    WrongProductVersion,
)
from floatkey.signing import verify_signature

if TYPE_CHECKING:
    from collections.abc import Iterable

    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "FORMAT_VERSION",
    "LAST_DAY",
    "MAX_SEATS",
    "PRODUCT_VERSION",
    "READABLE_FORMATS",
    "ProductKey",
    "SignedProductKey",
    "check_feature_name",
    "issue_product_key",
    "licensee_digest",
    "normalize_licensee",
    "parse_product_key",
    "sign_product_key",
    "signing_message",
    "verify_product_key",
    "version_refusal",
]

#: The record format keys are issued in.
FORMAT_VERSION = 2
#: The record formats this release reads: 1 (one licensee digest), 2 (name + organization).
READABLE_FORMATS = frozenset({1, 2})
#: The product major version this release of floatkey licenses.
PRODUCT_VERSION = 8
#: Product versions whose keys customers may still hold and must be told to replace.
LEGACY_PRODUCT_VERSIONS = frozenset({6, 7})
MIN_SEATS = 1
MAX_SEATS = 100_000
MAX_FEATURES = 32
MAX_FEATURE_LENGTH = 32

EPOCH = dt.date(2020, 1, 1)
#: The last day a key's 16-bit day numbers can name.
LAST_DAY = EPOCH + dt.timedelta(days=0xFFFF)
SERIAL_BYTES = 6
#: The licensee binding: format 1, one 8-byte digest; format 2, two 4-byte digests.
DIGEST_BYTES = 8
_FIELD_DIGEST_BYTES = DIGEST_BYTES // 2
# Each digest has its own domain-separation prefix: a name can never be taken for an
# organization, nor a format 2 digest for a format 1 one.
_DIGEST_PREFIX_V1 = b"floatkey/licensee/v1\0"
_NAME_PREFIX_V2 = b"floatkey/licensee-name/v2\0"
_ORGANIZATION_PREFIX_V2 = b"floatkey/licensee-organization/v2\0"
_CASE_AND_SPACING = "case and spacing do not matter"
SIGNATURE_BYTES = 64
# format, product version, serial, licensee binding, seats (u24), issued, expires,
# feature count: the same layout in formats 1 and 2, only the binding's bytes differ.
_HEADER = struct.Struct(f">BB{SERIAL_BYTES}s{DIGEST_BYTES}s3sHHB")
_MIN_KEY_BYTES = _HEADER.size + SIGNATURE_BYTES
# Signatures over product keys are domain-separated from every other floatkey signature.
_SIGNING_CONTEXT = b"floatkey/product-key/v1\n"

# Feature names are packed six bits a character: 0 ends a name, then a-z, 0-9, "_".
_FEATURE_SYMBOLS = "abcdefghijklmnopqrstuvwxyz0123456789_"
_FEATURE_CODE = {c: i + 1 for i, c in enumerate(_FEATURE_SYMBOLS)}
_FEATURE_NAME = re.compile(rf"[a-z][a-z0-9_]{{0,{MAX_FEATURE_LENGTH - 1}}}")


@dataclass(frozen=True, slots=True)
class ProductKey:
    """What a product key says. Produced only by parsing or issuing, never edited."""

    product_version: int
    serial: str
    licensee_digest: bytes
    seats: int
    features: tuple[str, ...]
    issued: dt.date
    expires: dt.date | None
    #: The record format: 2 when issued by this release, 1 for older keys.
    format_version: int = FORMAT_VERSION

    def binds(self, name: str, organization: str) -> bool:
        """Return whether the key was issued to this name and organization."""
        entered = licensee_digest(name, organization, self.format_version)
        return secrets.compare_digest(self.licensee_digest, entered)

    def check_licensee(self, name: str, organization: str) -> None:
        """Raise ``LicenseeMismatch`` unless the key was issued to this name and organization.

        Its message says which of the two does not match (a format 1 key cannot tell).
        """
        if self.binds(name, organization):
            return
        if self.format_version == 1:
            raise LicenseeMismatch(
                "This product key was issued to another name or organization: the name or "
                "the organization does not match. Enter the name and organization exactly "
                f"as they appear on your license certificate; {_CASE_AND_SPACING}.",
            )
        entered = licensee_digest(name, organization, self.format_version)
        half = _FIELD_DIGEST_BYTES
        fields = tuple(
            field
            for field, own, given in (
                ("name", self.licensee_digest[:half], entered[:half]),
                ("organization", self.licensee_digest[half:], entered[half:]),
            )
            if not secrets.compare_digest(own, given)
        )
        if fields == ("name",):
            message = (
                "This product key was issued to another name: the organization matches, the "
                "name does not. Enter the name exactly as it appears on your license "
                f"certificate; {_CASE_AND_SPACING}."
            )
        elif fields == ("organization",):
            message = (
                "This product key was issued to another organization: the name matches, the "
                "organization does not. Enter the organization exactly as it appears on your "
                f"license certificate; {_CASE_AND_SPACING}."
            )
        else:
            message = (
                "This product key was issued to another licensee: neither the name nor the "
                "organization matches. Enter both exactly as they appear on your license "
                f"certificate; {_CASE_AND_SPACING}."
            )
        raise LicenseeMismatch(message, fields=fields)

    def is_expired(self, today: dt.date) -> bool:
        """Return whether the key has expired on ``today``; it is valid through ``expires``."""
        return self.expires is not None and today > self.expires


@dataclass(frozen=True, slots=True)
class SignedProductKey:
    """A parsed key with the bytes its signature covers, not yet verified."""

    key: ProductKey
    signed_bytes: bytes
    signature: bytes

    @property
    def text(self) -> str:
        """The key in its canonical text form."""
        return _keytext.encode(self.signed_bytes + self.signature)


def normalize_licensee(text: str) -> str:
    """Normalise a name or organization the way the binding digest sees it.

    Unicode compatibility forms are folded (NFKC), case is folded, and runs of
    whitespace become one space with none at the ends: what a person retyping a name
    changes without meaning to.
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def licensee_digest(name: str, organization: str, format_version: int = FORMAT_VERSION) -> bytes:
    """Return the 8 bytes binding a key of ``format_version`` to a name and organization.

    Format 2: 4 bytes of the name's digest, then 4 of the organization's. Format 1: 8
    bytes of one digest over both.
    """
    name_bytes = normalize_licensee(name).encode()
    organization_bytes = normalize_licensee(organization).encode()
    if format_version == 1:
        material = _DIGEST_PREFIX_V1 + name_bytes + b"\0" + organization_bytes
        return hashlib.sha256(material).digest()[:DIGEST_BYTES]
    half = _FIELD_DIGEST_BYTES
    return (
        hashlib.sha256(_NAME_PREFIX_V2 + name_bytes).digest()[:half]
        + hashlib.sha256(_ORGANIZATION_PREFIX_V2 + organization_bytes).digest()[:half]
    )


def check_feature_name(name: str) -> str:
    """Return ``name`` if it is a valid feature identifier; raise ``ValueError`` otherwise."""
    if not _FEATURE_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a feature name: use a lower-case letter followed by up to "
            f"{MAX_FEATURE_LENGTH - 1} lower-case letters, digits or underscores",
        )
    return name


def _days(day: dt.date | None) -> int:
    return 0 if day is None else (day - EPOCH).days


def _pack_features(features: Iterable[str]) -> bytes:
    codes = [code for name in features for code in (*(_FEATURE_CODE[c] for c in name), 0)]
    nbits = 6 * len(codes)
    value = 0
    for code in codes:
        value = (value << 6) | code
    nbytes = -(-nbits // 8)
    return (value << (nbytes * 8 - nbits)).to_bytes(nbytes, "big")


def _unpack_features(data: bytes, count: int) -> tuple[str, ...]:
    value = int.from_bytes(data, "big")
    nbits = len(data) * 8
    features: list[str] = []
    name: list[str] = []
    position = 0
    while len(features) < count:
        if position + 6 > nbits:
            raise KeyMalformed("This product key is incomplete: its feature list is cut short.")
        code = (value >> (nbits - position - 6)) & 63
        position += 6
        if code == 0:
            features.append("".join(name))
            name = []
        elif code <= len(_FEATURE_SYMBOLS):
            name.append(_FEATURE_SYMBOLS[code - 1])
        else:
            raise KeyMalformed("This product key's feature list is not readable.")
    # The record must be exactly as long as its features, padded with zero bits.
    if -(-position // 8) != len(data) or value & ((1 << (nbits - position)) - 1):
        raise KeyMalformed("This product key has bytes after its feature list.")
    for feature in features:
        try:
            check_feature_name(feature)
        except ValueError:
            raise KeyMalformed("This product key's feature list is not readable.") from None
    return tuple(features)


def signing_message(signed_bytes: bytes) -> bytes:
    """Return the exact bytes the vendor signs for a key record."""
    return _SIGNING_CONTEXT + signed_bytes


def sign_product_key(key: ProductKey, vendor_key: Ed25519PrivateKey) -> str:
    """Encode and sign ``key``; return its text form.

    This is the codec alone: it does not check seat or version ranges, so tests can
    make keys a careful vendor never would. Vendors use :func:`issue_product_key`.
    """
    signed = _HEADER.pack(
        key.format_version,
        key.product_version,
        bytes.fromhex(key.serial),
        key.licensee_digest,
        key.seats.to_bytes(3, "big"),
        _days(key.issued),
        _days(key.expires),
        len(key.features),
    ) + _pack_features(key.features)
    signature = vendor_key.sign(signing_message(signed))
    return _keytext.encode(signed + signature)


def issue_product_key(  # noqa: PLR0913 - every argument is a field of the key
    vendor_key: Ed25519PrivateKey,
    *,
    name: str,
    organization: str,
    seats: int,
    features: Iterable[str],
    product_version: int = PRODUCT_VERSION,
    issued: dt.date | None = None,
    expires: dt.date | None = None,
) -> str:
    """Issue a product key; raise ``ValueError`` naming the argument that is wrong."""
    if not normalize_licensee(name):
        raise ValueError("the licensee name must not be empty")
    if not normalize_licensee(organization):
        raise ValueError("the organization must not be empty")
    if not MIN_SEATS <= seats <= MAX_SEATS:
        raise ValueError(f"seats must be between {MIN_SEATS} and {MAX_SEATS}")
    if not 1 <= product_version <= 99:
        raise ValueError("the product version must be between 1 and 99")
    feature_set = sorted({check_feature_name(f) for f in features})
    if len(feature_set) > MAX_FEATURES:
        raise ValueError(f"a key carries at most {MAX_FEATURES} features")
    issued = issued or dt.datetime.now(dt.UTC).date()
    if not EPOCH <= issued <= LAST_DAY:
        raise ValueError(f"the issue date must be between {EPOCH} and {LAST_DAY}")
    if expires is not None and not issued < expires <= LAST_DAY:
        raise ValueError(f"the expiry date must be after the issue date and by {LAST_DAY}")
    key = ProductKey(
        product_version=product_version,
        serial=secrets.token_hex(SERIAL_BYTES),
        licensee_digest=licensee_digest(name, organization),
        seats=seats,
        features=tuple(feature_set),
        issued=issued,
        expires=expires,
    )
    return sign_product_key(key, vendor_key)


def _split(text: str) -> tuple[bytes, bytes]:
    """Read the text form; return the signed record and its signature, unparsed."""
    data = _keytext.decode(text, min_bytes=_MIN_KEY_BYTES)
    if data[0] not in READABLE_FORMATS:
        raise UnknownKeyFormat(
            f"This product key uses format {data[0]}, which this release of floatkey cannot "
            "read. Update the license server, or ask for a key in a format it supports.",
        )
    if len(data) < _MIN_KEY_BYTES:
        raise KeyMalformed("This product key is too short: part of it is missing. Copy all of it.")
    return data[:-SIGNATURE_BYTES], data[-SIGNATURE_BYTES:]


def _parse_record(signed: bytes) -> ProductKey:
    fmt, version, serial, digest, seats, issued, expires, count = _HEADER.unpack_from(signed)
    return ProductKey(
        product_version=version,
        serial=serial.hex(),
        licensee_digest=digest,
        seats=int.from_bytes(seats, "big"),
        features=_unpack_features(signed[_HEADER.size :], count),
        issued=EPOCH + dt.timedelta(days=issued),
        expires=None if expires == 0 else EPOCH + dt.timedelta(days=expires),
        format_version=fmt,
    )


def parse_product_key(text: str) -> SignedProductKey:
    """Read a key's text form and layout without checking its signature.

    For showing what a key says (``floatkey-vendor inspect``); to accept a key, use
    :func:`verify_product_key`. Raises ``KeyMalformed``, ``KeyMistyped`` or
    ``UnknownKeyFormat``.
    """
    signed, signature = _split(text)
    return SignedProductKey(key=_parse_record(signed), signed_bytes=signed, signature=signature)


def version_refusal(key_version: int, product_version: int = PRODUCT_VERSION) -> str:
    """Return the sentence that refuses a key made for ``key_version``."""
    if key_version in LEGACY_PRODUCT_VERSIONS:
        return (
            f"This product key is for version {key_version}. Keys from versions 6 and 7 "
            f"cannot be used with version {product_version}; please contact sales for a "
            f"new version {product_version} key."
        )
    return (
        f"This product key is for version {key_version} of the product, but this server "
        f"runs version {product_version}. Enter a key issued for version {product_version}."
    )


def verify_product_key(  # noqa: PLR0913 - the key and everything it is checked against
    text: str,
    vendor_public_key: Ed25519PublicKey,
    *,
    name: str,
    organization: str,
    product_version: int = PRODUCT_VERSION,
    today: dt.date | None = None,
) -> ProductKey:
    """Parse and fully verify a key for this server; return what it grants.

    Checks, in order: text form, signature, product version, licensee, expiry, seats.
    Raises a ``ProductKeyError`` subclass with the first reason the key is refused.
    """
    signed, signature = _split(text)
    # The signature is checked before the record is parsed: bytes the vendor did not
    # sign are never interpreted.
    if not verify_signature(vendor_public_key, signature, signing_message(signed)):
        raise KeyNotIssuedByVendor(
            "This product key was not issued for this product by its vendor. Check that "
            "you entered the key you received from the vendor, or contact the vendor.",
        )
    key = _parse_record(signed)
    if key.product_version != product_version:
        raise WrongProductVersion(
            version_refusal(key.product_version, product_version),
            key_version=key.product_version,
            product_version=product_version,
        )
    key.check_licensee(name, organization)
    today = today or dt.datetime.now(dt.UTC).date()
    if key.is_expired(today):
        raise KeyExpired(
            f"This product key expired on {key.expires:%Y-%m-%d}. Contact sales to renew "
            "your license.",
        )
    if not MIN_SEATS <= key.seats <= MAX_SEATS:
        raise SeatsOutOfRange(
            f"This product key grants {key.seats} seats; a license grants between "
            f"{MIN_SEATS} and {MAX_SEATS}. Contact the vendor for a corrected key.",
        )
    return key
