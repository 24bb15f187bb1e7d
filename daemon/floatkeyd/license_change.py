"""What activating a product key would change, compared with the active license.

Pure: the console (and floatkeyctl) ask for a confirmation before an unlock that takes
something away (fewer seats, fewer features, an earlier end), as a mistyped or old key
would.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from floatkey.productkey import ProductKey
    from floatkey.protocol import LicenseInfo

__all__ = ["LicenseChange", "license_changes", "reductions"]


@dataclass(frozen=True, slots=True)
class LicenseChange:
    """One difference between the active license and a new key.

    ``what`` is ``seats``, ``features_removed``, ``features_added`` or ``expires``;
    ``reduces`` says whether it takes something away. (A key for another product version
    is refused by the daemon, so it is not compared here.)
    """

    what: str
    before: str
    after: str
    reduces: bool
    sentence: str


def _expiry(day: dt.date | str | None) -> dt.date | None:
    if day is None or isinstance(day, dt.date):
        return day
    return dt.date.fromisoformat(day)


def license_changes(
    before: LicenseInfo | None,
    after: ProductKey,
    feature_names: Mapping[str, str] | None = None,
) -> list[LicenseChange]:
    """The differences between ``before`` (``None``: no license) and the key ``after``.

    An unlicensed server loses nothing, so every change is then an addition.
    """
    names = feature_names or {}

    def shown(features: set[str]) -> str:
        return ", ".join(names.get(f, f) for f in sorted(features))

    if before is None:
        return []
    changes: list[LicenseChange] = []
    if after.seats != before.seats:
        fewer = after.seats < before.seats
        changes.append(
            LicenseChange(
                "seats",
                str(before.seats),
                str(after.seats),
                reduces=fewer,
                sentence=f"Seats: {before.seats} → {after.seats}"
                + (f" ({before.seats - after.seats} fewer)" if fewer else ""),
            )
        )
    old, new = set(before.features), set(after.features)
    if removed := old - new:
        changes.append(
            LicenseChange(
                "features_removed",
                shown(removed),
                "",
                reduces=True,
                sentence=f"Features no longer licensed: {shown(removed)}",
            )
        )
    if added := new - old:
        changes.append(
            LicenseChange(
                "features_added",
                "",
                shown(added),
                reduces=False,
                sentence=f"Features added: {shown(added)}",
            )
        )
    old_end, new_end = _expiry(before.expires), after.expires
    if old_end != new_end:
        earlier = new_end is not None and (old_end is None or new_end < old_end)
        changes.append(
            LicenseChange(
                "expires",
                old_end.isoformat() if old_end else "never",
                new_end.isoformat() if new_end else "never",
                reduces=earlier,
                sentence=f"Expires: {old_end or 'never'} → {new_end or 'never'}",
            )
        )
    return changes


def reductions(changes: list[LicenseChange]) -> list[LicenseChange]:
    """The changes that take something away (those to confirm)."""
    return [change for change in changes if change.reduces]
