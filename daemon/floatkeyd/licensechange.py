"""What a new product key would change in the active license, worked out before it is sent.

``floatkeyctl unlock`` asks before activating a key that takes something away from the
site (fewer seats, a feature removed, an earlier expiry, a key issued before the active
one): a key pasted from the wrong e-mail must not quietly shrink a license. Only the
key's record is read here; its signature is the daemon's to check, so nothing here
decides whether a key is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from floatkey.errors import ProductKeyError
from floatkey.productkey import MAX_SEATS, MIN_SEATS, parse_product_key

if TYPE_CHECKING:
    import datetime as dt

    from floatkey.productkey import ProductKey
    from floatkey.protocol import LicenseInfo, StatusReport

__all__ = ["LicenseChange", "changes_to_confirm", "license_changes", "refused_anyway"]

Value = int | str | list[str] | None


@dataclass(frozen=True, slots=True)
class LicenseChange:
    """One thing the new key changes: its value before and after, and whether it reduces."""

    what: Literal["seats", "features", "expires", "issued"]
    before: Value
    after: Value
    reduces: bool


def refused_anyway(
    key: ProductKey, active: LicenseInfo, *, name: str, organization: str, today: dt.date
) -> bool:
    """Whether the daemon will refuse ``key`` whatever the answer: then nothing is asked.

    A key for another product version, for another licensee, expired or with seats out
    of range is refused with its own sentence (the version 6/7 one among them), which
    must not be preceded by a question about reducing the license.
    """
    return (
        key.product_version != active.product_version
        or not key.binds(name, organization)
        or key.is_expired(today)
        or not MIN_SEATS <= key.seats <= MAX_SEATS
    )


def license_changes(active: LicenseInfo, key: ProductKey) -> list[LicenseChange]:
    """Every difference between the active license and what ``key`` grants, in table order.

    The same key (same serial) changes nothing.
    """
    if key.serial == active.serial:
        return []
    changes: list[LicenseChange] = []
    if key.seats != active.seats:
        changes.append(LicenseChange("seats", active.seats, key.seats, key.seats < active.seats))
    if set(key.features) != set(active.features):
        removed = set(active.features) - set(key.features)
        changes.append(
            LicenseChange("features", list(active.features), list(key.features), bool(removed))
        )
    expires = key.expires.isoformat() if key.expires else None
    if expires != active.expires:
        # ISO dates compare as text; a key without an expiry never expires.
        earlier = expires is not None and (active.expires is None or expires < active.expires)
        changes.append(LicenseChange("expires", active.expires, expires, earlier))
    issued = key.issued.isoformat()
    if issued != active.issued:
        changes.append(LicenseChange("issued", active.issued, issued, issued < active.issued))
    return changes


def changes_to_confirm(
    status: StatusReport, key_text: str, *, name: str, organization: str, today: dt.date
) -> list[LicenseChange]:
    """What an unlock of ``key_text`` would change, for floatkeyctl and the console alike.

    Nothing when no license is in force (an unlicensed or expired server loses nothing),
    or when the key cannot be read or will be refused anyway: the daemon then says why,
    as it always has. A caller asks for confirmation when any change ``reduces``.
    """
    active = status.license if status.status == "licensed" else None
    if active is None:
        return []
    try:
        key = parse_product_key(key_text).key
    except ProductKeyError:
        return []
    if refused_anyway(key, active, name=name, organization=organization, today=today):
        return []
    return license_changes(active, key)
