"""Borrowing: the administrator's rules for taking a seat off the network for days.

Pure: the seat ledger asks :meth:`BorrowRules.refusal` before it grants a borrowed seat
(:meth:`floatkeyd.ledger.SeatLedger.borrow`), and the answer names the limit that was
hit, with a sentence the user can act on. A borrowed seat is an ordinary licensed lease
of the ledger, marked ``borrowed``, whose end is fixed when it is granted: it is not
renewed, a will or a broker outage does not move it, and the daemon's own clock frees
it at its end (or its agent returns it earlier).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["DAY_MS", "BorrowRefusal", "BorrowRules", "days_text"]

DAY_MS = 86_400_000

BorrowRefusal = Literal["borrow_disabled", "borrow_too_long", "borrow_limit", "on_site_reserved"]


def days_text(ms: int) -> str:
    """``ms`` as a customer reads a borrow's length: "3 days", "1 day", "12 hours"."""
    if ms >= DAY_MS:
        days = ms / DAY_MS
        whole = round(days)
        if abs(days - whole) < 1e-9:
            return "1 day" if whole == 1 else f"{whole} days"
        return f"{days:.1f} days"
    hours = ms / 3_600_000
    if hours >= 1:
        return f"{hours:.0f} hours" if round(hours) != 1 else "1 hour"
    seconds = max(round(ms / 1000), 1)
    return f"{seconds} seconds" if seconds != 1 else "1 second"


def _seats(n: int) -> str:
    return "1 seat is" if n == 1 else f"{n} seats are"


@dataclass(frozen=True, slots=True)
class BorrowRules:
    """``[borrow]`` of floatkeyd.toml: off unless ``enabled``.

    ``max_ms`` the longest borrow; ``max_borrowed`` the most seats borrowed at once (0:
    no cap but the seats); ``keep_on_site`` seats a borrow may never take, so that they
    stay for the computers on the network.
    """

    enabled: bool = False
    max_ms: int = 7 * DAY_MS
    max_borrowed: int = 0
    keep_on_site: int = 0

    def refusal(
        self, duration_ms: int, borrowed: int, seats: int
    ) -> tuple[BorrowRefusal, str] | None:
        """Why one more borrow of ``duration_ms`` may not be granted, or ``None``.

        ``borrowed``: seats borrowed now; ``seats``: the license's seats.
        """
        if not self.enabled:
            return (
                "borrow_disabled",
                (
                    "This license server does not lend seats for offline use. Ask your "
                    "administrator to enable borrowing ([borrow] enabled in floatkeyd.toml)."
                ),
            )
        if duration_ms > self.max_ms:
            return (
                "borrow_too_long",
                (
                    f"A seat may be borrowed for at most {days_text(self.max_ms)} on this server "
                    f"(asked: {days_text(duration_ms)}). Ask for a shorter borrow."
                ),
            )
        if self.max_borrowed and borrowed >= self.max_borrowed:
            return (
                "borrow_limit",
                (
                    f"{_seats(borrowed)} borrowed already, the most this server lends at once. "
                    "Try again when one is returned, or ask your administrator."
                ),
            )
        if borrowed + 1 > seats - self.keep_on_site:
            return (
                "on_site_reserved",
                (
                    f"{self.keep_on_site} of the {seats} seats are kept for computers on the "
                    f"network and {_seats(borrowed)} borrowed already; none is left to lend. Try "
                    "again when one is returned, or ask your administrator."
                ),
            )
        return None
