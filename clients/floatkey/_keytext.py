"""The paste-friendly text form of a product key (see docs/KEY_FORMAT.md).

``FK-`` + the key's bytes in Crockford base32 + a 4-character checksum, in groups of
six separated by dashes. Reading is forgiving where a person is likely to slip
(case, spaces, line breaks, dashes, ``O``/``I``/``L`` for ``0``/``1``/``1``) and strict
everywhere else, so that a mistyped key is told apart from a forged one: the checksum
is CRC-16/CCITT over the data characters, which catches every single-character
substitution and every transposition of neighbours (each is an error burst of at
most 16 bits), before the signature is even looked at.
"""

from __future__ import annotations

import binascii
import re

from floatkey.errors import KeyMalformed, KeyMistyped

PREFIX = "FK"
GROUP = 6
CHECKSUM_CHARS = 4
# Crockford's base32: digits and upper-case letters without I, L, O and U.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
# The letters Crockford reads as the digits they resemble.
_ALIASES = str.maketrans({"O": "0", "I": "1", "L": "1"})
_WHITESPACE = re.compile(r"\s+")
# A key is well under 300 characters; refuse absurd input before doing any work on it.
MAX_TEXT = 1024


def _b32encode(data: bytes) -> str:
    bits = int.from_bytes(data, "big") if data else 0
    nbits = len(data) * 8
    nchars = -(-nbits // 5)
    bits <<= nchars * 5 - nbits  # pad with zero bits on the right
    return "".join(ALPHABET[(bits >> (5 * (nchars - 1 - i))) & 31] for i in range(nchars))


def _b32decode(chars: str) -> bytes:
    nbytes = len(chars) * 5 // 8
    if -(-nbytes * 8 // 5) != len(chars):
        raise KeyMalformed("This product key has the wrong number of characters; copy it again.")
    bits = 0
    for c in chars:
        bits = (bits << 5) | _VALUE[c]
    pad = len(chars) * 5 - nbytes * 8
    if bits & ((1 << pad) - 1):
        raise KeyMalformed("This product key does not end the way a product key ends.")
    return (bits >> pad).to_bytes(nbytes, "big")


def _checksum(data_chars: str) -> str:
    crc = binascii.crc_hqx(data_chars.encode("ascii"), 0)
    # 16 bits in 4 characters (20 bits): the top 4 bits are always zero.
    return "".join(ALPHABET[(crc >> shift) & 31] for shift in (15, 10, 5, 0))


def encode(data: bytes) -> str:
    """Return ``data`` in the text form: prefix, groups of six, checksum at the end."""
    chars = _b32encode(data)
    chars += _checksum(chars)
    groups = [chars[i : i + GROUP] for i in range(0, len(chars), GROUP)]
    return "-".join([PREFIX, *groups])


def canonical(text: str) -> str:
    """Return the data and checksum characters of ``text``, normalised.

    Raises ``KeyMalformed`` for a wrong prefix or a character that never appears in a
    key, naming it.
    """
    if len(text) > MAX_TEXT:
        raise KeyMalformed("This is far too long to be a product key; copy only the key.")
    compact = _WHITESPACE.sub("", text).upper()
    if not compact.startswith(PREFIX):
        raise KeyMalformed(
            f"This is not a floatkey product key: a product key starts with {PREFIX}-.",
        )
    body = compact.removeprefix(PREFIX).replace("-", "").translate(_ALIASES)
    for position, char in enumerate(body, start=len(PREFIX) + 1):
        if char not in _VALUE:
            raise KeyMalformed(
                f"The product key contains {char!r} (character {position}), which never "
                "appears in a product key; copy the key again.",
            )
    return body


def decode(text: str, *, min_bytes: int) -> bytes:
    """Decode the text form back to bytes.

    Raises ``KeyMalformed`` (prefix, characters, truncated) or ``KeyMistyped``
    (checksum). ``min_bytes`` is the shortest well-formed key, so that a cut-off paste
    is reported as such rather than as a typo.
    """
    body = canonical(text)
    if len(body) < -(-min_bytes * 8 // 5) + CHECKSUM_CHARS:
        raise KeyMalformed("This product key is too short: part of it is missing. Copy all of it.")
    data_chars, check = body[:-CHECKSUM_CHARS], body[-CHECKSUM_CHARS:]
    if _checksum(data_chars) != check:
        raise KeyMistyped(
            "This product key has a typing error: a character is wrong, missing or "
            "swapped. Check it against the key you received, or paste it instead of typing.",
        )
    return _b32decode(data_chars)
