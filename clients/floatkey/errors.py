"""Every error floatkey raises on purpose, in one hierarchy.

Each error carries a machine-readable ``reason`` code (stable, used on the wire
and in exit codes) and ``message``, a sentence a customer can act on.

::

    FloatkeyError
    ├── ProductKeyError                  the product key was refused; nothing changed
    │   ├── KeyMalformed                 malformed: wrong prefix, bad characters, truncated
    │   ├── KeyMistyped                  mistyped: the checksum does not match
    │   ├── UnknownKeyFormat             unknown_format: a key format this release cannot read
    │   ├── KeyNotIssuedByVendor         bad_signature: not signed by the trusted vendor key
    │   ├── WrongProductVersion          wrong_product_version: made for another major version
    │   ├── LicenseeMismatch             licensee_mismatch: name or organization differ
    │   ├── KeyExpired                   expired: the expiry date has passed
    │   └── SeatsOutOfRange              seats_out_of_range: seats outside 1..100000
    ├── KeyFileError                     key_file: a key file is missing, unreadable or unsafe
    ├── ConfigError                      config: a configuration file is unreadable or wrong
    └── AgentError                       the client agent cannot do what was asked
        ├── NoAnswer                     no_answer: broker or license server unreachable in time
        ├── ServerKeyChanged             server_key_changed: the server's key is not the pinned one
        ├── FeatureNotLicensed           feature_not_licensed: the license lacks a feature
        ├── LicenseFileInvalid           license_file_invalid: the license file does not verify
        └── BorrowError                  borrow: a borrow refused, or a borrow token unusable

The daemon's own errors (``StoreError``, ``Refused``) live in ``floatkeyd.errors``.
``PRODUCT_KEY_REASONS`` are the reason codes of a refused product key, for the tools
that show such a refusal by the key (floatkeyctl's exit status, the console's key field).
"""

from __future__ import annotations

from typing import ClassVar, Final

__all__ = [
    "PRODUCT_KEY_REASONS",
    "AgentError",
    "BorrowError",
    "ConfigError",
    "FeatureNotLicensed",
    "FloatkeyError",
    "KeyExpired",
    "KeyFileError",
    "KeyMalformed",
    "KeyMistyped",
    "KeyNotIssuedByVendor",
    "LicenseFileInvalid",
    "LicenseeMismatch",
    "NoAnswer",
    "ProductKeyError",
    "SeatsOutOfRange",
    "ServerKeyChanged",
    "UnknownKeyFormat",
    "WrongProductVersion",
]


class FloatkeyError(Exception):
    """Base of every error floatkey raises on purpose.

    ``reason`` is a stable code; ``message`` is the sentence shown to a person.
    """

    reason: ClassVar[str] = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ProductKeyError(FloatkeyError):
    """The product key was refused. Raised before anything is changed."""

    reason: ClassVar[str] = "bad_key"


class KeyMalformed(ProductKeyError):
    """The text is not a floatkey product key at all (prefix, characters, length)."""

    reason: ClassVar[str] = "malformed"


class KeyMistyped(ProductKeyError):
    """The key's checksum does not match: a character was mistyped or lost."""

    reason: ClassVar[str] = "mistyped"


class UnknownKeyFormat(ProductKeyError):
    """The key uses a format version this release does not know."""

    reason: ClassVar[str] = "unknown_format"


class KeyNotIssuedByVendor(ProductKeyError):
    """The key is well formed but its signature is not the trusted vendor's."""

    reason: ClassVar[str] = "bad_signature"


class WrongProductVersion(ProductKeyError):
    """The key was issued for another product major version."""

    reason: ClassVar[str] = "wrong_product_version"

    def __init__(self, message: str, *, key_version: int, product_version: int) -> None:
        super().__init__(message)
        self.key_version = key_version
        self.product_version = product_version


class LicenseeMismatch(ProductKeyError):
    """The name or organization entered is not the one the key was issued to.

    ``fields`` names what does not match: ``("name",)``, ``("organization",)`` or
    ``("name", "organization")``; ``None`` when the key cannot tell (format 1 keys carry
    one digest over both).
    """

    reason: ClassVar[str] = "licensee_mismatch"

    def __init__(self, message: str, *, fields: tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        self.fields = fields


class KeyExpired(ProductKeyError):
    """The key's expiry date has passed."""

    reason: ClassVar[str] = "expired"


class SeatsOutOfRange(ProductKeyError):
    """The key's seat count is outside the range a license may grant."""

    reason: ClassVar[str] = "seats_out_of_range"


def _reasons(error: type[ProductKeyError]) -> frozenset[str]:
    below = (_reasons(sub) for sub in error.__subclasses__())
    return frozenset({error.reason}).union(*below)


#: The reason of every refusal that concerns the product key itself: each
#: ``ProductKeyError`` subclass's, and the daemon's ``cleartext_key`` (a key sent in
#: clear) and ``unreadable_key`` (a sealed key it cannot open).
PRODUCT_KEY_REASONS: Final = (_reasons(ProductKeyError) - {ProductKeyError.reason}) | {
    "cleartext_key",
    "unreadable_key",
}


class KeyFileError(FloatkeyError):
    """A signing key file is missing, unreadable, malformed or not private enough."""

    reason: ClassVar[str] = "key_file"


class ConfigError(FloatkeyError):
    """A configuration file cannot be read, or names an unknown key or a bad value."""

    reason: ClassVar[str] = "config"


class AgentError(FloatkeyError):
    """The client agent cannot do what the application asked."""

    reason: ClassVar[str] = "agent"


class NoAnswer(AgentError):
    """The broker or the license server did not answer in time."""

    reason: ClassVar[str] = "no_answer"


class ServerKeyChanged(AgentError):
    """The license server presents a key other than the one pinned on first use."""

    reason: ClassVar[str] = "server_key_changed"


class FeatureNotLicensed(AgentError):
    """The application asked for a feature the license (or the lack of one) does not grant."""

    reason: ClassVar[str] = "feature_not_licensed"

    def __init__(self, message: str, *, feature: str) -> None:
        super().__init__(message)
        self.feature = feature


class LicenseFileInvalid(AgentError):
    """A license file that does not prove a seat: missing, malformed, forged or ended.

    ``problem`` says which: ``unreadable``, ``malformed``, ``unsigned``, ``other_key``,
    ``bad_signature``, ``unlicensed``, ``other_lease``, ``edited``, ``lease_ended``, or,
    for a borrowed seat's file, ``other_server`` or ``other_host``.
    """

    reason: ClassVar[str] = "license_file_invalid"

    def __init__(self, message: str, *, problem: str) -> None:
        super().__init__(message)
        self.problem = problem


class BorrowError(AgentError):
    """A borrow the server refused, or a borrow token this computer may not use.

    ``problem`` is the daemon's reason code (``borrow_disabled``, ``borrow_too_long``,
    ``borrow_limit``, ``on_site_reserved``, ``seats_exhausted``, ...) or this computer's
    (``nothing_borrowed``, ``bad_signature``, ``other_server``, ``other_host``,
    ``clock_set_back``, ``in_use``, ``no_machine_id``, ``ended``).
    """

    reason: ClassVar[str] = "borrow"

    def __init__(self, message: str, *, problem: str) -> None:
        super().__init__(message)
        self.problem = problem
